"""Mail that came back, matched and recorded on the real database: a DSN bounces the
message's failed recipients once (whether Postfix's log told us first or not), a complaint
report records a complaint, and forged, foreign or unreadable mail is dropped and counted."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from typing import Any

import psycopg

from tests.harness.reports import arf, dsn, original_message
from tests.store.tracking_fixtures import add_message, make_sender
from txrelay.cli.inbound import read_mail
from txrelay.policy.return_path import feedback_id, return_path
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import inbound, outcomes

SECRET = bytes(range(32))
DOMAIN = "bounces.relay.example"
RULES = SuppressionRules()
NOW = dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC)


def _txn(db: psycopg.Connection[Any], message_row: int) -> uuid.UUID:
    row = db.execute("SELECT txn_id FROM messages WHERE id = %s", (message_row,)).fetchone()
    assert row is not None
    return row["txn_id"]  # type: ignore[call-overload,no-any-return]


def _ledger(db: psycopg.Connection[Any], message_row: int) -> dict[str, dict[str, Any]]:
    rows = db.execute("SELECT * FROM ledger WHERE message_id = %s", (message_row,)).fetchall()
    return {r["recipient"]: r for r in rows}  # type: ignore[call-overload,index]


def _suppressed(db: psycopg.Connection[Any], account_id: int) -> dict[str, str]:
    rows = db.execute("SELECT address, reason FROM suppressions WHERE account_id = %s",
                      (account_id,)).fetchall()
    return {r["address"]: r["reason"] for r in rows}  # type: ignore[call-overload,index]


def _handle(database_url: str, recipient: str, raw: bytes | None,
            size: int | None = None) -> inbound.Result:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        mail = inbound.Inbound("", recipient, raw, size if size is not None else len(raw or b""))
        return inbound.handle(conn, mail, SECRET, NOW, rules=RULES)


def _row(db: psycopg.Connection[Any], txn_id: uuid.UUID | None, recipient: str
         ) -> dict[str, Any]:
    row = db.execute("SELECT * FROM inbound_mail WHERE envelope_recipient = %s ORDER BY id DESC "
                     "LIMIT 1", (recipient,)).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


def test_a_dsn_bounces_the_failed_recipient_suppresses_and_counts(
        db: psycopg.Connection[Any], database_url: str, unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["gone@example.net", "slow@example.net",
                                                       "fine@example.net"])
    db.execute("UPDATE ledger SET state = 'delivered' WHERE message_id = %s", (message,))
    address = return_path(SECRET, _txn(db, message), DOMAIN)
    raw = dsn([("gone@example.net", "failed", "5.1.1", "550 5.1.1 User unknown"),
               ("slow@example.net", "delayed", "4.4.1", "")], return_path=address)
    result = _handle(database_url, address, raw)
    assert (result.kind, result.outcome, result.recipients) == ("dsn", "recorded", 1)
    ledger = _ledger(db, message)
    gone = ledger["gone@example.net"]
    assert (gone["state"], gone["bounce_kind"], gone["bounce_source"], gone["dsn"]) == (
        "bounced", "hard", "dsn", "5.1.1")
    assert ledger["slow@example.net"]["state"] == "delivered"
    assert ledger["fine@example.net"]["state"] == "delivered"
    assert _suppressed(db, sender.account_id) == {"gone@example.net": "hard_bounce"}
    row = _row(db, result.txn_id, address)
    assert (row["kind"], row["outcome"], row["account_id"], row["recipients"]) == (
        "dsn", "recorded", sender.account_id, 1)


def test_a_dsn_after_postfixs_log_line_records_the_bounce_once(
        db: psycopg.Connection[Any], database_url: str, unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["gone@example.net"])
    ledger_id = _ledger(db, message)["gone@example.net"]["id"]
    with (psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn,
          conn.transaction()):
        assert outcomes.record_bounce(conn, ledger_id, "5.1.1", "550 5.1.1 unknown", NOW,
                                      source="log", rules=RULES)
    before = db.execute("SELECT * FROM suppressions WHERE account_id = %s",
                        (sender.account_id,)).fetchall()
    address = return_path(SECRET, _txn(db, message), DOMAIN)
    raw = dsn([("gone@example.net", "failed", "5.1.1", "550 5.1.1 User unknown")])
    first = _handle(database_url, address, raw)
    second = _handle(database_url, address, raw)  # the same DSN delivered twice
    assert (first.outcome, first.recipients) == ("duplicate", 0)
    assert (second.outcome, second.recipients) == ("duplicate", 0)
    row = _ledger(db, message)["gone@example.net"]
    assert (row["state"], row["bounce_source"]) == ("bounced", "log")
    after = db.execute("SELECT * FROM suppressions WHERE account_id = %s",
                       (sender.account_id,)).fetchall()
    assert after == before and len(after) == 1


def test_a_delayed_only_dsn_changes_nothing_and_is_counted(
        db: psycopg.Connection[Any], database_url: str, unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["slow@example.net"])
    address = return_path(SECRET, _txn(db, message), DOMAIN)
    result = _handle(database_url, address,
                     dsn([("slow@example.net", "delayed", "4.2.2", "452 mailbox full")]))
    assert (result.outcome, result.recipients) == ("delayed", 0)
    assert _ledger(db, message)["slow@example.net"]["state"] == "accepted"
    assert _suppressed(db, sender.account_id) == {}


def test_forged_unknown_foreign_and_malformed_dsns_are_dropped(
        db: psycopg.Connection[Any], database_url: str, unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["a@example.net"])
    other = make_sender(db, unique + "o")
    theirs = add_message(db, other, f"R{unique}", ["victim@example.net"])
    txn = _txn(db, message)
    good = return_path(SECRET, txn, DOMAIN)
    forged = return_path(bytes(32), txn, DOMAIN)
    unknown = return_path(SECRET, uuid.uuid4(), DOMAIN)
    victim = dsn([("victim@example.net", "failed", "5.1.1", "unknown")])
    cases = [
        (forged, dsn([("a@example.net", "failed", "5.1.1", "x")]), "forged_token"),
        (f"b-{'a' * 42}@{DOMAIN}", dsn([("a@example.net", "failed", "5.1.1", "x")]),
         "forged_token"),
        (unknown, dsn([("a@example.net", "failed", "5.1.1", "x")]), "unknown_message"),
        # Our token, another tenant's recipient: never attributed to that tenant.
        (good, victim, "unknown_recipient"),
        (good, b"Subject: out of office\n\nback Monday\n", "malformed"),
        (f"postmaster@{DOMAIN}", victim, "not_ours"),
    ]
    for recipient, raw, reason in cases:
        result = _handle(database_url, recipient, raw)
        assert (result.outcome, result.reason) == ("dropped", reason), recipient
    assert _ledger(db, message)["a@example.net"]["state"] == "accepted"
    assert _ledger(db, theirs)["victim@example.net"]["state"] == "accepted"
    assert _suppressed(db, sender.account_id) == {} and _suppressed(db, other.account_id) == {}


def test_a_30_mb_bounce_is_read_to_its_end_but_not_kept_and_is_counted(
        db: psycopg.Connection[Any], database_url: str, unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["a@example.net"])
    address = return_path(SECRET, _txn(db, message), DOMAIN)
    stream = io.BytesIO(dsn([("a@example.net", "failed", "5.1.1", "x")]) + b"x" * 30_000_000)
    mail = read_mail(stream, "", address, 10 * 1024 * 1024)
    assert mail.raw is None and mail.size > 30_000_000 and stream.read() == b""
    result = _handle(database_url, address, mail.raw, mail.size)
    assert (result.outcome, result.reason) == ("dropped", "too_big")
    assert _row(db, None, address)["size"] == mail.size
    assert _ledger(db, message)["a@example.net"]["state"] == "accepted"


def test_a_complaint_is_recorded_for_the_message_its_feedback_id_names(
        db: psycopg.Connection[Any], database_url: str, unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["reader@example.net", "b@example.net"])
    fid = feedback_id(SECRET, sender.account_id, sender.connection_id, _txn(db, message))
    raw = arf(original_message("reader@example.net", feedback_id=fid), rcpt_to="")
    result = _handle(database_url, f"fbl@{DOMAIN}", raw)
    assert (result.kind, result.outcome, result.recipients) == ("arf", "recorded", 1)
    ledger = _ledger(db, message)
    assert ledger["reader@example.net"]["complaint_type"] == "abuse"
    assert ledger["b@example.net"]["complained_at"] is None
    assert _suppressed(db, sender.account_id) == {"reader@example.net": "complaint"}
    again = _handle(database_url, f"fbl@{DOMAIN}", raw)
    assert (again.outcome, again.recipients) == ("duplicate", 0)


def test_a_complaint_naming_another_tenants_account_is_dropped(
        db: psycopg.Connection[Any], database_url: str, unique: str) -> None:
    sender = make_sender(db, unique)
    other = make_sender(db, unique + "o")
    message = add_message(db, sender, f"Q{unique}", ["reader@example.net"])
    # A valid MAC, but over other's ids: the message is not other's.
    fid = feedback_id(SECRET, other.account_id, other.connection_id, _txn(db, message))
    raw = arf(original_message("reader@example.net", feedback_id=fid))
    result = _handle(database_url, f"fbl@{DOMAIN}", raw)
    assert (result.outcome, result.reason) == ("dropped", "wrong_account")
    forged = _handle(database_url, f"fbl@{DOMAIN}", raw.replace(fid.encode(), (
        fid[:-1] + ("a" if fid[-1] != "a" else "b")).encode()))
    assert (forged.outcome, forged.reason) == ("dropped", "forged_token")
    none = _handle(database_url, f"fbl@{DOMAIN}", arf(original_message("reader@example.net")))
    assert (none.outcome, none.reason) == ("dropped", "no_feedback_id")
    assert _ledger(db, message)["reader@example.net"]["complained_at"] is None
    assert _suppressed(db, sender.account_id) == {}
    counted = {(r["kind"], r["outcome"], r["reason"]): r["mails"]
               for r in inbound.counts(db, NOW - dt.timedelta(minutes=1))}
    assert counted[("arf", "dropped", "wrong_account")] >= 1
