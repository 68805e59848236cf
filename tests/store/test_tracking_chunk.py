"""A chunk's delivery lines applied against the rows the chunk locked (known.LedgerRows) and
recorded with their webhook event in one statement (outcomes.record_delivery): the same
rows, states, events and payloads as reading each row per line, in fewer statements."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

import psycopg

from tests.store.tracking_fixtures import MailLog, Sender, add_message, make_sender
from txrelay.clock import FixedClock
from txrelay.policy import logline
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import webhook_events
from txrelay.tracker import engine
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def tracker_for(store_conn: psycopg.Connection, node: str, maillog: MailLog) -> Tracker:
    return Tracker(store_conn, node, LogFollower(maillog.path, rotation_grace=0.0), FixedClock(NOW))


def webhook(db: psycopg.Connection, sender: Sender, *events: str) -> int:
    row: Any = db.execute(
        "INSERT INTO webhooks (account_id, url, events, secret, created_at) "
        "VALUES (%s, 'https://hooks.shop.example/txrelay', %s, 'secret', now()) RETURNING id",
        (sender.account_id, list(events))).fetchone()
    return int(row["id"])


def rows_of(db: psycopg.Connection, message: int) -> list[tuple[str, str]]:
    """(recipient, state) of each ledger row of the message, in id order."""
    rows: Any = db.execute("SELECT recipient, state FROM ledger WHERE message_id = %s "
                           "ORDER BY id", (message,)).fetchall()
    return [(r["recipient"], r["state"]) for r in rows]


def ledger_ids(db: psycopg.Connection, message: int) -> list[int]:
    rows: Any = db.execute("SELECT id FROM ledger WHERE message_id = %s ORDER BY id",
                           (message,)).fetchall()
    return [int(r["id"]) for r in rows]


def payloads(db: psycopg.Connection, hook: int) -> list[dict[str, Any]]:
    rows: Any = db.execute("SELECT payload FROM webhook_outbox WHERE webhook_id = %s "
                           "ORDER BY id", (hook,)).fetchall()
    return [r["payload"] for r in rows]


def expected_payload(db: psycopg.Connection, sender: Sender, ledger_id: int, event: str,
                     detail: str, event_id: object) -> dict[str, Any]:
    """What webhook_events.emit writes for a delivery event of the row (its fields spelled
    out here, so that a change in either place shows)."""
    message: Any = db.execute(
        "SELECT m.message_id, m.queue_id, m.txn_id, l.recipient FROM ledger l "
        "JOIN messages m ON m.id = l.message_id WHERE l.id = %s", (ledger_id,)).fetchone()
    return {"id": str(event_id), "event": event, "created_at": "2026-03-10T12:00:00Z",
            "account_id": sender.account_id,
            "data": {"recipient": message["recipient"], "message_id": message["message_id"],
                     "queue_id": message["queue_id"], "txn_id": str(message["txn_id"]),
                     "connection": sender.connection, "ledger_id": ledger_id,
                     "detail": detail}}


def test_deferred_then_sent_in_one_chunk_gives_both_events_with_their_payloads(
        db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    hook = webhook(db, sender, "delivered", "deferred")
    message = add_message(db, sender, "QCH001", ["Later@x.test"], node=node,
                          message_id="<m1@acme.example>")
    maillog.queued("QCH001", 1)
    maillog.delivery("QCH001", "Later@x.test", "deferred", detail="450 4.2.0 try later")
    maillog.delivery("QCH001", "Later@x.test", "deferred", detail="450 4.2.0 try later")
    maillog.delivery("QCH001", "later@x.test", "sent")
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert rows_of(db, message) == [("Later@x.test", "delivered")]
    # The same attempt text at the same time is one event (as before: once per attempt).
    assert result.counters.outcomes() == {"delivered": 1, "deferred": 2, "bounced": 0}
    (ledger_id,) = ledger_ids(db, message)
    deferred = "deferred via 127.0.0.1[127.0.0.1]:2525: 450 4.2.0 try later"
    delivered = "sent via 127.0.0.1[127.0.0.1]:2525: 250 2.0.0 Ok"
    assert payloads(db, hook) == [
        expected_payload(db, sender, ledger_id, "deferred", deferred,
                         webhook_events.event_id_for(ledger_id, "deferred", deferred,
                                                     NOW.isoformat())),
        expected_payload(db, sender, ledger_id, "delivered", delivered,
                         webhook_events.event_id_for(ledger_id, "delivered")),
    ]


def test_each_copy_of_a_recipient_gets_its_own_line_within_one_chunk(
        db, store_conn, node, maillog, unique):
    """Two copies of a@ and one b@ (migration 0013): the second line of a@ goes to the copy
    still open, not again to the one the first line delivered."""
    sender = make_sender(db, unique)
    hook = webhook(db, sender, "delivered")
    message = add_message(db, sender, "QCH002", ["a@x.test", "a@x.test", "b@x.test"],
                          node=node)
    maillog.queued("QCH002", 3)
    maillog.delivery("QCH002", "a@x.test", "sent")
    maillog.delivery("QCH002", "b@x.test", "deferred")
    maillog.delivery("QCH002", "a@x.test", "sent")
    maillog.delivery("QCH002", "b@x.test", "sent")
    maillog.delivery("QCH002", "a@x.test", "sent")  # a third line: both copies are final
    maillog.removed("QCH002")
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert rows_of(db, message) == [("a@x.test", "delivered"), ("a@x.test", "delivered"),
                                    ("b@x.test", "delivered")]
    assert result.counters.outcomes() == {"delivered": 3, "deferred": 1, "bounced": 0}
    assert sorted(p["data"]["ledger_id"] for p in payloads(db, hook)) == ledger_ids(db, message)
    anomalies: Any = db.execute("SELECT count(*) AS n FROM tracker_anomalies WHERE node = %s",
                                (node,)).fetchone()
    assert anomalies["n"] == 0


def test_a_bounced_copy_sends_the_next_line_to_the_other_copy(db, store_conn, node, maillog,
                                                              unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "QCH003", ["a@x.test", "a@x.test"], node=node)
    maillog.queued("QCH003", 2)
    maillog.delivery("QCH003", "a@x.test", "bounced", detail="552 5.2.2 mailbox full")
    maillog.delivery("QCH003", "a@x.test", "sent")
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert rows_of(db, message) == [("a@x.test", "bounced"), ("a@x.test", "delivered")]
    assert result.counters.outcomes() == {"delivered": 1, "deferred": 0, "bounced": 1}


def test_two_messages_in_one_chunk_each_get_their_own_recipients(db, store_conn, node, maillog,
                                                                  unique):
    sender = make_sender(db, unique)
    first = add_message(db, sender, "QCH004", ["a@x.test", "b@x.test"], node=node)
    second = add_message(db, sender, "QCH005", ["a@x.test", "c@x.test"], node=node)
    maillog.queued("QCH004", 2)
    maillog.queued("QCH005", 2)
    maillog.delivery("QCH005", "a@x.test", "sent")
    maillog.delivery("QCH004", "b@x.test", "deferred")
    maillog.delivery("QCH004", "a@x.test", "deferred")
    maillog.delivery("QCH005", "c@x.test", "bounced")
    maillog.delivery("QCH004", "c@x.test", "sent")  # not a recipient of QCH004
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert rows_of(db, first) == [("a@x.test", "deferred"), ("b@x.test", "deferred")]
    assert rows_of(db, second) == [("a@x.test", "delivered"), ("c@x.test", "bounced")]
    assert result.counters.unmatched_events == 1


def test_kept_lines_of_a_row_that_came_later_apply_with_the_next_chunk(db, store_conn, node,
                                                                       maillog, unique):
    """A journaled message: its lines are kept while it has no row; the chunk that reads
    its next line applies them first, against the rows that chunk locked."""
    sender = make_sender(db, unique)
    maillog.queued("QCH006", 2)
    maillog.delivery("QCH006", "a@x.test", "deferred")
    maillog.delivery("QCH006", "a@x.test", "sent")
    tracker = tracker_for(store_conn, node, maillog)
    first = tracker.run_pass()
    assert first.counters.unmatched_events == 3
    message = add_message(db, sender, "QCH006", ["a@x.test", "b@x.test"], node=node,
                          accepted_at=NOW - dt.timedelta(minutes=1))
    maillog.delivery("QCH006", "b@x.test", "sent")
    second = tracker.run_pass()
    assert rows_of(db, message) == [("a@x.test", "delivered"), ("b@x.test", "delivered")]
    assert second.counters.outcomes() == {"delivered": 2, "deferred": 1, "bounced": 0}


def test_apply_event_without_the_chunks_rows_reads_them_per_line(db, store_conn, node, unique):
    """Callers that pass no LedgerRows (one event at a time) match the same copies."""
    sender = make_sender(db, unique)
    message = add_message(db, sender, "QCH007", ["a@x.test", "a@x.test"], node=node)
    line = ("Nov 27 22:39:01 relay1 postfix/smtp[1]: QCH007: to=<a@x.test>, relay=none, "
            "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)")
    with store_conn.transaction():
        for _ in range(3):
            engine.apply_event(store_conn, node, logline.parse_line(line), NOW, line,
                               SuppressionRules())
    assert rows_of(db, message) == [("a@x.test", "delivered"), ("a@x.test", "delivered")]


def test_a_10kb_message_costs_three_statements_and_a_chunk_eight_more(
        db, store_conn, node, maillog, unique, monkeypatch):
    """qmgr's line, the delivery line (outcome and webhook event together) and 'removed':
    one statement each; the delivery line reads nothing (the chunk's row locks did)."""
    sender = make_sender(db, unique)
    webhook(db, sender, "delivered")
    for n in range(20):
        add_message(db, sender, f"QCS{n:03d}", [f"r{n}@x.test"], node=node)
        maillog.queued(f"QCS{n:03d}", 1)
        maillog.delivery(f"QCS{n:03d}", f"r{n}@x.test", "sent")
        maillog.removed(f"QCS{n:03d}")
    tracker = tracker_for(store_conn, node, maillog)
    tracker.resume()
    statements = []
    real = psycopg.Connection.execute

    def counted(self: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
        # The tracker's connection only: the class is patched, and other threads of this
        # worker (a milter runtime's policy poll) execute statements meanwhile.
        if self is store_conn:
            statements.append(query)
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", counted)
    result = tracker.run_pass()
    monkeypatch.undo()
    assert result.counters.delivered == 20
    # Per chunk: position row and its lock, row locks, kept lines, owners, new position (6;
    # begin and commit are not execute calls).
    assert len(statements) == 20 * 3 + 6


def test_a_pipelined_delivery_whose_row_was_final_rolls_the_chunk_back_and_applies_it_again(
        db, store_conn, node, maillog, unique, monkeypatch, caplog):
    """The chunk's row locks read b@ as queued while it was delivered already (a stale read,
    which the locks exclude; simulated here): the pipelined statement for b@ updates nothing,
    which settle() finds before the commit. The chunk is rolled back and applied again
    without the pipeline: counters, events and the position come out as if read right."""
    sender = make_sender(db, unique)
    hook = webhook(db, sender, "delivered")
    message = add_message(db, sender, "QCH008", ["a@x.test", "b@x.test", "c@x.test"],
                          node=node)
    a, b, c = ledger_ids(db, message)
    db.execute("UPDATE ledger SET state = 'delivered' WHERE id = %s", (b,))
    real = engine.tracking.lock_queue_rows

    def stale(*args: Any) -> list[Any]:
        return [copy if copy.state != "delivered" else dataclasses.replace(copy, state="queued")
                for copy in real(*args)]

    monkeypatch.setattr(engine.tracking, "lock_queue_rows", stale)
    maillog.queued("QCH008", 3)
    for recipient in ("a@x.test", "b@x.test", "c@x.test"):
        maillog.delivery("QCH008", recipient, "sent")
    maillog.removed("QCH008")
    tracker = tracker_for(store_conn, node, maillog)
    with caplog.at_level(logging.WARNING, logger="txrelay.tracker"):
        result = tracker.run_pass()
    # Only the tracker's records: a milter of an earlier test in this worker may still log.
    assert [r.getMessage().split(":")[0] for r in caplog.records
            if r.name.startswith("txrelay.tracker")] == [
        f"event=pipeline_mismatch node={node} path={maillog.path}"]
    assert result.counters.outcomes() == {"delivered": 2, "deferred": 0, "bounced": 0}
    assert result.counters.lines_read == 5
    assert rows_of(db, message) == [("a@x.test", "delivered"), ("b@x.test", "delivered"),
                                    ("c@x.test", "delivered")]
    assert [p["data"]["ledger_id"] for p in payloads(db, hook)] == [a, c]
    position: Any = db.execute("SELECT lines_read FROM tracker_positions WHERE node = %s",
                               (node,)).fetchone()
    assert position["lines_read"] == 5
    again = tracker.run_pass()
    assert again.counters == engine.Counters()
    assert [p["data"]["ledger_id"] for p in payloads(db, hook)] == [a, c]


def test_a_bounce_after_pipelined_deliveries_reads_its_own_result_in_log_order(
        db, store_conn, node, maillog, unique):
    """A bounce (its row read and locked, its UPDATE's rowcount read, suppression decided)
    waits for the delivery statements sent before it: d@, bounced already by its DSN, is
    not counted again. The events are written in the log's order."""
    sender = make_sender(db, unique)
    hook = webhook(db, sender, "delivered", "bounced", "suppressed")
    message = add_message(db, sender, "QCH009",
                          ["a@x.test", "b@x.test", "c@x.test", "d@x.test"], node=node)
    a, b, c, d = ledger_ids(db, message)
    db.execute("UPDATE ledger SET state = 'bounced' WHERE id = %s", (d,))
    maillog.queued("QCH009", 4)
    maillog.delivery("QCH009", "a@x.test", "sent")
    maillog.delivery("QCH009", "b@x.test", "bounced", detail="550 5.1.1 no such user")
    maillog.delivery("QCH009", "c@x.test", "sent")
    maillog.delivery("QCH009", "d@x.test", "bounced", detail="550 5.1.1 no such user")
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert result.counters.outcomes() == {"delivered": 2, "deferred": 0, "bounced": 1}
    assert rows_of(db, message) == [("a@x.test", "delivered"), ("b@x.test", "bounced"),
                                    ("c@x.test", "delivered"), ("d@x.test", "bounced")]
    assert [(p["event"], p["data"]["ledger_id"]) for p in payloads(db, hook)] == [
        ("delivered", a), ("bounced", b), ("suppressed", b), ("delivered", c)]
    suppressed: Any = db.execute("SELECT count(*) AS n FROM suppressions WHERE account_id = %s "
                                 "AND address = 'b@x.test'", (sender.account_id,)).fetchone()
    assert suppressed["n"] == 1
