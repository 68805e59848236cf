"""The tracker against a log file the test writes: outcomes, exactly once across split
lines, rotation, restarts and crashes, voiding, and Postfix's own mail never matched."""

from __future__ import annotations

import datetime as dt
import os

import psycopg
import pytest
import redis

from tests.store.tracking_fixtures import MailLog, add_message, ledger_row, make_sender, states
from txrelay import metrics
from txrelay.clock import FixedClock
from txrelay.store import database, tracking
from txrelay.store.keys import AccountKeys
from txrelay.tracker import engine
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def tracker_for(store_conn: psycopg.Connection, node: str, maillog: MailLog,
                clock: FixedClock | None = None) -> Tracker:
    return Tracker(store_conn, node, LogFollower(maillog.path, rotation_grace=0.0),
                   clock or FixedClock(NOW))


def lines_read(db: psycopg.Connection, node: str) -> int:
    row = db.execute("SELECT lines_read FROM tracker_positions WHERE node = %s",
                     (node,)).fetchone()
    return 0 if row is None else int(row["lines_read"])  # type: ignore[call-overload]


def test_queued_then_sent_deferred_bounced_per_recipient(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q1AAAA", ["ok@x.test", "defer@x.test", "bounce@x.test"],
                          node=node)
    tracker = tracker_for(store_conn, node, maillog)
    maillog.queued("Q1AAAA", 3)
    tracker.run_pass()
    assert set(states(db, message).values()) == {"queued"}
    maillog.delivery("Q1AAAA", "ok@x.test", "sent")
    maillog.delivery("Q1AAAA", "defer@x.test", "deferred", detail="450 4.2.0 try later")
    maillog.delivery("Q1AAAA", "bounce@x.test", "bounced", detail="550 5.1.1 no such user")
    tracker.run_pass()
    assert states(db, message) == {"ok@x.test": "delivered", "defer@x.test": "deferred",
                                   "bounce@x.test": "bounced"}
    bounced = ledger_row(db, message, "bounce@x.test")
    assert bounced["dsn"] == "5.1.1"
    assert "550 5.1.1 no such user" in bounced["last_event"]
    assert "try later" in ledger_row(db, message, "defer@x.test")["last_event"]
    queued_at = db.execute("SELECT queued_at FROM messages WHERE id = %s",
                           (message,)).fetchone()["queued_at"]
    assert queued_at == NOW


def test_delivered_and_bounced_are_final(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q2AAAA", ["a@x.test", "b@x.test"], node=node)
    maillog.queued("Q2AAAA", 2)
    maillog.delivery("Q2AAAA", "a@x.test", "sent")
    maillog.delivery("Q2AAAA", "b@x.test", "bounced")
    maillog.delivery("Q2AAAA", "a@x.test", "deferred")
    maillog.delivery("Q2AAAA", "b@x.test", "sent")
    tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, message) == {"a@x.test": "delivered", "b@x.test": "bounced"}


def outcomes_counted() -> dict[str, float]:
    return {state: metrics.REGISTRY.get_sample_value("txrelay_tracker_outcomes_total",
                                                     {"state": state}) or 0.0
            for state in ("delivered", "deferred", "bounced")}


def test_outcomes_are_counted_once_by_state_for_the_metrics(db, store_conn, node, maillog, unique):
    """txrelay_tracker_outcomes_total: each deferral, a bounce once however often it is read,
    and a delivery later reported bounced in both states (as the ledger row went)."""
    sender = make_sender(db, unique)
    add_message(db, sender, "Q9AAAA", ["a@x.test", "b@x.test", "c@x.test"], node=node)
    before = outcomes_counted()
    maillog.queued("Q9AAAA", 3)
    maillog.delivery("Q9AAAA", "a@x.test", "deferred")
    maillog.delivery("Q9AAAA", "a@x.test", "deferred", detail="451 4.7.1 later still")
    maillog.delivery("Q9AAAA", "a@x.test", "sent")
    maillog.delivery("Q9AAAA", "b@x.test", "bounced")
    maillog.delivery("Q9AAAA", "b@x.test", "bounced")
    maillog.delivery("Q9AAAA", "c@x.test", "sent")
    maillog.delivery("Q9AAAA", "c@x.test", "bounced")
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert result.counters.outcomes() == {"delivered": 2, "deferred": 2, "bounced": 2}
    after = outcomes_counted()
    assert {state: after[state] - before[state] for state in after} == {
        "delivered": 2.0, "deferred": 2.0, "bounced": 2.0}


def test_deferred_then_sent_ends_delivered(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q3AAAA", ["a@x.test"], node=node)
    maillog.queued("Q3AAAA", 1)
    maillog.delivery("Q3AAAA", "a@x.test", "deferred")
    maillog.queued("Q3AAAA", 1)  # qmgr logs the line again on each retry
    maillog.delivery("Q3AAAA", "a@x.test", "sent")
    tracker = tracker_for(store_conn, node, maillog)
    result = tracker.run_pass()
    assert states(db, message) == {"a@x.test": "delivered"}
    assert result.counters.unmatched_events == 0


def test_a_line_split_across_reads_is_applied_once_complete(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q4AAAA", ["a@x.test"], node=node)
    maillog.queued("Q4AAAA", 1)
    full = ("Nov 27 22:39:01 relay1 postfix/smtp[1]: Q4AAAA: to=<a@x.test>, relay=none, "
            "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)\n")
    maillog.write(full[:60])
    tracker = tracker_for(store_conn, node, maillog)
    tracker.run_pass()
    assert states(db, message) == {"a@x.test": "queued"}
    assert lines_read(db, node) == 1
    maillog.write(full[60:])
    tracker.run_pass()
    assert states(db, message) == {"a@x.test": "delivered"}
    assert lines_read(db, node) == 2


def test_rotation_by_rename_and_new_file_loses_and_repeats_nothing(db, store_conn, node, maillog,
                                                                    unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q5AAAA", ["a@x.test", "b@x.test"], node=node)
    tracker = tracker_for(store_conn, node, maillog)
    maillog.queued("Q5AAAA", 2)
    tracker.run_pass()
    maillog.delivery("Q5AAAA", "a@x.test", "sent")  # written just before the rename
    os.rename(maillog.path, str(maillog.path) + ".20260310-120000")
    maillog.path.touch()
    maillog.delivery("Q5AAAA", "b@x.test", "bounced")
    tracker.run_pass()
    tracker.run_pass()
    assert states(db, message) == {"a@x.test": "delivered", "b@x.test": "bounced"}
    assert lines_read(db, node) == 3


def test_restart_resumes_from_the_stored_position(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q6AAAA", ["a@x.test"], node=node)
    maillog.queued("Q6AAAA", 2)  # a mismatch: recorded once per line read
    tracker_for(store_conn, node, maillog).run_pass()
    maillog.delivery("Q6AAAA", "a@x.test", "sent")
    restarted = tracker_for(store_conn, node, maillog)
    restarted.run_pass()
    restarted.run_pass()
    assert states(db, message) == {"a@x.test": "delivered"}
    assert lines_read(db, node) == 2
    anomalies = db.execute("SELECT count(*) AS n FROM tracker_anomalies WHERE node = %s AND "
                           "kind = 'nrcpt_mismatch'", (node,)).fetchone()["n"]
    assert anomalies == 1


def test_restart_after_rotation_while_down_drains_the_rotated_file_first(db, store_conn, node,
                                                                         maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q7AAAA", ["a@x.test", "b@x.test"], node=node)
    maillog.queued("Q7AAAA", 2)
    first = tracker_for(store_conn, node, maillog)
    first.run_pass()
    first.close()
    maillog.delivery("Q7AAAA", "a@x.test", "sent")
    os.rename(maillog.path, str(maillog.path) + ".20260310-120500")
    maillog.path.touch()
    maillog.delivery("Q7AAAA", "b@x.test", "sent")
    tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, message) == {"a@x.test": "delivered", "b@x.test": "delivered"}
    assert lines_read(db, node) == 3


def test_a_failed_transaction_is_retried_and_applied_once(db, store_conn, node, maillog, unique,
                                                          monkeypatch):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "Q8AAAA", ["a@x.test"], node=node)
    maillog.queued("Q8AAAA", 2)
    maillog.delivery("Q8AAAA", "a@x.test", "sent")
    real = engine.apply_event
    calls = {"n": 0}

    def crash_on_second_line(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "apply_event", crash_on_second_line)
    tracker = tracker_for(store_conn, node, maillog)
    with pytest.raises(RuntimeError):
        tracker.run_pass()
    assert states(db, message) == {"a@x.test": "accepted"}  # the whole chunk rolled back
    assert lines_read(db, node) == 0
    monkeypatch.setattr(engine, "apply_event", real)
    tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, message) == {"a@x.test": "delivered"}
    assert lines_read(db, node) == 2
    mismatches = db.execute("SELECT count(*) AS n FROM tracker_anomalies WHERE node = %s",
                            (node,)).fetchone()["n"]
    assert mismatches == 1


def test_two_trackers_on_one_position_never_apply_a_line_twice(db, store_conn, config, node,
                                                               maillog, unique):
    sender = make_sender(db, unique)
    add_message(db, sender, "Q9AAAA", ["a@x.test"], node=node)
    maillog.queued("Q9AAAA", 3)
    other = database.connect(config.database, autocommit=True)
    try:
        first, second = tracker_for(store_conn, node, maillog), tracker_for(other, node, maillog)
        first.resume()
        second.resume()  # both start at the beginning of the log
        first.run_pass()
        second.run_pass()  # finds the position moved, resumes from it, applies nothing
        maillog.delivery("Q9AAAA", "a@x.test", "sent")
        second.run_pass()
        first.run_pass()
    finally:
        other.close()
    assert lines_read(db, node) == 2
    assert db.execute("SELECT count(*) AS n FROM tracker_anomalies WHERE node = %s",
                      (node,)).fetchone()["n"] == 1


def test_hostile_quoted_address_cannot_fake_a_delivery(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    hostile = '"x, status=sent (ok)"@example.com'
    message = add_message(db, sender, "QAAAAA", [hostile, "victim@example.com"], node=node)
    maillog.queued("QAAAAA", 2)
    maillog.delivery("QAAAAA", hostile, "deferred", detail="450 greylisted")
    tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, message) == {hostile: "deferred", "victim@example.com": "queued"}


def test_postfix_bounce_notification_reusing_nothing_is_not_matched(db, store_conn, node, maillog,
                                                                    unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "QBAAAA", ["bounce@x.test"], node=node)
    maillog.queued("QBAAAA", 1)
    maillog.delivery("QBAAAA", "bounce@x.test", "bounced")
    maillog.line("bounce", "QBAAAA: sender non-delivery notification: QCAAAA")
    maillog.removed("QBAAAA")
    maillog.queued("QCAAAA", 1)
    maillog.line("smtp", "QCAAAA: to=<shop@acme.example>, relay=none, delay=0, "
                         "delays=0/0/0/0, dsn=2.0.0, status=sent (ok)")
    maillog.removed("QCAAAA")
    # The notification's queue id reused by Postfix: the customer message is removed, so
    # the id no longer belongs to it.
    maillog.queued("QBAAAA", 1)
    maillog.line("smtp", "QBAAAA: to=<bounce@x.test>, relay=none, delay=0, "
                         "delays=0/0/0/0, dsn=2.0.0, status=sent (ok)")
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, message) == {"bounce@x.test": "bounced"}
    assert result.counters.unmatched_events == 4
    billed = db.execute("SELECT count(*) AS n FROM ledger WHERE account_id = %s",
                        (sender.account_id,)).fetchone()["n"]
    assert billed == 1


def test_queue_ids_are_per_node(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    mine = add_message(db, sender, "QDAAAA", ["a@x.test"], node=node)
    theirs = add_message(db, sender, "QDAAAA", ["a@x.test"], node=node + "-other")
    maillog.queued("QDAAAA", 1)
    maillog.delivery("QDAAAA", "a@x.test", "sent")
    tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, mine) == {"a@x.test": "delivered"}
    assert states(db, theirs) == {"a@x.test": "accepted"}


def test_unknown_lines_are_counted_and_skipped(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "QEAAAA", ["a@x.test"], node=node)
    maillog.write("this is not a log line\n")
    maillog.line("smtp", "QEAAAA: to=<a@x.test>, status=sent (no structure)")
    maillog.write("\x00\xff binary junk\n")
    maillog.queued("QEAAAA", 1)
    result = tracker_for(store_conn, node, maillog).run_pass()
    assert result.counters.unparsed_lines == 3
    assert states(db, message) == {"a@x.test": "queued"}


def test_message_expiry_bounces_what_is_still_pending(db, store_conn, node, maillog, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "QFAAAA", ["a@x.test", "b@x.test"], node=node)
    maillog.queued("QFAAAA", 2)
    maillog.delivery("QFAAAA", "a@x.test", "sent")
    maillog.delivery("QFAAAA", "b@x.test", "deferred", dsn="4.4.1", detail="timed out")
    maillog.line("qmgr", "QFAAAA: from=<shop@acme.example>, status=expired, returned to "
                         "sender")
    tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, message) == {"a@x.test": "delivered", "b@x.test": "bounced"}
    assert ledger_row(db, message, "b@x.test")["dsn"] == "4.4.1"


def test_removed_with_recipients_still_queued_is_an_anomaly_not_a_guess(db, store_conn, node,
                                                                         maillog, unique):
    """Postfix removes a queue file only when every recipient is done: a row still queued
    then lost its delivery line (Postfix or its logger killed). It stays queued, and the
    tracker says so in tracker_anomalies; a normal removal says nothing."""
    sender = make_sender(db, unique)
    lost = add_message(db, sender, "QRAAAA", ["a@x.test", "b@x.test"], node=node)
    normal = add_message(db, sender, "QRBBBB", ["c@x.test"], node=node)
    maillog.queued("QRAAAA", 2)
    maillog.delivery("QRAAAA", "a@x.test", "sent")
    maillog.removed("QRAAAA")  # b@x.test's line never reached the log
    maillog.queued("QRBBBB", 1)
    maillog.delivery("QRBBBB", "c@x.test", "sent")
    maillog.removed("QRBBBB")
    tracker_for(store_conn, node, maillog).run_pass()
    assert states(db, lost) == {"a@x.test": "delivered", "b@x.test": "queued"}
    assert states(db, normal) == {"c@x.test": "delivered"}
    anomalies = db.execute("SELECT queue_id, kind, detail FROM tracker_anomalies"
                           " WHERE node = %s", (node,)).fetchall()
    assert [(a["queue_id"], a["kind"]) for a in anomalies] == [
        ("QRAAAA", "removed_without_outcome")]
    assert "1 recipients still queued" in anomalies[0]["detail"]


def test_unconfirmed_rows_are_voided_and_their_quota_given_back(db, store_conn, node, unique,
                                                                config, redis_client):
    sender = make_sender(db, unique, quota=100)
    accepted = NOW - dt.timedelta(seconds=config.tracker.confirm_timeout_seconds + 5)
    stale = add_message(db, sender, "QGAAAA", ["a@x.test", "b@x.test"], node=node,
                        accepted_at=accepted)
    fresh = add_message(db, sender, "QHAAAA", ["c@x.test"], node=node, accepted_at=NOW)
    balance_key = AccountKeys(config.redis.key_prefix, sender.account_id).balance
    redis_client.set(balance_key, 97)
    cutoff = NOW - dt.timedelta(seconds=config.tracker.confirm_timeout_seconds)
    with store_conn.transaction():
        voided = tracking.void_unconfirmed(store_conn, node, cutoff, NOW)
    from txrelay.store.lifecycle import apply_credits

    apply_credits(redis.Redis.from_url(config.redis.url), config.redis.key_prefix,
                  voided.credits)
    assert voided.rows == 2
    assert states(db, stale) == {"a@x.test": "voided", "b@x.test": "voided"}
    assert states(db, fresh) == {"c@x.test": "accepted"}
    row = ledger_row(db, stale, "a@x.test")
    assert row["billing"] == "void" and row["quota_block_id"] is None
    used = db.execute("SELECT used FROM quota_blocks WHERE id = %s",
                      (sender.block_id,)).fetchone()["used"]
    assert used == 1
    assert int(redis_client.get(balance_key)) == 99



@pytest.mark.parametrize("keep", ["nothing", "first_line"])
def test_a_log_cut_shorter_than_the_stored_offset_is_read_on_from_its_start(
        db, store_conn, node, maillog, unique, keep):
    """Truncated to nothing (copytruncate, or a new log that got the old one's inode number:
    another first line) or to its first line (the same file to the tracker): the stored
    offset is past the end. The tracker used to find its position 'moved' forever."""
    sender = make_sender(db, unique)
    first = add_message(db, sender, "Q9CUT1", ["a@x.test"], node=node)
    tracker = tracker_for(store_conn, node, maillog)
    maillog.queued("Q9CUT1", 1)
    maillog.delivery("Q9CUT1", "a@x.test", "sent", detail="250 ok " + "x" * 400)
    tracker.run_pass()
    assert states(db, first) == {"a@x.test": "delivered"}
    tracker.close()

    first_line = maillog.path.read_bytes().split(b"\n", 1)[0] + b"\n"
    os.truncate(maillog.path, 0 if keep == "nothing" else len(first_line))
    second = add_message(db, sender, "Q9CUT2", ["b@x.test"], node=node)
    maillog.queued("Q9CUT2", 1)
    maillog.delivery("Q9CUT2", "b@x.test", "sent")
    result = tracker_for(store_conn, node, maillog).run_pass(max_chunks=5)
    assert result.caught_up
    assert states(db, second) == {"b@x.test": "delivered"}
