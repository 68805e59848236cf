"""DSN (RFC 3464) and ARF (RFC 5965) parsing: what the reports say, and malformed ones refused
with a reason."""

from __future__ import annotations

from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from tests.harness.reports import arf, dsn, original_message
from txrelay.policy.inbound import (
    ARF,
    DSN,
    OTHER,
    Malformed,
    address_kind,
    parse_arf,
    parse_dsn,
)


def test_addresses_are_told_apart_by_their_local_part() -> None:
    assert address_kind("b-abc") == DSN and address_kind("B-ABC") == DSN
    assert address_kind("fbl") == ARF and address_kind("FBL") == ARF
    assert address_kind("postmaster") == OTHER and address_kind("fbl2") == OTHER


def test_a_dsn_gives_each_recipients_action_status_and_diagnostic() -> None:
    raw = dsn([("Gone@Example.NET", "failed", "5.1.1", "550 5.1.1 <gone@example.net>: "
                "Recipient address rejected: User unknown"),
               ("slow@example.net", "delayed", "4.4.1", "")])
    report = parse_dsn(raw)
    failed, delayed = report.recipients
    assert failed.final_recipient == "gone@example.net"
    assert failed.addresses == ("gone@example.net",)
    assert (failed.action, failed.status) == ("failed", "5.1.1")
    assert failed.diagnostic.startswith("550 5.1.1 <gone@example.net>: Recipient address")
    assert (delayed.action, delayed.status, delayed.diagnostic) == ("delayed", "4.4.1", "")


def test_original_recipient_is_preferred_and_final_recipient_is_enough() -> None:
    report = parse_dsn(dsn([("a@example.net", "failed", "5.2.1", "mailbox disabled")],
                           original_recipient=False, headers_only=True))
    (only,) = report.recipients
    assert only.original_recipient == "" and only.addresses == ("a@example.net",)


def test_an_arf_report_names_type_recipient_and_feedback_id() -> None:
    original = original_message("Reader@example.net", feedback_id="7.9.abcdef")
    report = parse_arf(arf(original, rcpt_to="reader@example.net"))
    assert report.feedback_type == "abuse"
    assert report.original_rcpt_to == ("reader@example.net",)
    assert report.original_to == ("reader@example.net",)
    assert report.feedback_id == "7.9.abcdef"


def test_an_arf_report_with_the_header_only_and_no_rcpt_to() -> None:
    original = original_message("reader@example.net", feedback_id="1.2.xyz")
    report = parse_arf(arf(original, headers_only=True, feedback_type="Abuse"))
    assert report.feedback_type == "abuse" and report.original_rcpt_to == ()
    assert report.original_to == ("reader@example.net",) and report.feedback_id == "1.2.xyz"


def _plain(text: str) -> bytes:
    return MIMEText(text).as_bytes()


def _report_without(report_type: str, part: str) -> bytes:
    message = MIMEMultipart("report", report_type=report_type)
    message.attach(MIMEText("human text\n"))
    message.attach(MIMEText(part))
    return message.as_bytes()


@pytest.mark.parametrize(("raw", "says"), [
    (b"", "text/plain is not multipart/report"),
    (_plain("Out of office until Monday"), "is not multipart/report"),
    (b"\xff\xfe\x00garbage\r\n\r\n\x00", "is not multipart/report"),
    (dsn([("a@example.net", "failed", "5.1.1", "x")]).replace(b'"delivery-status"', b'"x"'),
     "is not delivery-status"),
    (_report_without("delivery-status", "no status here"), "no message/delivery-status part"),
    (dsn([("a@example.net", "failed", "550", "x")]), "is not a status code"),
    (dsn([("a@example.net", "", "5.1.1", "x")]), "lacks Final-Recipient or Action"),
    (dsn([("a@example.net", "failed", "5.1.1", "x")]).replace(b"rfc822; a@", b"x400; a@"),
     "lacks Final-Recipient or Action"),
    (dsn([]), "no per-recipient fields"),
])
def test_a_malformed_dsn_is_refused_with_a_reason(raw: bytes, says: str) -> None:
    with pytest.raises(Malformed, match=says):
        parse_dsn(raw)


@pytest.mark.parametrize(("raw", "says"), [
    (dsn([("a@example.net", "failed", "5.1.1", "x")]), "is not feedback-report"),
    (_report_without("feedback-report", "x"), "no message/feedback-report part"),
    (arf(original_message("a@example.net")).replace(b"Feedback-Type: abuse\n", b""),
     "no Feedback-Type"),
])
def test_a_malformed_arf_report_is_refused_with_a_reason(raw: bytes, says: str) -> None:
    with pytest.raises(Malformed, match=says):
        parse_arf(raw)


def test_an_arf_report_without_the_original_is_refused() -> None:
    message = MIMEMultipart("report", report_type="feedback-report")
    message.attach(MIMEText("human text\n"))
    fields = MIMEBase("message", "feedback-report")
    fields.set_payload("Feedback-Type: abuse\nVersion: 1\n")
    message.attach(fields)
    with pytest.raises(Malformed, match="no message/rfc822 or text/rfc822-headers"):
        parse_arf(message.as_bytes())
