"""The mail-log parser against Postfix 3.7 line shapes, hostile addresses included."""

from __future__ import annotations

import pytest

from txrelay.policy import logline
from txrelay.policy.logline import (
    Delivery,
    Expired,
    Ignored,
    Notification,
    Outcome,
    Queued,
    Removed,
    Unparsed,
    parse_line,
    pick_candidate,
)

POSTLOG = "Nov 27 22:39:01 relay1 postfix/{daemon}[4242]: "
RFC3339 = "2025-11-27T22:39:01.123456+00:00 relay1 postfix/{daemon}[4242]: "


def line(daemon: str, text: str, prefix: str = POSTLOG) -> str:
    return prefix.format(daemon=daemon) + text


def only(event: logline.Event) -> logline.DeliveryCandidate:
    assert isinstance(event, Delivery)
    assert len(event.candidates) == 1
    return event.candidates[0]


@pytest.mark.parametrize("prefix", [POSTLOG, RFC3339,
                                    "Nov  7 02:03:04 relay1 postfix/{daemon}[7]: "])
def test_qmgr_queue_active_line_gives_sender_size_and_nrcpt(prefix: str) -> None:
    event = parse_line(line("qmgr", "4Fd2xK1zLNz9vX: from=<shop@acme.example>, size=1834, "
                            "nrcpt=3 (queue active)", prefix))
    assert event == Queued("4Fd2xK1zLNz9vX", "shop@acme.example", 1834, 3)


def test_short_queue_ids_and_null_sender_parse() -> None:
    event = parse_line(line("qmgr", "3A1B2C3D4E: from=<>, size=2210, nrcpt=1 (queue active)"))
    assert event == Queued("3A1B2C3D4E", "", 2210, 1)


def test_smtp_sent_line_with_relay_delays_and_reply_text() -> None:
    event = parse_line(line("smtp", "4Fd2xK1zLNz9vX: to=<alice@example.com>, "
                            "relay=mx.example.com[192.0.2.10]:25, delay=0.52, "
                            "delays=0.05/0.01/0.21/0.25, dsn=2.0.0, status=sent "
                            "(250 2.0.0 Ok: queued as 4Fd2xL5Q0Qz1Bc)"))
    candidate = only(event)
    assert candidate.recipient == "alice@example.com"
    assert candidate.original_recipient is None
    assert candidate.outcome is Outcome.DELIVERED
    assert candidate.dsn == "2.0.0"
    assert candidate.relay == "mx.example.com[192.0.2.10]:25"
    assert candidate.detail == "250 2.0.0 Ok: queued as 4Fd2xL5Q0Qz1Bc"


def test_deferred_line_keeps_the_reason() -> None:
    candidate = only(parse_line(line(
        "smtp", "ABCDEF1234: to=<defer1@sink.test>, relay=127.0.0.1[127.0.0.1]:2525, "
        "delay=0.1, delays=0.01/0/0.05/0.04, dsn=4.2.0, status=deferred (host "
        "127.0.0.1[127.0.0.1] said: 450 4.2.0 try later (in reply to RCPT TO command))")))
    assert candidate.outcome is Outcome.DEFERRED
    assert candidate.dsn == "4.2.0"
    assert candidate.detail.endswith("(in reply to RCPT TO command)")


def test_connection_refused_deferral_with_relay_none() -> None:
    candidate = only(parse_line(line(
        "smtp", "ABCDEF1234: to=<bob@example.org>, relay=none, delay=30, "
        "delays=0.02/0/30/0, dsn=4.4.1, status=deferred (connect to "
        "mx.example.org[198.51.100.7]:25: Connection refused)")))
    assert candidate.outcome is Outcome.DEFERRED and candidate.relay == "none"


def test_bounced_line_with_orig_to_and_conn_use() -> None:
    event = parse_line(line(
        "smtp", "ABCDEF1234: to=<bounce1@sink.test>, orig_to=<Bounce1@Sink.test>, "
        "relay=127.0.0.1[127.0.0.1]:2525, conn_use=2, delay=0.2, delays=0.1/0/0/0.1, "
        "dsn=5.1.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 no such "
        "user (in reply to RCPT TO command))"))
    assert isinstance(event, Delivery)
    # Structurally the whole "to=<…>, orig_to=<…" could be one odd address too: the
    # ledger decides, and only the orig_to reading names a ledger recipient.
    picked = pick_candidate(event, {"bounce1@sink.test"})
    assert picked is not None
    candidate = picked[0]
    assert candidate.outcome is Outcome.BOUNCED
    assert candidate.dsn == "5.1.1"
    assert candidate.original_recipient == "Bounce1@Sink.test"
    assert candidate.ledger_address == "Bounce1@Sink.test"


def test_per_recipient_expired_counts_as_bounced() -> None:
    candidate = only(parse_line(line(
        "error", "ABCDEF1234: to=<late@example.org>, relay=none, delay=432000, "
        "delays=432000/0/0/0, dsn=4.4.1, status=expired, returned to sender (connect to "
        "example.org[192.0.2.1]:25: Connection timed out)")))
    assert candidate.outcome is Outcome.BOUNCED and candidate.dsn == "4.4.1"


def test_message_level_expiry_line() -> None:
    event = parse_line(line("qmgr", "ABCDEF1234: from=<shop@acme.example>, status=expired, "
                            "returned to sender"))
    assert event == Expired("ABCDEF1234")


def test_removed_line() -> None:
    assert parse_line(line("qmgr", "ABCDEF1234: removed")) == Removed("ABCDEF1234")


def test_bounce_daemon_notification_names_postfix_own_queue_id() -> None:
    event = parse_line(line("bounce", "ABCDEF1234: sender non-delivery notification: "
                            "FEDCBA4321"))
    assert event == Notification("ABCDEF1234", "FEDCBA4321", "non-delivery")


def test_multi_instance_and_service_names_are_understood() -> None:
    text = ("ABCDEF1234: to=<a@b.example>, relay=local, delay=0.01, delays=0/0/0/0, "
            "dsn=2.0.0, status=sent (delivered to mailbox)")
    event = parse_line("Nov 27 22:39:01 relay1 postfix-out/submission/smtp[99]: " + text)
    assert only(event).outcome is Outcome.DELIVERED


@pytest.mark.parametrize("text", [
    "connect from localhost[127.0.0.1]",
    "ABCDEF1234: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username=shop",
    "ABCDEF1234: message-id=<x@y>",
    "NOQUEUE: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <a@b>: Relay access denied",
    "warning: hostname x does not resolve to address 1.2.3.4",
])
def test_lines_the_tracker_does_not_need_are_ignored(text: str) -> None:
    assert parse_line(line("smtpd", text)) == Ignored()


@pytest.mark.parametrize("raw", [
    "",
    "garbage without a prefix",
    "Nov 27 22:39:01 relay1 postfix/qmgr[1]: ABCDEF1234: from=<a@b>, size=x, nrcpt=1 "
    "(queue active)",
    "Nov 27 22:39:01 relay1 postfix/smtp[1]: ABCDEF1234: to=<a@b>, status=sent (ok)",
])
def test_malformed_lines_are_unparsed_never_an_exception(raw: str) -> None:
    assert isinstance(parse_line(raw), Unparsed)


def test_quoted_local_part_containing_status_sent_cannot_fake_delivery() -> None:
    hostile = '"x, status=sent (ok)"@example.com'
    raw = line("smtp", f"ABCDEF1234: to=<{hostile}>, relay=mx.example.com[192.0.2.1]:25, "
                       "delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (host said: 550 "
                       "5.1.1 unknown user)")
    candidate = only(parse_line(raw))
    assert candidate.recipient == hostile
    assert candidate.outcome is Outcome.BOUNCED


def test_address_imitating_the_whole_tail_is_resolved_by_the_ledger() -> None:
    fake_tail = ">, relay=x, delay=1, delays=1/1/1/1, dsn=2.0.0, status=sent (ok)"
    hostile = f'"a{fake_tail}"@example.com'
    raw = line("smtp", f"ABCDEF1234: to=<{hostile}>, relay=mx[192.0.2.1]:25, delay=1, "
                       "delays=0/0/0/1, dsn=5.1.1, status=bounced (550 no)")
    event = parse_line(raw)
    assert isinstance(event, Delivery) and len(event.candidates) == 2
    picked = pick_candidate(event, {hostile.lower(), "other@example.com"})
    assert picked is not None
    candidate, address = picked
    assert address == hostile.lower()
    assert candidate.outcome is Outcome.BOUNCED


def test_remote_reply_imitating_a_tail_does_not_change_the_outcome() -> None:
    reply = "550 no (x>, relay=y, delay=1, delays=1/1/1/1, dsn=2.0.0, status=sent (ok)"
    raw = line("smtp", f"ABCDEF1234: to=<victim@example.com>, relay=mx[192.0.2.1]:25, "
                       f"delay=1, delays=0/0/0/1, dsn=5.0.0, status=bounced ({reply})")
    event = parse_line(raw)
    assert isinstance(event, Delivery)
    picked = pick_candidate(event, {"victim@example.com"})
    assert picked is not None and picked[0].outcome is Outcome.BOUNCED


def test_recipient_not_in_the_ledger_matches_nothing() -> None:
    event = parse_line(line("smtp", "ABCDEF1234: to=<stranger@example.com>, relay=none, "
                            "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (ok)"))
    assert isinstance(event, Delivery)
    assert pick_candidate(event, {"alice@example.com"}) is None


def test_two_readings_both_in_the_ledger_are_not_guessed() -> None:
    fake_tail = ">, relay=x, delay=1, delays=1/1/1/1, dsn=2.0.0, status=sent (ok)"
    hostile = f'"a{fake_tail}"@example.com'
    raw = line("smtp", f"ABCDEF1234: to=<{hostile}>, relay=mx[192.0.2.1]:25, delay=1, "
                       "delays=0/0/0/1, dsn=5.1.1, status=bounced (550 no)")
    event = parse_line(raw)
    assert isinstance(event, Delivery)
    assert pick_candidate(event, {hostile.lower(), '"a'}) is None


def test_ledger_match_is_case_insensitive_and_prefers_orig_to() -> None:
    event = parse_line(line("smtp", "ABCDEF1234: to=<real@internal.example>, "
                            "orig_to=<Alias@Example.com>, relay=none, delay=1, "
                            "delays=0/0/0/1, dsn=2.0.0, status=sent (ok)"))
    assert isinstance(event, Delivery)
    picked = pick_candidate(event, {"alias@example.com"})
    assert picked is not None and picked[1] == "alias@example.com"


def test_describe_gives_status_relay_and_reply() -> None:
    candidate = only(parse_line(line("smtp", "ABCDEF1234: to=<a@b.example>, "
                                     "relay=mx[192.0.2.1]:25, delay=1, delays=0/0/0/1, "
                                     "dsn=2.0.0, status=sent (250 ok)")))
    assert candidate.describe() == "sent via mx[192.0.2.1]:25: 250 ok"
