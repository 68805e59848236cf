"""Parses Postfix mail-log lines by structure into typed delivery events (no I/O).

A recipient address (quoted local parts may hold any printable text) and a remote server's
reply text are both controlled by outsiders, so a delivery line is never searched for
"status=": it is split at every place where Postfix's own fixed-format fields could start,
and each split that parses completely is kept as a candidate. The tracker picks the
candidate whose recipient is one of the ledger rows of that queue id.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# "Nov 27 22:39:01 host prog[pid]: text" (syslog, postlogd) or an RFC 3339 stamp (rsyslog).
_PREFIX = re.compile(
    r"^(?P<time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r" (?P<host>\S+) (?P<program>[\w.+-]+(?:/[\w.+-]+)*)\[(?P<pid>\d+)\]: (?P<text>.*)$"
)
_QUEUE_ID = re.compile(r"^(?P<qid>[0-9A-Za-z]{5,20}): (?P<rest>.*)$")
_QUEUED = re.compile(
    r"^from=<(?P<sender>.*)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+) "
    r"\(queue active\)$"
)
_EXPIRED = re.compile(r"^from=<(?P<sender>.*)>, status=expired, returned to sender$")
_NOTIFICATION = re.compile(
    r"^sender (?P<kind>non-delivery|delay|delivery status) "
    r"notification: (?P<qid>[0-9A-Za-z]{5,20})$"
)
# Everything after the recipient (and orig_to): fixed-format fields Postfix writes itself.
_DELIVERY_TAIL = re.compile(
    r"relay=(?P<relay>[^\s,]+), (?:conn_use=\d+, )?delay=[\d.]+, delays=[\d./]+, "
    r"dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), status=(?P<status>[A-Za-z]+)"
    r"(?:, returned to sender)?(?: \((?P<detail>.*)\))?$"
)
_TAIL_START = re.compile(r">, (?=orig_to=<|relay=)")
_ORIG_TAIL_START = re.compile(r">, (?=relay=)")

_STATUSES = {
    "sent": "delivered",
    "deferred": "deferred",
    "SOFTBOUNCE": "deferred",
    "bounced": "bounced",
    "expired": "bounced",
}


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True)
class LogLine:
    """The syslog/postlogd envelope of one line."""

    program: str  # e.g. "postfix/qmgr", "postfix-out/smtp", "postfix/submission/smtpd"
    daemon: str  # the last component: "qmgr", "smtp", "bounce", ...
    text: str


@dataclass(frozen=True)
class Queued:
    """qmgr moved the message into the active queue (logged again on every retry)."""

    queue_id: str
    sender: str
    size: int
    nrcpt: int


@dataclass(frozen=True)
class DeliveryCandidate:
    recipient: str
    original_recipient: str | None
    relay: str
    dsn: str
    status: str  # Postfix's word: sent, deferred, bounced, expired, SOFTBOUNCE
    outcome: Outcome
    detail: str

    @property
    def ledger_address(self) -> str:
        """The address the client gave at RCPT TO (Postfix logs it as orig_to when rewritten)."""
        return self.original_recipient if self.original_recipient is not None else self.recipient

    def describe(self) -> str:
        """last_event: what happened, where, and what the other side said."""
        text = f"{self.status} via {self.relay}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt for one recipient; candidates > 1 only for hostile addresses."""

    queue_id: str
    candidates: tuple[DeliveryCandidate, ...]


@dataclass(frozen=True)
class Expired:
    """qmgr gave up on the message: every recipient still pending is returned to sender."""

    queue_id: str


@dataclass(frozen=True)
class Removed:
    queue_id: str


@dataclass(frozen=True)
class Notification:
    """The bounce daemon queued Postfix's own notification (never billed) as notice_id."""

    queue_id: str
    notice_id: str
    kind: str


@dataclass(frozen=True)
class Ignored:
    """A Postfix line the tracker does not need (connect, cleanup, warnings...)."""


@dataclass(frozen=True)
class Unparsed:
    """Not a line the tracker understands: counted and skipped."""

    reason: str


Event = Queued | Delivery | Expired | Removed | Notification | Ignored | Unparsed


def split_prefix(line: str) -> LogLine | None:
    """The program and text of a syslog or postlogd line, or None for anything else."""
    match = _PREFIX.match(line)
    if match is None:
        return None
    program = match["program"]
    return LogLine(program, program.rsplit("/", 1)[-1], match["text"])


def parse_line(line: str) -> Event:
    """One log line (without its newline) as an event."""
    envelope = split_prefix(line.rstrip("\r\n"))
    if envelope is None:
        return Unparsed("no syslog/postlogd prefix")
    match = _QUEUE_ID.match(envelope.text)
    if match is None or match["qid"] == "NOQUEUE":
        return Ignored()
    return _parse_queue_line(envelope.daemon, match["qid"], match["rest"])


def _parse_queue_line(daemon: str, queue_id: str, rest: str) -> Event:
    if rest.startswith("to=<"):
        return parse_delivery(queue_id, rest)
    if daemon == "qmgr":
        return _parse_qmgr(queue_id, rest)
    if daemon == "bounce":
        found = _NOTIFICATION.match(rest)
        if found:
            return Notification(queue_id, found["qid"], found["kind"])
    return Ignored()


def _parse_qmgr(queue_id: str, rest: str) -> Event:
    if rest == "removed":
        return Removed(queue_id)
    queued = _QUEUED.match(rest)
    if queued:
        return Queued(queue_id, queued["sender"], int(queued["size"]), int(queued["nrcpt"]))
    if _EXPIRED.match(rest):
        return Expired(queue_id)
    if rest.startswith("from=<"):
        return Unparsed("qmgr from= line of unknown shape")
    return Ignored()


def parse_delivery(queue_id: str, rest: str) -> Event:
    """Every complete reading of 'to=<…>, [orig_to=<…>, ]relay=…, status=… (…)'."""
    body = rest[len("to=<") :]
    candidates: list[DeliveryCandidate] = []
    for split in _TAIL_START.finditer(body):
        recipient, tail = body[: split.start()], body[split.end() :]
        if tail.startswith("orig_to=<"):
            orig_body = tail[len("orig_to=<") :]
            for orig_split in _ORIG_TAIL_START.finditer(orig_body):
                candidate = _candidate(
                    recipient, orig_body[: orig_split.start()], orig_body[orig_split.end() :]
                )
                if candidate is not None:
                    candidates.append(candidate)
        else:
            candidate = _candidate(recipient, None, tail)
            if candidate is not None:
                candidates.append(candidate)
    if not candidates:
        return Unparsed("delivery line of unknown shape")
    return Delivery(queue_id, tuple(candidates))


def _candidate(recipient: str, original: str | None, tail: str) -> DeliveryCandidate | None:
    match = _DELIVERY_TAIL.match(tail)
    if match is None or match["status"] not in _STATUSES:
        return None
    return DeliveryCandidate(
        recipient=recipient,
        original_recipient=original,
        relay=match["relay"],
        dsn=match["dsn"],
        status=match["status"],
        outcome=Outcome(_STATUSES[match["status"]]),
        detail=match["detail"] or "",
    )


def pick_candidate(
    delivery: Delivery, ledger_recipients: set[str]
) -> tuple[DeliveryCandidate, str] | None:
    """The one reading whose recipient is a ledger row of the queue id (addresses lower-cased),
    with the ledger address it matched; None when no reading or more than one distinct
    reading matches (never guess on hostile input)."""
    matching = {
        (c, key)
        for c in delivery.candidates
        if (key := _ledger_key(c, ledger_recipients)) is not None
    }
    if len(matching) == 1:
        return matching.pop()
    return None


def addresses_of(delivery: Delivery) -> list[str]:
    """Every address (lower-cased) some reading of the line names: the only ledger
    recipients pick_candidate can match."""
    return sorted(
        {
            address.lower()
            for c in delivery.candidates
            for address in (c.original_recipient, c.recipient)
            if address is not None
        }
    )


def _ledger_key(candidate: DeliveryCandidate, ledger_recipients: set[str]) -> str | None:
    """orig_to is the address given at RCPT TO; to= is the fallback (no rewriting logged)."""
    for address in (candidate.original_recipient, candidate.recipient):
        if address is not None and address.lower() in ledger_recipients:
            return address.lower()
    return None
