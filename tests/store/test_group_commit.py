"""The ledger's group commit (store/group_commit.py) against the real PostgreSQL: messages
queued while a COMMIT is in flight share the next transaction, none is answered before that
COMMIT, a message's own error fails it alone (the others are then written one by one),
PostgreSQL lost mid-batch journals the whole batch (replayed once), and a stuck writer
becomes the journal after the bounded wait."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.processes import wait_until
from tests.store.builders import Tenant
from tests.store.test_ledger import message
from txrelay.clock import SystemClock
from txrelay.errors import ServiceUnavailable
from txrelay.store.journal import Journal
from txrelay.store.ledger import AcceptedMessage, Recorded
from txrelay.store.recording import PostgresLedger


@contextmanager
def connection_row_locked(database_url: str, tenant: Tenant) -> Iterator[None]:
    """The tenant's connection row locked (FOR UPDATE) by another session for the block: a
    record of this connection waits (it writes the connection's last use)."""
    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1 FROM connections WHERE id = %s FOR UPDATE",
                      (tenant.connection_id,))
        yield
        other.rollback()


def writer_waiting(db: psycopg.Connection, waits: int = 1) -> int:
    """The backend pid of the ledger writer once it waits for a row lock."""
    found: list[int] = []

    def waiting() -> bool:
        rows: Any = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%%txrelay_record_acceptance%%'"
        ).fetchall()
        found[:] = [r["pid"] for r in rows]
        return len(found) == waits

    wait_until(waiting, 15, "the ledger writer waiting for the connection row")
    return found[0]


class Sender:
    """ledger.record on its own thread; what it returned (or raised) and when."""

    def __init__(self, ledger: PostgresLedger, accepted: AcceptedMessage,
                 check: Callable[[AcceptedMessage], bool] = lambda m: True) -> None:
        self.accepted = accepted
        self.result: Recorded | BaseException | None = None
        self.committed_at_return: bool | None = None
        self._thread = threading.Thread(target=self._run, args=(ledger, check))
        self._thread.start()

    def _run(self, ledger: PostgresLedger, check: Callable[[AcceptedMessage], bool]) -> None:
        try:
            self.result = ledger.record(self.accepted)
        except Exception as exc:  # noqa: BLE001 - asserted by the test
            self.result = exc
        self.committed_at_return = check(self.accepted)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> Recorded | BaseException | None:
        self._thread.join(30)
        assert self.done()
        return self.result


def committed(database_url: str) -> Callable[[AcceptedMessage], bool]:
    """Whether the message's row is visible to another session (committed)."""
    def check(accepted: AcceptedMessage) -> bool:
        with psycopg.connect(database_url) as other:
            return other.execute("SELECT 1 FROM messages WHERE txn_id = %s",
                                 (accepted.txn_id,)).fetchone() is not None
    return check


def transactions_of(db: psycopg.Connection, txn_ids: list[uuid.UUID]) -> int:
    """How many transactions wrote these messages (rows of one transaction share xmin)."""
    row: Any = db.execute("SELECT count(DISTINCT xmin::text) AS n FROM messages "
                          "WHERE txn_id = ANY(%s)", (txn_ids,)).fetchone()
    return int(row["n"])


def rows_of(db: psycopg.Connection, accepted: AcceptedMessage) -> tuple[int, int]:
    row: Any = db.execute(
        "SELECT (SELECT count(*) FROM messages WHERE txn_id = %(t)s) AS m, "
        "(SELECT count(*) FROM ledger l JOIN messages m ON m.id = l.message_id "
        "  WHERE m.txn_id = %(t)s) AS l", {"t": accepted.txn_id}).fetchone()
    return int(row["m"]), int(row["l"])


@pytest.fixture()
def ledger(pool: Any) -> Iterator[PostgresLedger]:
    opened = PostgresLedger(pool, SystemClock(), group_commit=True)
    yield opened
    opened.close()


def test_messages_queued_during_a_commit_share_the_next_one_and_none_is_answered_before(
        ledger: PostgresLedger, database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    check = committed(database_url)
    with connection_row_locked(database_url, tenant):
        first = Sender(ledger, message(tenant, ["first@x.example"]), check)
        writer_waiting(db)  # the first batch is in flight, blocked
        queued = [Sender(ledger, message(tenant, [f"q{n}@x.example", f"r{n}@x.example"]), check)
                  for n in range(5)]
        time.sleep(0.5)
        assert not first.done() and not any(s.done() for s in queued)
    results = [s.join() for s in [first, *queued]]
    assert all(isinstance(r, Recorded) and r.message_row_id for r in results), results
    assert all(s.committed_at_return for s in [first, *queued])
    assert transactions_of(db, [s.accepted.txn_id for s in queued]) == 1
    assert all(rows_of(db, s.accepted) == (1, 2) for s in queued)
    allocations = [a.recipient for a in results[3].allocations]  # type: ignore[union-attr]
    assert allocations == ["q2@x.example", "r2@x.example"]  # each its own rows back


def test_a_message_failing_on_its_own_fails_alone_and_its_batch_commits(
        ledger: PostgresLedger, database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    with connection_row_locked(database_url, tenant):
        first = Sender(ledger, message(tenant, ["first@x.example"]))
        writer_waiting(db)
        good = [Sender(ledger, message(tenant, [f"g{n}@x.example"])) for n in range(2)]
        bad = Sender(ledger, message(tenant, ["bad@x.example"], connection_id=-1))
        more = Sender(ledger, message(tenant, ["g2@x.example"]))
        time.sleep(0.5)
    assert isinstance(first.join(), Recorded)
    failed = bad.join()
    assert isinstance(failed, ServiceUnavailable) and "PostgreSQL" in str(failed)
    for sender in [*good, more]:
        assert isinstance(sender.join(), Recorded)
        assert rows_of(db, sender.accepted) == (1, 1)
    assert rows_of(db, bad.accepted) == (0, 0)


def test_postgresql_lost_during_a_batch_journals_every_message_of_it_once(
        pool: Any, database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant], tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", database_url, 1000)
    ledger = PostgresLedger(pool, SystemClock(), journal, group_commit=True)
    one, two = tenant_factory(), tenant_factory()
    try:
        with connection_row_locked(database_url, two):
            with connection_row_locked(database_url, one):
                first = Sender(ledger, message(one, ["first@x.example"]))
                writer_waiting(db)
                batch = [Sender(ledger, message(two, [f"b{n}@x.example"])) for n in range(3)]
                time.sleep(0.5)
            assert isinstance(first.join(), Recorded)
            pid = writer_waiting(db)  # the batch of three, blocked on the second row
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            results = [s.join() for s in batch]
        assert all(isinstance(r, Recorded) and r.journaled == 1 for r in results), results
        assert journal.backlog() == 3
        assert all(rows_of(db, s.accepted) == (0, 0) for s in batch)
        assert ledger.replay_journal() == 3
        assert ledger.replay_journal() == 0
        assert all(rows_of(db, s.accepted) == (1, 1) for s in batch)
    finally:
        ledger.close()


def test_a_stuck_writer_becomes_the_journal_after_the_bounded_wait_and_is_recorded_once(
        pool: Any, database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant], tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", database_url, 1000)
    ledger = PostgresLedger(pool, SystemClock(), journal, commit_wait=1.0,
                            group_commit=True)
    # Without a journal, the same wait is a 451.
    bare = PostgresLedger(pool, SystemClock(), commit_wait=1.0, group_commit=True)
    tenant = tenant_factory()
    try:
        with connection_row_locked(database_url, tenant):
            stuck = Sender(ledger, message(tenant, ["stuck@x.example"]))
            queued = Sender(ledger, message(tenant, ["queued@x.example"]))
            refused = Sender(bare, message(tenant, ["refused@x.example"]))
            started = time.monotonic()
            for sender in (stuck, queued):
                result = sender.join()
                assert isinstance(result, Recorded) and result.journaled == 1, result
            assert isinstance(refused.join(), ServiceUnavailable)
            assert time.monotonic() - started < 5
            assert journal.backlog() == 2
        ledger.replay_journal()
        # The stuck one's COMMIT came after all; the queued one was abandoned, never
        # written by the writer: the journal recorded it. Each exactly once.
        wait_until(lambda: rows_of(db, stuck.accepted) == (1, 1), 15, "the late COMMIT")
        assert rows_of(db, queued.accepted) == (1, 1)
        assert journal.backlog() == 0
    finally:
        ledger.close()
        bare.close()


def test_close_drains_what_is_queued_then_writes_each_message_alone(
        pool: Any, database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    ledger = PostgresLedger(pool, SystemClock(), group_commit=True)
    tenant = tenant_factory()
    with connection_row_locked(database_url, tenant):
        first = Sender(ledger, message(tenant, ["first@x.example"]))
        writer_waiting(db)
        queued = Sender(ledger, message(tenant, ["queued@x.example"]))
        time.sleep(0.3)
        closing = threading.Thread(target=ledger.close)
        closing.start()
        time.sleep(0.3)
    closing.join(30)
    assert isinstance(first.join(), Recorded) and isinstance(queued.join(), Recorded)
    after = ledger.record(message(tenant, ["after@x.example"]))
    assert after.message_row_id is not None
    assert rows_of(db, queued.accepted) == (1, 1)
