"""Applies parsed log lines to the ledger, one chunk per transaction with its log position."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import psycopg

from txrelay import metrics
from txrelay.clock import Clock
from txrelay.policy import logline
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import outcomes, tracking
from txrelay.store.tracking import Counters
from txrelay.tracker.deliveries import DeliveryPipeline, PipelineMismatch, pipelined_delivery
from txrelay.tracker.follower import Chunk, same_file
from txrelay.tracker.known import LedgerRows, Owners
from txrelay.tracker.sources import LogSource

log = logging.getLogger("txrelay.tracker")


@dataclass(frozen=True)
class PassResult:
    counters: Counters
    caught_up: bool  # the log has no complete line left to read


class PositionMoved(Exception):
    """Another tracker advanced this node's position: re-read from the stored one."""


class Tracker:
    """One node's tracker for one log source (a file through rotations, or the journal)."""

    def __init__(
        self,
        conn: psycopg.Connection,
        node: str,
        source: LogSource,
        clock: Clock,
        rules: SuppressionRules | None = None,
    ) -> None:
        """rules: when bounces suppress (the configuration's [suppression]; default: the
        defaults of SuppressionRules)."""
        self.conn = conn
        self.rules = rules or SuppressionRules()
        self.node = node
        self.follower = source
        self.log_path = source.key  # the source's row in tracker_positions
        self.clock = clock
        self.ready = False

    def resume(self) -> bool:
        """Open the log at the stored position; False while the log file does not exist."""
        stored = tracking.load_position(self.conn, self.node, self.log_path)
        self.conn.commit()
        self.ready = self.follower.resume(stored)
        if self.ready and self.follower.truncated:
            self._restart_file(stored)
        return self.ready

    def _restart_file(self, stored: tracking.Position) -> None:
        """The stored file is shorter than the stored offset (truncated in place, or a new
        file that got the old one's inode number): store offset 0 of it, so that its first
        chunk continues the stored position instead of looking moved forever."""
        with self.conn.transaction():
            if tracking.lock_position(self.conn, self.node, self.log_path) == stored:
                tracking.save_position(
                    self.conn,
                    self.node,
                    self.log_path,
                    tracking.Position(stored.identity, 0),
                    Counters(),
                    self.clock.now(),
                )

    def run_pass(self, max_chunks: int = 1000) -> PassResult:
        """Apply whatever complete lines the log holds now (up to max_chunks transactions)."""
        total = Counters()
        if not self.ready and not self.resume():
            return PassResult(total, caught_up=True)
        for _ in range(max_chunks):
            chunk = self.follower.read_chunk(max_bytes=256 * 1024)
            if chunk is None:
                return PassResult(total, caught_up=True)
            try:
                total += self.apply_chunk(chunk)
            except PositionMoved:
                log.warning(
                    "event=position_moved node=%s path=%s: another tracker applied "
                    "these lines; resuming from the stored position",
                    self.node,
                    self.log_path,
                )
                self.resume()
        return PassResult(total, caught_up=False)

    def apply_chunk(self, chunk: Chunk) -> Counters:
        """The chunk's events and the position after it, in one transaction. The ledger rows
        the events may update are locked first, in id order (tracking.lock_queue_rows).

        Delivery lines matched against those rows are sent in pipeline mode (DeliveryPipeline)
        and their results checked before the commit; when one differs from what the locked
        rows predicted, the transaction rolls back and the chunk is applied again with every
        statement waited for."""
        try:
            counters = self._apply_chunk(chunk, pipelined=True)
        except PipelineMismatch as mismatch:
            log.warning(
                "event=pipeline_mismatch node=%s path=%s: %s; applying the chunk again "
                "without the pipeline",
                self.node,
                self.log_path,
                mismatch,
            )
            counters = self._apply_chunk(chunk, pipelined=False)
        self.follower.advance(chunk)
        metrics.record_outcomes(counters.outcomes())
        return counters

    def _apply_chunk(self, chunk: Chunk, *, pipelined: bool) -> Counters:
        now = self.clock.now()
        with self.conn.transaction():
            stored = tracking.lock_position(self.conn, self.node, self.log_path)
            if not _continues(stored, chunk.start):
                raise PositionMoved()
            counters = Counters(lines_read=len(chunk.lines))
            events = [(logline.parse_line(line), line) for line in chunk.lines]
            queue_ids = [e.queue_id for e, _ in events if isinstance(e, _LEDGER_EVENTS)]
            rows = LedgerRows(self.conn, tracking.lock_queue_rows(self.conn, self.node, queue_ids))
            # One query for the chunk instead of one per line: nearly every queue id has no
            # kept lines (they wait only for a journal replay's rows).
            kept = tracking.queue_ids_with_pending(self.conn, self.node, queue_ids)
            owners = Owners.of_chunk(self.conn, self.node, queue_ids)
            with DeliveryPipeline(self.conn) as deliveries:
                for event, line in events:
                    counters += apply_event(
                        self.conn,
                        self.node,
                        event,
                        now,
                        line,
                        self.rules,
                        kept=kept,
                        owners=owners,
                        rows=rows,
                        deliveries=deliveries if pipelined else None,
                    )
            tracking.save_position(self.conn, self.node, self.log_path, chunk.end, counters, now)
        return counters

    def apply_kept(self) -> Counters:
        """Kept lines of messages that got their rows since (a journal replay), in one
        transaction under the position lock, so that no chunk interleaves."""
        now = self.clock.now()
        counters = Counters()
        with self.conn.transaction():
            tracking.lock_position(self.conn, self.node, self.log_path)
            queue_ids = tracking.awaited_with_pending(self.conn, self.node)
            rows = LedgerRows(self.conn, tracking.lock_queue_rows(self.conn, self.node, queue_ids))
            for queue_id in queue_ids:
                counters += apply_pending(
                    self.conn, self.node, queue_id, now, self.rules, rows=rows
                )
        metrics.record_outcomes(counters.outcomes())
        return counters

    def close(self) -> None:
        self.follower.close()


def _continues(stored: tracking.Position, start: tracking.Position) -> bool:
    """The chunk starts where the database says this tracker stopped."""
    if stored.cursor is not None or start.cursor is not None:
        return stored.cursor == start.cursor  # the journal: after the same entry
    if stored.identity is None:
        return True
    if start.identity is None:
        return False
    if same_file(stored.identity, start.identity):
        return stored.offset == start.offset
    return start.offset == 0  # the first chunk of the next file after a rotation


EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired
EXPIRED_EVENT = "expired, returned to sender"
_LEDGER_EVENTS = (logline.Queued, logline.Delivery, logline.Expired, logline.Removed)


def apply_event(
    conn: psycopg.Connection,
    node: str,
    event: logline.Event,
    now: dt.datetime,
    line: str,
    rules: SuppressionRules,
    *,
    kept: set[str] | None = None,
    owners: Owners | None = None,
    rows: LedgerRows | None = None,
    deliveries: DeliveryPipeline | None = None,
) -> Counters:
    """One event's effect on the ledger; the counters say what was not understood.

    An event of a queue id without a message row is kept (the line itself): a message the
    milter journaled while PostgreSQL was down gets its row only at replay, which may come
    after Postfix delivered it. Kept lines of a queue id go first, so the order is the log's.

    kept: the queue ids that may have kept lines, read in this transaction under the
    position lock (tracking.queue_ids_with_pending); the ones this call keeps a line of are
    added. None: look for kept lines of every queue id. owners: the chunk's Owners (None:
    read each owner when needed). rows: the chunk's LedgerRows (None: read the rows of each
    delivery line). deliveries: the chunk's DeliveryPipeline (None: wait for each
    statement); with it, a delivery line that needs no query is sent in the pipeline, and
    any other ledger event settles the pipeline first."""
    if isinstance(event, logline.Unparsed):
        return Counters(unparsed_lines=1)
    if not isinstance(event, _LEDGER_EVENTS):
        return Counters()  # Ignored, Notification: Postfix's own mail has no ledger rows
    owners = owners or Owners(conn, node, {})
    rows = rows or LedgerRows(conn, [])
    if deliveries is not None:
        sent = pipelined_delivery(event, now, kept, owners, rows, deliveries)
        if sent is not None:
            return sent
        deliveries.settle()
    counters = Counters()
    if kept is None or event.queue_id in kept:
        counters = apply_pending(conn, node, event.queue_id, now, rules, owners, rows)
    owner = owners.get(event.queue_id)
    if owner is None:
        tracking.keep_event(conn, node, event.queue_id, line, now)
        if kept is not None:
            kept.add(event.queue_id)
        if isinstance(event, logline.Removed):
            return counters
        return counters + Counters(unmatched_events=1)
    return counters + _apply_known(conn, node, event, owner, owners, rows, now, rules)


def apply_pending(
    conn: psycopg.Connection,
    node: str,
    queue_id: str,
    now: dt.datetime,
    rules: SuppressionRules,
    owners: Owners | None = None,
    rows: LedgerRows | None = None,
) -> Counters:
    """Apply the kept lines of queue_id, oldest first, once a message owns it; each is deleted
    in the transaction that applies it (exactly once). A kept 'removed' ends that message:
    the lines after it belong to the queue id's next use and stay kept."""
    owners = owners or Owners(conn, node, {})
    rows = rows or LedgerRows(conn, [])
    counters = Counters()
    for pending in tracking.pending_events(conn, node, queue_id):
        owner = owners.get(queue_id)
        if owner is None:
            break
        event = logline.parse_line(pending.line)
        counters += _apply_known(conn, node, event, owner, owners, rows, now, rules)
        tracking.forget_pending(conn, pending.id)
    return counters


def _apply_known(
    conn: psycopg.Connection,
    node: str,
    event: logline.Event,
    owner: tracking.Owner,
    owners: Owners,
    rows: LedgerRows,
    now: dt.datetime,
    rules: SuppressionRules,
) -> Counters:
    """A ledger event of the queue id that `owner` (owners.get, just before) owns."""
    if isinstance(event, logline.Queued):
        confirmed, counters = _apply_queued(conn, node, event, owner, now)
        if confirmed is not None:
            owners.queued(event.queue_id, confirmed)
            rows.queued(confirmed)
        return counters
    if isinstance(event, logline.Delivery):
        return _apply_delivery(conn, node, event, owner, owners, rows, now, rules)
    if isinstance(event, logline.Expired):
        _apply_expired(conn, owner[0], now, rules)
        owners.forget(event.queue_id)
        rows.forget(owner[0])
    if isinstance(event, logline.Removed):
        open_rows = tracking.mark_removed(conn, owner[0], now)
        owners.forget(event.queue_id)
        if open_rows:
            # Postfix removes a queue file only when every recipient is done: the outcome
            # lines of these were lost (Postfix or its logger stopped abruptly, e.g. SIGKILL
            # or a power cut). Billing does not depend on them; say so instead of guessing.
            log.warning(
                "event=removed_without_outcome node=%s queue_id=%s rows=%d",
                node,
                event.queue_id,
                open_rows,
            )
            tracking.record_anomaly(
                conn,
                node,
                event.queue_id,
                "removed_without_outcome",
                f"Postfix removed the message with {open_rows} recipients still queued or "
                "deferred in the ledger: their delivery lines are missing from the log "
                "(Postfix or its logger was killed, or the message deleted with postsuper)",
                now,
            )
    return Counters()


def _apply_queued(
    conn: psycopg.Connection,
    node: str,
    event: logline.Queued,
    owner: tracking.Owner,
    now: dt.datetime,
) -> tuple[int | None, Counters]:
    """The message marked queued (None: none awaited the line), and the counters."""
    confirmed = tracking.confirm_queued(conn, node, event.queue_id, now)
    if confirmed is None:
        if owner[1]:
            # qmgr logs the line again on every retry from the deferred queue
            return None, Counters()
        return None, Counters(unmatched_events=1)
    counters = Counters()
    if confirmed.voided_rows:
        tracking.record_anomaly(
            conn,
            node,
            event.queue_id,
            "queued_after_void",
            f"{confirmed.voided_rows} ledger rows were voided before Postfix queued the message",
            now,
        )
    if confirmed.ledger_rows != event.nrcpt:
        log.warning(
            "event=nrcpt_mismatch node=%s queue_id=%s nrcpt=%d ledger_rows=%d",
            node,
            event.queue_id,
            event.nrcpt,
            confirmed.ledger_rows,
        )
        tracking.record_anomaly(
            conn,
            node,
            event.queue_id,
            "nrcpt_mismatch",
            f"Postfix queued {event.nrcpt} recipients, the ledger holds {confirmed.ledger_rows}",
            now,
        )
        counters = Counters(nrcpt_mismatches=1)
    return confirmed.message_id, counters


def _apply_expired(
    conn: psycopg.Connection, message_id: int, now: dt.datetime, rules: SuppressionRules
) -> None:
    """qmgr gave up: every recipient still pending bounced, one by one through outcomes (a
    soft bounce each, counted for the soft-bounce rule; the DSN of its last deferral, or
    4.4.7 delivery time expired)."""
    for pending in tracking.expiring_rows(conn, message_id):
        outcomes.record_bounce(
            conn,
            pending.ledger_id,
            pending.dsn or EXPIRED_STATUS,
            pending.last_event or "",
            now,
            source="log",
            rules=rules,
            event=EXPIRED_EVENT,
        )


def _apply_delivery(
    conn: psycopg.Connection,
    node: str,
    event: logline.Delivery,
    owner: tracking.Owner,
    owners: Owners,
    rows: LedgerRows,
    now: dt.datetime,
    rules: SuppressionRules,
) -> Counters:
    message_id, queued = owner
    recipients = rows.recipients(message_id, logline.addresses_of(event))
    picked = logline.pick_candidate(event, set(recipients))
    if picked is None:
        if len(event.candidates) > 1:
            tracking.record_anomaly(
                conn,
                node,
                event.queue_id,
                "ambiguous_delivery_line",
                f"{len(event.candidates)} readings of one line",
                now,
            )
        return Counters(unmatched_events=1)
    candidate, address = picked
    ledger_id = recipients[address]
    owners.queued(event.queue_id, message_id)  # below, unless it is already
    if candidate.outcome is logline.Outcome.BOUNCED:
        if not queued:
            tracking.mark_queued(conn, message_id, now)
        bounced = outcomes.record_bounce(
            conn,
            ledger_id,
            candidate.dsn,
            candidate.detail,
            now,
            source="log",
            rules=rules,
            event=candidate.describe(),
        )
        rows.recorded(message_id, ledger_id, "bounced" if bounced else None)
        return Counters(bounced=1) if bounced else Counters()
    state = candidate.outcome.value
    cursor = outcomes.record_delivery(
        conn, message_id, ledger_id, state, candidate.dsn, candidate.describe(), now, queued=queued
    )
    recorded = cursor.fetchone() is not None
    rows.recorded(message_id, ledger_id, state if recorded else None)
    return Counters(**{state: 1}) if recorded else Counters()
