"""The tracker applies the configured suppression rules ([suppression]) to what it reads in
Postfix's log, and a message that expired in the queue bounces recipient by recipient as
soft bounces."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from tests.store.tracking_fixtures import MailLog, add_message, ledger_row, make_sender, states
from txrelay.clock import FixedClock
from txrelay.config import SuppressionConfig
from txrelay.policy.suppression import SuppressionRules
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def run_tracker(store_conn: psycopg.Connection, node: str, maillog: MailLog,
                rules: SuppressionRules) -> None:
    Tracker(store_conn, node, LogFollower(maillog.path, rotation_grace=0.0), FixedClock(NOW),
            rules).run_pass()


def suppression(db: psycopg.Connection[Any], account_id: int,
                address: str) -> dict[str, Any] | None:
    return db.execute("SELECT * FROM suppressions WHERE account_id = %s AND address = %s",
                      (account_id, address)).fetchone()


def expire(maillog: MailLog, queue_id: str) -> None:
    maillog.line("qmgr", f"{queue_id}: from=<shop@acme.example>, status=expired, returned to "
                         "sender")


def test_an_expired_recipient_is_a_soft_bounce_and_suppressed_at_the_configured_limit(
        db: psycopg.Connection[Any], store_conn: psycopg.Connection, maillog: MailLog,
        unique: str) -> None:
    node = f"node-{unique}"
    sender = make_sender(db, unique)
    message = add_message(db, sender, "QSAAAA", ["a@x.test", "b@x.test", "c@x.test"],
                          node=node)
    maillog.queued("QSAAAA", 3)
    maillog.delivery("QSAAAA", "a@x.test", "sent")
    maillog.delivery("QSAAAA", "b@x.test", "deferred", dsn="4.4.1", detail="timed out")
    expire(maillog, "QSAAAA")
    rules = SuppressionConfig(soft_bounce_limit=1, soft_bounces_days=5).rules()
    run_tracker(store_conn, node, maillog, rules)
    assert states(db, message) == {"a@x.test": "delivered", "b@x.test": "bounced",
                                   "c@x.test": "bounced"}
    deferred = ledger_row(db, message, "b@x.test")
    assert (deferred["dsn"], deferred["bounce_kind"], deferred["billing"]) == (
        "4.4.1", "soft", "quota")  # billed: bounced recipients cost a mail too
    assert deferred["last_event"] == "expired, returned to sender"
    assert ledger_row(db, message, "c@x.test")["dsn"] == "4.4.7"
    row = suppression(db, sender.account_id, "b@x.test")
    assert row is not None and row["reason"] == "soft_bounces"
    assert row["expires_at"] == NOW + dt.timedelta(days=5)
    assert suppression(db, sender.account_id, "a@x.test") is None


def test_below_the_soft_bounce_limit_an_expired_recipient_is_not_suppressed(
        db: psycopg.Connection[Any], store_conn: psycopg.Connection, maillog: MailLog,
        unique: str) -> None:
    node = f"node-{unique}"
    sender = make_sender(db, unique)
    add_message(db, sender, "QTAAAA", ["b@x.test"], node=node)
    maillog.queued("QTAAAA", 1)
    expire(maillog, "QTAAAA")
    add_message(db, sender, "QUAAAA", ["b@x.test"], node=node)
    maillog.queued("QUAAAA", 1)
    expire(maillog, "QUAAAA")
    run_tracker(store_conn, node, maillog, SuppressionRules(soft_bounce_limit=3))
    assert suppression(db, sender.account_id, "b@x.test") is None
    add_message(db, sender, "QVAAAA", ["b@x.test"], node=node)
    maillog.queued("QVAAAA", 1)
    expire(maillog, "QVAAAA")
    run_tracker(store_conn, node, maillog, SuppressionRules(soft_bounce_limit=3))
    row = suppression(db, sender.account_id, "b@x.test")
    assert row is not None and row["reason"] == "soft_bounces"  # the third one


def test_a_hard_bounce_is_suppressed_for_the_configured_days(
        db: psycopg.Connection[Any], store_conn: psycopg.Connection, maillog: MailLog,
        unique: str) -> None:
    node = f"node-{unique}"
    sender = make_sender(db, unique)
    add_message(db, sender, "QWAAAA", ["gone@x.test"], node=node)
    maillog.queued("QWAAAA", 1)
    maillog.delivery("QWAAAA", "gone@x.test", "bounced", detail="550 5.1.1 no such user")
    run_tracker(store_conn, node, maillog, SuppressionConfig(hard_bounce_days=10).rules())
    row = suppression(db, sender.account_id, "gone@x.test")
    assert row is not None and (row["reason"], row["dsn"]) == ("hard_bounce", "5.1.1")
    assert row["expires_at"] == NOW + dt.timedelta(days=10)
    assert "no such user" in row["detail"]
