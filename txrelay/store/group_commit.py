"""Group commit of the ledger: one writer thread records every message queued while the
previous COMMIT was in flight in ONE transaction, so concurrent ends of message share one
WAL flush instead of queueing for one each.

The batch is one statement (record_acceptances: one round trip, its own implicit
transaction); a database error of one message's own (a constraint, a bug) fails that
statement, and the batch is then written message by message, so that only the faulty one
fails. Savepoints per message would do the same at two more round trips each, every one of
them a wait for the GIL on a busy milter (measured: slower than no group commit at all).
Each waiting end of message is woken with its own outcome only after the COMMIT: never an
answer before its record is durable. When PostgreSQL does not answer during the batch
(connection lost, timeout, COMMIT outcome unknown), every message of the batch is told so
and goes to the journal as before, whose replay is idempotent by txn_id.

A caller waits at most `wait_seconds` for its batch: a stuck writer makes that message
"PostgreSQL did not answer in time" (the journal takes it), never an end of message that
hangs until Postfix's milter timeout.

Off by default ([milter] ledger_group_commit): on 2 busy cores the hand-offs to the writer
and back cost more than the COMMITs it saved (docs/performance.md, "Group commit").
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import psycopg_pool

from txrelay import metrics
from txrelay.store.ledger import (
    AcceptedMessage,
    Conn,
    Recorded,
    record_acceptance,
    record_acceptances,
)
from txrelay.supervised import RUN_AGAIN, SupervisedLoop

log = logging.getLogger("txrelay.milter")

# PostgreSQL did not answer (connection refused or lost, timeout): the journal takes over.
# Any other database error (a constraint, a bug) is a 451, never journaled.
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)
MAX_BATCH = 64  # messages per transaction: one slow batch never holds a crowd
IDLE_WAIT = 0.5  # seconds the writer waits for a message before it looks at stop()


class CommitTimeout(Exception):
    """The writer did not finish the message's batch within the caller's wait."""


@dataclass(frozen=True)
class Failed:
    """A message the ledger did not record: `unreachable` when PostgreSQL did not answer
    (journal it), else an error of its own (451)."""

    error: Exception
    unreachable: bool


Outcome = Recorded | Failed


class _Pending:
    """One end of message waiting for its batch. Taken by the writer or abandoned by its
    caller (after the wait), never both: an abandoned message is not written."""

    def __init__(self, message: AcceptedMessage, holds: Sequence[str]) -> None:
        self.message = message
        self.holds = holds
        self.outcome: Outcome | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._taken = False
        self._abandoned = False

    def take(self) -> bool:
        with self._lock:
            self._taken = not self._abandoned
            return self._taken

    def abandon(self) -> bool:
        """True when the writer had not taken it (it never will); False: it is in flight."""
        with self._lock:
            self._abandoned = not self._taken
            return self._abandoned


class GroupCommitter:
    """The ledger's writer thread: `write` queues a message and waits for its batch's
    COMMIT. Supervised (an unexpected error fails its batch with a 451, is logged and
    counted, and the writer goes on). After close() (which drains the queue), or when not
    enabled ([milter] ledger_group_commit), each message is written alone by its caller."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        wait_seconds: float,
        max_batch: int = MAX_BATCH,
        *,
        enabled: bool = True,
    ) -> None:
        self.pool = pool
        self.wait_seconds = wait_seconds
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._lock = threading.Lock()  # started/closed and queueing agree
        self._started = False
        # Not enabled: as if closed from the start, every message written alone by its caller
        # (one statement, its own implicit transaction: the ledger without group commit).
        self._closed = not enabled
        self.loop = SupervisedLoop(
            "ledger-writer", IDLE_WAIT, self._write_next_batch, first_run_now=True
        )

    def write(self, message: AcceptedMessage, holds: Sequence[str] = ()) -> Outcome:
        """The message recorded once its batch is committed, or why not."""
        pending = _Pending(message, holds)
        if not self._enqueue(pending):
            self._write_batch([pending])  # closed: written alone, by the caller
            return _outcome(pending)
        if pending.done.wait(self.wait_seconds):
            return _outcome(pending)
        if pending.abandon():
            return Failed(CommitTimeout("the ledger writer did not take the message"), True)
        if pending.done.is_set():  # finished just now
            return _outcome(pending)
        # In flight on a stuck writer: its COMMIT may still come; the journal's replay is
        # idempotent by txn_id, so journaling it as well records it once.
        return Failed(CommitTimeout(f"no COMMIT within {self.wait_seconds:g} s"), True)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer and write what is still queued (in this thread)."""
        with self._lock:
            self._closed = True
        self.loop.stop(timeout)
        while True:
            try:
                if self._write_next_batch(block=False) is not RUN_AGAIN:
                    return
            except Exception:  # its batch has its outcome (a 451); write the rest
                log.exception("event=ledger_writer_error while draining at shutdown")

    def _enqueue(self, pending: _Pending) -> bool:
        """Queued for the writer (started at the first message: tools and tests that never
        record start no thread); False once closed."""
        with self._lock:
            if self._closed:
                return False
            if not self._started:
                self._started = True
                self.loop.start()
            self._queue.put(pending)
            return True

    def _write_next_batch(self, *, block: bool = True) -> object:
        """One batch: every message queued now (at most max_batch), in one transaction."""
        try:
            first = self._queue.get(timeout=IDLE_WAIT) if block else self._queue.get_nowait()
        except queue.Empty:
            return RUN_AGAIN if block else None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._write_batch([p for p in batch if p.take()])
        return RUN_AGAIN

    def _write_batch(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        metrics.LEDGER_BATCH.observe(len(batch))
        try:
            with self.pool.connection() as conn:
                if len(batch) == 1:
                    self._write_alone(conn, batch[0])
                else:
                    self._write_together(conn, batch)
        except UNREACHABLE as exc:
            self._fail(batch, exc, unreachable=True)
        except psycopg.Error as exc:  # e.g. the connection refused back by the pool
            self._fail(batch, exc, unreachable=False)
        except Exception as exc:
            self._fail(batch, exc, unreachable=False)
            raise  # a bug: the supervisor logs and counts it (or the caller's 451)
        finally:
            for pending in batch:
                pending.done.set()

    def _write_together(self, conn: Conn, batch: list[_Pending]) -> None:
        """One statement, one transaction, one COMMIT for the whole batch. A message's own
        error (a constraint, a bug) fails that statement, so nothing of it was written:
        then each message is written alone, and only the faulty one fails."""
        # Connection rows (last use) locked in id order in every batch: two nodes' batches
        # never wait for each other in a cycle.
        ordered = sorted(batch, key=lambda p: p.message.connection_id)
        try:
            results = record_acceptances(conn, [(p.message, p.holds) for p in ordered])
        except UNREACHABLE:
            raise
        except psycopg.Error as exc:
            log.warning(
                "event=ledger_batch_refused messages=%d error=%r (each written alone now)",
                len(batch),
                exc.__class__.__name__,
            )
            for pending in ordered:
                self._write_alone(conn, pending)
            return
        for pending, recorded in zip(ordered, results, strict=True):
            pending.outcome = recorded

    @staticmethod
    def _write_alone(conn: Conn, pending: _Pending) -> None:
        """One statement in its own implicit transaction (as before group commit); its own
        error fails it alone, PostgreSQL unreachable fails the batch (raised)."""
        try:
            pending.outcome = record_acceptance(conn, pending.message, pending.holds)
        except UNREACHABLE:
            raise
        except psycopg.Error as exc:
            pending.outcome = Failed(exc, unreachable=False)

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception, *, unreachable: bool) -> None:
        """The batch's outcome is unknown: every message fails with the batch's error (even
        one written alone before it: the journal's replay finds it recorded), but a message
        that failed on its own keeps its own error (it was never going in)."""
        for pending in batch:
            if not isinstance(pending.outcome, Failed):
                pending.outcome = Failed(exc, unreachable)


def _outcome(pending: _Pending) -> Outcome:
    if pending.outcome is None:  # the writer was interrupted (BaseException) mid-batch
        return Failed(CommitTimeout("the ledger writer stopped before the COMMIT"), True)
    return pending.outcome
