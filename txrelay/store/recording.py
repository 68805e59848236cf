"""The milter's ledger: accepted messages recorded in PostgreSQL, or in the local journal
while PostgreSQL is away (replayed when it answers again)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Protocol

import psycopg
import psycopg_pool

from txrelay.clock import Clock
from txrelay.errors import ServiceUnavailable
from txrelay.policy.billing import parse_period
from txrelay.store.group_commit import UNREACHABLE, Failed, GroupCommitter
from txrelay.store.journal import Journal, JournalEntry
from txrelay.store.ledger import (
    AcceptedMessage,
    Allocation,
    Recorded,
    overage_used,
    record_acceptance,
    remaining_quota,
)

log = logging.getLogger("txrelay.milter")
# How long an end of message waits for its batch's COMMIT by default, in seconds (the
# milter passes a multiple of [database] timeout_ms).
COMMIT_WAIT = 9.0


class LedgerUnavailable(ServiceUnavailable):
    """PostgreSQL did not answer in time, or the pool had no connection to give."""


class Ledger(Protocol):
    """Where an accepted message is recorded, and what an account has left of its quota.

    The milter records each message it accepts at end of message (the source of truth for
    billing) and reads an account's remaining quota when the live balance must be loaded.
    Failures are ServiceUnavailable (LedgerUnavailable when the ledger itself did not
    answer): the milter then answers 451."""

    def record(self, message: AcceptedMessage) -> Recorded:
        """Record the message and its recipients; recording a txn_id again changes nothing."""
        ...

    def remaining_quota(self, account_id: int) -> int:
        """Units left in the account's live blocks once its recorded recipients are billed."""
        ...


class PostgresLedger:
    """PostgreSQL behind the two calls the milter makes, failures as ServiceUnavailable.

    With a journal, a record PostgreSQL cannot take is written to the journal instead (and
    the message accepted); without one (tests, tools) it is a 451. Each account recorded
    for is passed to `recorded_for` (the settler, which bills the pending rows to blocks).

    With `group_commit`, records go through one writer thread (store/group_commit.py):
    concurrent messages share one transaction and one COMMIT, each answered only once that
    COMMIT succeeded, and each waits for it at most `commit_wait` seconds (then: "PostgreSQL
    did not answer", the journal). close() drains it. Without, each message is one statement
    in its own implicit transaction, written by the caller."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        clock: Clock,
        journal: Journal | None = None,
        holds_of: Callable[[uuid.UUID], list[str]] | None = None,
        recorded_for: Callable[[int], None] | None = None,
        commit_wait: float = COMMIT_WAIT,
        group_commit: bool = False,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.journal = journal
        self.holds_of = holds_of or (lambda txn_id: [])
        self.recorded_for = recorded_for or (lambda account_id: None)
        self.balance = PostgresQuotaBalance(pool, clock)
        self.writer = GroupCommitter(pool, commit_wait, enabled=group_commit)

    def record(self, message: AcceptedMessage) -> Recorded:
        holds = self.holds_of(message.txn_id)
        outcome = self.writer.write(message, holds)
        if isinstance(outcome, Failed):
            if not outcome.unreachable or self.journal is None:
                raise _unavailable(outcome.error) from outcome.error
            return self._journal(self.journal, message, holds, outcome.error)
        self.recorded_for(message.account_id)
        return outcome

    def close(self) -> None:
        """Write what is queued and stop the writer (before the pool closes)."""
        self.writer.close()

    @staticmethod
    def _journal(
        journal: Journal, message: AcceptedMessage, holds: list[str], error: Exception
    ) -> Recorded:
        journal.append(JournalEntry(message, holds))  # JournalUnavailable → 451
        log.warning(
            "event=journaled txn=%s rcpts=%d backlog=%d error=%r",
            message.txn_id,
            len(message.recipients),
            journal.backlog(),
            error.__class__.__name__,
        )
        return Recorded(
            None,
            [Allocation(r, "pending", None) for r in message.recipients],
            journaled=len(message.recipients),
        )

    def replay_journal(self) -> int:
        """Write journaled records to PostgreSQL (idempotent); 0 when there was nothing or
        PostgreSQL is still away."""
        journal = self.journal
        # The files, not the backlog count: `txrelay journal retry` adds one from outside.
        if journal is None or not journal.pending_files():
            return 0
        try:
            with self.pool.connection() as conn:
                done = journal.replay(lambda entry: self._replay(conn, entry), UNREACHABLE)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            log.info(
                "event=journal_replay_waiting backlog=%d error=%r",
                journal.backlog(),
                exc.__class__.__name__,
            )
            return 0
        if done:
            log.warning("event=journal_replayed messages=%d backlog=%d", done, journal.backlog())
        return done

    def _replay(self, conn: psycopg.Connection, entry: JournalEntry) -> Recorded:
        recorded = record_acceptance(conn, entry.message, entry.holds)
        self.recorded_for(entry.message.account_id)
        return recorded

    def remaining_quota(self, account_id: int) -> int:
        return self.balance.remaining_quota(account_id)


class PostgresQuotaBalance:
    """An account's remaining quota read from PostgreSQL, failures as LedgerUnavailable:
    what the Redis balance starts from. Apart from the ledger, so that the reservations
    (which need it) can be built before the ledger (which needs their PostgreSQL holds)."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    def remaining_quota(self, account_id: int) -> int:
        try:
            with self.pool.connection() as conn:
                return remaining_quota(conn, account_id, self.clock.now())
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc

    def overage_used(self, account_id: int, period: str) -> int:
        """The account's overage recipients in billing period `period` (YYYY-MM)."""
        month = parse_period(period)
        try:
            with self.pool.connection() as conn:
                return overage_used(conn, account_id, month.start, month.end)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: Exception) -> LedgerUnavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return LedgerUnavailable(f"PostgreSQL did not answer ({exc.__class__.__name__}: {first})")
