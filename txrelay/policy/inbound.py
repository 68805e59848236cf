"""Mail that comes back to the bounce domain, read: delivery status notifications (RFC 3464)
and complaint reports (ARF, RFC 5965), parsed with the standard library's email package.

Pure functions: bytes in, a report or a Malformed error out. What the report is about (which
message, which ledger row) is decided by txrelay/store/inbound.py.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.message import Message

from txrelay.policy.return_path import CFBL_LOCAL_PART, LOCAL_PREFIX

DSN = "dsn"
ARF = "arf"
OTHER = "other"
# RFC 3464 Action values; only failed changes a recipient's state.
FAILED = "failed"
DELAYED = "delayed"
_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_MAX_FIELD = 2000  # a diagnostic or a type longer than this is cut, not stored whole


class Malformed(ValueError):
    """The mail is not the report its address expects; str() is the reason, one line."""


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a DSN."""

    final_recipient: str
    original_recipient: str
    action: str
    status: str
    diagnostic: str

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses the shop sent to, best first (Original- is what the shop wrote)."""
        found = (self.original_recipient, self.final_recipient)
        return tuple(dict.fromkeys(a for a in found if a))


@dataclass(frozen=True)
class DeliveryReport:
    recipients: tuple[RecipientStatus, ...]


@dataclass(frozen=True)
class FeedbackReport:
    feedback_type: str
    original_rcpt_to: tuple[str, ...]  # from the report; often redacted or absent
    original_to: tuple[str, ...]  # the original message's To
    feedback_id: str  # the original's CFBL-Feedback-ID ("" when it has none)


def address_kind(local_part: str) -> str:
    """DSN for a return path (b-…), ARF for the CFBL address (fbl), OTHER for anything else."""
    local = local_part.lower()
    if local.startswith(LOCAL_PREFIX):
        return DSN
    if local == CFBL_LOCAL_PART:
        return ARF
    return OTHER


def parse_dsn(raw: bytes) -> DeliveryReport:
    """The per-recipient blocks of a multipart/report; report-type=delivery-status."""
    message = _report(raw, "delivery-status")
    part = _part(message, "message/delivery-status")
    blocks = part.get_payload()
    if not isinstance(blocks, list) or len(blocks) < 2:
        raise Malformed("message/delivery-status has no per-recipient fields")
    recipients = []
    for block in blocks[1:]:  # the first block is per-message (Reporting-MTA, ...)
        if not isinstance(block, Message):
            continue
        final = _typed_address(_field(block, "Final-Recipient"))
        action = _field(block, "Action").lower()
        if not final or not action:
            raise Malformed("a per-recipient block lacks Final-Recipient or Action")
        status = _field(block, "Status").split(" ")[0]
        if not _STATUS_RE.fullmatch(status):
            raise Malformed(f"Status {status[:40]!r} is not a status code (RFC 3463)")
        diagnostic = _field(block, "Diagnostic-Code")
        _kind, _, text = diagnostic.partition(";")
        recipients.append(
            RecipientStatus(
                final,
                _typed_address(_field(block, "Original-Recipient")),
                action,
                status,
                (text.strip() if text else diagnostic)[:_MAX_FIELD],
            )
        )
    if not recipients:
        raise Malformed("message/delivery-status has no per-recipient fields")
    return DeliveryReport(tuple(recipients))


def parse_arf(raw: bytes) -> FeedbackReport:
    """A multipart/report; report-type=feedback-report and the original message (or its
    header) in its third part."""
    message = _report(raw, "feedback-report")
    report = _fields(_part(message, "message/feedback-report"))
    feedback_type = _field(report, "Feedback-Type").lower()[:100]
    if not feedback_type:
        raise Malformed("the feedback report has no Feedback-Type")
    rcpt_to = tuple(
        address
        for value in report.get_all("Original-Rcpt-To") or []
        if (address := _bare(str(value)))
    )
    original = _original(message)
    to = tuple(
        address.lower()
        for _name, address in email.utils.getaddresses([str(v) for v in original.get_all("To", [])])
        if "@" in address
    )
    return FeedbackReport(feedback_type, rcpt_to, to, _field(original, "CFBL-Feedback-ID"))


def _report(raw: bytes, report_type: str) -> Message:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    if message.get_content_type() != "multipart/report":
        raise Malformed(f"{message.get_content_type()} is not multipart/report")
    found = (message.get_param("report-type") or "").lower()  # type: ignore[union-attr]
    if found != report_type:
        raise Malformed(f"report-type {str(found)[:40]!r} is not {report_type}")
    return message


def _part(message: Message, content_type: str) -> Message:
    for part in message.walk():
        if part.get_content_type() == content_type:
            return part
    raise Malformed(f"the report has no {content_type} part")


def _fields(part: Message) -> Message:
    """The fields of a message/feedback-report part (parsed by email as a sub-message)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        return email.message_from_string(payload, policy=email.policy.compat32)
    raise Malformed("the feedback report's fields are unreadable")


def _original(message: Message) -> Message:
    """The reported message's header: message/rfc822 or text/rfc822-headers (RFC 5965 3)."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind == "text/rfc822-headers":
            body = part.get_payload(decode=True)
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
            return email.message_from_string(text, policy=email.policy.compat32)
    raise Malformed("the report has no message/rfc822 or text/rfc822-headers part")


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return " ".join(str(value).split())[:_MAX_FIELD] if value is not None else ""


def _typed_address(value: str) -> str:
    """`rfc822; user@example.com` → user@example.com (lowercase); other types → ""."""
    kind, sep, address = value.partition(";")
    if not sep or kind.strip().lower() != "rfc822":
        return ""
    return _bare(address)


def _bare(value: str) -> str:
    address = value.strip().strip("<>").strip().lower()
    return address if "@" in address and len(address) <= 320 else ""
