"""Outcomes recorded once whatever told us: the tracker's log line, a later DSN, a complaint;
the suppression and the webhook events they cause, in the same transaction."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest

from tests.store.tracking_fixtures import MailLog, Sender, add_message, ledger_row, make_sender
from txrelay.clock import FixedClock
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import outcomes
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
RULES = SuppressionRules(soft_bounce_limit=2, soft_bounce_window_days=7, soft_bounces_days=30)


@pytest.fixture()
def node(unique: str) -> str:
    return f"node-{unique}"


def webhook(db: psycopg.Connection, sender: Sender, *events: str) -> int:
    row = db.execute(
        "INSERT INTO webhooks (account_id, url, events, secret, created_at) "
        "VALUES (%s, 'https://hooks.shop.example/txrelay', %s, 'secret', now()) RETURNING id",
        (sender.account_id, list(events))).fetchone()
    return int(row["id"])  # type: ignore[call-overload,index]


def outbox(db: psycopg.Connection, hook: int) -> list[tuple[str, str]]:
    rows = db.execute("SELECT event, payload->'data'->>'recipient' AS rcpt FROM webhook_outbox "
                      "WHERE webhook_id = %s ORDER BY id", (hook,)).fetchall()
    return [(r["event"], r["rcpt"]) for r in rows]  # type: ignore[call-overload,index]


def suppression(db: psycopg.Connection, sender: Sender, address: str) -> dict | None:
    return db.execute("SELECT * FROM suppressions WHERE account_id = %s AND address = %s",
                      (sender.account_id, address)).fetchone()  # type: ignore[return-value]


def bounce(store_conn: psycopg.Connection, ledger_id: int, status: str, diagnostic: str,
           source: str, now: dt.datetime = NOW) -> bool:
    with store_conn.transaction():
        return outcomes.record_bounce(store_conn, ledger_id, status, diagnostic, now, source=source,
                                      rules=RULES)


def test_a_bounce_in_the_log_then_its_dsn_is_recorded_and_suppressed_once(
        db, store_conn, node, unique, tmp_path: Path) -> None:
    sender = make_sender(db, unique)
    hook = webhook(db, sender, "delivered", "bounced", "suppressed")
    message = add_message(db, sender, "QOUT01", ["ok@x.test", "gone@x.test"], node=node)
    log = MailLog(tmp_path / "postfix.log")
    log.queued("QOUT01", 2)
    log.delivery("QOUT01", "ok@x.test", "sent")
    log.delivery("QOUT01", "gone@x.test", "bounced", detail="550 5.1.1 user unknown")
    Tracker(store_conn, node, LogFollower(log.path, rotation_grace=0.0), FixedClock(NOW)).run_pass()
    gone = ledger_row(db, message, "gone@x.test")
    assert (gone["state"], gone["bounce_kind"], gone["bounce_source"]) == ("bounced", "hard",
                                                                           "log")
    row = suppression(db, sender, "gone@x.test")
    assert row is not None and row["reason"] == "hard_bounce" and row["dsn"] == "5.1.1"
    assert row["source_ledger_id"] == gone["id"] and row["expires_at"] is None
    # Postfix's own DSN for the same bounce comes back to the return path: nothing new.
    assert not bounce(store_conn, gone["id"], "5.1.1", "user unknown", "dsn")
    assert ledger_row(db, message, "gone@x.test")["bounce_source"] == "log"
    assert sorted(outbox(db, hook)) == [("bounced", "gone@x.test"), ("delivered", "ok@x.test"),
                                        ("suppressed", "gone@x.test")]


def test_a_dsn_after_delivery_turns_delivered_into_bounced(db, store_conn, node, unique) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, "QOUT02", ["later@x.test"], node=node)
    ledger_id = ledger_row(db, message, "later@x.test")["id"]
    db.execute("UPDATE ledger SET state = 'delivered' WHERE id = %s", (ledger_id,))
    assert bounce(store_conn, ledger_id, "5.2.1", "mailbox disabled", "dsn")
    row = ledger_row(db, message, "later@x.test")
    assert (row["state"], row["bounce_source"], row["dsn"]) == ("bounced", "dsn", "5.2.1")
    assert suppression(db, sender, "later@x.test")["reason"] == "hard_bounce"  # type: ignore[index]


def test_blocks_never_suppress_and_soft_bounces_do_at_the_limit(db, store_conn, node,
                                                                unique) -> None:
    sender = make_sender(db, unique)
    first = add_message(db, sender, "QOUT03", ["full@x.test", "blocked@x.test"], node=node)
    second = add_message(db, sender, "QOUT04", ["full@x.test"], node=node)
    assert bounce(store_conn, ledger_row(db, first, "blocked@x.test")["id"], "5.7.1",
                  "client host blocked", "log")
    assert suppression(db, sender, "blocked@x.test") is None
    assert bounce(store_conn, ledger_row(db, first, "full@x.test")["id"], "5.2.2", "mailbox full",
                  "log")
    assert suppression(db, sender, "full@x.test") is None  # one soft bounce: below the limit
    later = NOW + dt.timedelta(hours=1)
    assert bounce(store_conn, ledger_row(db, second, "full@x.test")["id"], "5.2.2", "mailbox full",
                  "dsn", later)
    row = suppression(db, sender, "full@x.test")
    assert row is not None and row["reason"] == "soft_bounces"
    assert row["expires_at"] == later + dt.timedelta(days=30)


def test_a_complaint_is_recorded_once_and_suppresses(db, store_conn, node, unique) -> None:
    sender = make_sender(db, unique)
    hook = webhook(db, sender, "complained")
    message = add_message(db, sender, "QOUT05", ["angry@x.test"], node=node)
    ledger_id = ledger_row(db, message, "angry@x.test")["id"]
    for expected in (True, False):
        with store_conn.transaction():
            assert outcomes.record_complaint(store_conn, ledger_id, "abuse", NOW,
                                             rules=RULES) is expected
    assert ledger_row(db, message, "angry@x.test")["complaint_type"] == "abuse"
    assert suppression(db, sender, "angry@x.test")["reason"] == "complaint"  # type: ignore[index]
    assert outbox(db, hook) == [("complained", "angry@x.test")]


def test_a_manual_suppression_is_not_replaced_by_a_bounce(db, store_conn, node, unique) -> None:
    sender = make_sender(db, unique)
    db.execute("INSERT INTO suppressions (account_id, address, reason, detail, created_at) "
               "VALUES (%s, 'kept@x.test', 'manual', 'asked by the shop', %s)",
               (sender.account_id, NOW))
    message = add_message(db, sender, "QOUT06", ["kept@x.test"], node=node)
    assert bounce(store_conn, ledger_row(db, message, "kept@x.test")["id"], "5.1.1", "unknown",
                  "log")
    row = suppression(db, sender, "kept@x.test")
    assert row is not None and (row["reason"], row["detail"]) == ("manual", "asked by the shop")
