"""The ledger's writers meeting on the same rows: each waits for the other, none deadlocks.

Each test makes two writers wait behind a third transaction on the row or block where their
lock orders used to cross, then lets the third go: with two orders PostgreSQL picks a
victim ("deadlock detected"); with one order the second writer simply waits its turn.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.store.tracking_fixtures import MailLog, add_message, make_sender, states
from txrelay.clock import FixedClock
from txrelay.config import Config
from txrelay.store import database, ledger, lifecycle, tracking
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture()
def connect(config: Config) -> Iterator[Callable[..., psycopg.Connection]]:
    opened: list[psycopg.Connection] = []

    def make(autocommit: bool = True) -> psycopg.Connection:
        connection = database.connect(config.database, autocommit=autocommit)
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        connection.close()


class Writer(threading.Thread):
    """One writer on its own connection; what it raised is kept for the test to assert."""

    def __init__(self, conn: psycopg.Connection, work: Callable[[psycopg.Connection], object]):
        super().__init__(daemon=True)
        self.conn, self.work = conn, work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work(self.conn)
        except psycopg.Error as error:
            self.error = error


def deadlocks(db: psycopg.Connection) -> int:
    row = db.execute("SELECT deadlocks FROM pg_stat_database "
                     "WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row["deadlocks"])  # type: ignore[call-overload]


def wait_until_blocked(db: psycopg.Connection, writer: Writer) -> None:
    """Until the writer's backend waits for a lock (it is queued behind the holder)."""
    pid = writer.conn.info.backend_pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                         (pid,)).fetchone()
        if row is not None and row["wait_event_type"] == "Lock":  # type: ignore[call-overload]
            return
        if not writer.is_alive():
            raise AssertionError(f"the writer ended before it waited: {writer.error!r}")
        time.sleep(0.02)
    raise AssertionError("the writer never waited for the held lock")


def finish(*writers: Writer) -> None:
    for writer in writers:
        writer.join(timeout=30)
        assert not writer.is_alive()
    errors = [w.error for w in writers if w.error is not None]
    assert errors == []


def test_tracker_chunk_and_settler_meeting_on_pending_rows_do_not_deadlock(
        db, connect, unique, tmp_path: Path):
    # The tracker applies a chunk in log order (here B's rows, then A's); the settler locks
    # the account's pending rows in id order (A's, then B's).
    node = f"node-{unique}"
    sender = make_sender(db, unique)
    first = add_message(db, sender, "LOA111", ["a@x.test"], node=node, billing="pending")
    second = add_message(db, sender, "LOB222", ["b@x.test"], node=node, billing="pending")
    maillog = MailLog(tmp_path / "postfix.log")
    maillog.queued("LOB222", 1)
    maillog.queued("LOA111", 1)
    tracker = Tracker(connect(), node, LogFollower(maillog.path, rotation_grace=0.0),
                      FixedClock(NOW))
    before = deadlocks(db)

    holder = connect(autocommit=False)
    holder.execute("SELECT id FROM ledger WHERE message_id = %s FOR UPDATE", (first,))
    settler = Writer(connect(), lambda conn: ledger.settle(conn, sender.account_id))
    settler.start()
    wait_until_blocked(db, settler)
    applying = Writer(tracker.conn, lambda conn: tracker.run_pass())
    applying.start()
    wait_until_blocked(db, applying)
    holder.commit()
    finish(settler, applying)

    assert deadlocks(db) == before
    assert states(db, first) == {"a@x.test": "queued"}
    assert states(db, second) == {"b@x.test": "queued"}
    billed = db.execute("SELECT billing FROM ledger WHERE message_id = ANY(%s)",
                        ([first, second],)).fetchall()
    assert [r["billing"] for r in billed] == ["quota", "quota"]


def test_voiding_and_quota_tick_meeting_on_rows_and_blocks_do_not_deadlock(
        db, connect, unique):
    # The tick settles account 1 (its block locked until the tick commits), then wants
    # account 2's pending rows; voiding holds those rows and gives units back to account
    # 1's block.
    node = f"node-{unique}"
    one = make_sender(db, f"{unique}a", kind="booked", booked_at=NOW)
    two = make_sender(db, f"{unique}b", kind="booked", booked_at=NOW)
    accepted = NOW - dt.timedelta(minutes=30)
    add_message(db, one, "LOC333", ["c@x.test"], node=node, billing="pending",
                accepted_at=accepted)
    add_message(db, one, "LOD444", ["d@x.test"], node=node, accepted_at=accepted)
    add_message(db, two, "LOE555", ["e@x.test"], node=node, billing="pending",
                accepted_at=accepted)
    for account in (one, two):
        db.execute("INSERT INTO quota_plans (account_id, block_amount, next_renewal_at) "
                   "VALUES (%s, 1000, %s)", (account.account_id, NOW))
    db.execute("UPDATE messages m SET queued_at = %s FROM ledger l "
               "WHERE l.message_id = m.id AND l.recipient = 'c@x.test' AND m.node = %s",
               (NOW, node))
    before = deadlocks(db)

    holder = connect(autocommit=False)
    holder.execute("SELECT id FROM quota_blocks WHERE id = %s FOR UPDATE", (one.block_id,))

    def tick(conn: psycopg.Connection) -> None:
        with conn.transaction():
            lifecycle.renew_plans(conn, NOW, dt.timedelta(days=30),
                                  [one.account_id, two.account_id])

    def void(conn: psycopg.Connection) -> None:
        with conn.transaction():
            tracking.void_unconfirmed(conn, node, NOW - dt.timedelta(minutes=5), NOW)

    ticking = Writer(connect(), tick)
    ticking.start()
    wait_until_blocked(db, ticking)
    voiding = Writer(connect(), void)
    voiding.start()
    wait_until_blocked(db, voiding)
    holder.commit()
    finish(ticking, voiding)

    assert deadlocks(db) == before
    rows = db.execute("SELECT recipient, billing, state FROM ledger l JOIN messages m "
                      "ON m.id = l.message_id WHERE m.node = %s ORDER BY recipient",
                      (node,)).fetchall()
    assert [(r["recipient"], r["billing"], r["state"]) for r in rows] == [
        ("c@x.test", "quota", "accepted"), ("d@x.test", "void", "voided"),
        ("e@x.test", "quota", "accepted")]  # the tick locked it first: settled, not voided
