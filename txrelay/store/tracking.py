"""PostgreSQL side of delivery tracking: log positions, per-recipient outcomes, voiding."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from txrelay.store.ledger_states import FINAL, OPEN, sql_list

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)


@dataclass(frozen=True)
class FileIdentity:
    """A log file as the tracker knows it across renames: device, inode, first-line hash."""

    device: int
    inode: int
    fingerprint: str | None  # None while the file has no complete first line


@dataclass(frozen=True)
class Position:
    """Where a tracker stands: a file and a byte offset in it, or a journal cursor."""

    identity: FileIdentity | None  # None: never read anything of this log (or a journal)
    offset: int
    cursor: str | None = None  # the journal's cursor of the last entry read (journal only)


@dataclass(frozen=True)
class Counters:
    lines_read: int = 0
    unparsed_lines: int = 0
    unmatched_events: int = 0
    nrcpt_mismatches: int = 0
    # Outcomes recorded (a row's state changed, or one more deferral): the tracker's
    # txrelay_tracker_outcomes_total{state}, counted once their transaction committed.
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            **{
                item.name: getattr(self, item.name) + getattr(other, item.name)
                for item in dataclasses.fields(self)
            }
        )

    def outcomes(self) -> dict[str, int]:
        return {"delivered": self.delivered, "deferred": self.deferred, "bounced": self.bounced}


SELECT_POSITION = """
SELECT device, inode, fingerprint, byte_offset, journal_cursor FROM tracker_positions
 WHERE node = %(node)s AND log_path = %(log_path)s"""

# FOR UPDATE: two trackers started by mistake for the same node and log serialise here, so
# neither applies a line the other already applied.
LOCK_POSITION = """
SELECT device, inode, fingerprint, byte_offset, journal_cursor FROM tracker_positions
 WHERE node = %(node)s AND log_path = %(log_path)s
   FOR UPDATE"""

INSERT_POSITION = """
INSERT INTO tracker_positions (node, log_path) VALUES (%(node)s, %(log_path)s)
ON CONFLICT (node, log_path) DO NOTHING"""

SAVE_POSITION = """
UPDATE tracker_positions
   SET device = %(device)s, inode = %(inode)s, fingerprint = %(fingerprint)s,
       byte_offset = %(offset)s, journal_cursor = %(cursor)s,
       lines_read = lines_read + %(lines_read)s,
       unparsed_lines = unparsed_lines + %(unparsed_lines)s,
       unmatched_events = unmatched_events + %(unmatched_events)s,
       nrcpt_mismatches = nrcpt_mismatches + %(nrcpt_mismatches)s, updated_at = %(now)s
 WHERE node = %(node)s AND log_path = %(log_path)s"""

SELECT_STATUS = """
SELECT node, log_path, byte_offset, journal_cursor, lines_read, unparsed_lines, unmatched_events,
       nrcpt_mismatches, updated_at
  FROM tracker_positions ORDER BY node, log_path"""


def _position(row: dict[str, Any] | None) -> Position:
    if row is None:
        return Position(None, 0)
    if row["inode"] is None:
        return Position(None, 0, row["journal_cursor"])
    identity = FileIdentity(int(row["device"]), int(row["inode"]), row["fingerprint"])
    return Position(identity, int(row["byte_offset"]))


def load_position(conn: Conn, node: str, log_path: str) -> Position:
    row = conn.execute(SELECT_POSITION, {"node": node, "log_path": log_path}).fetchone()
    return _position(row)


def lock_position(conn: Conn, node: str, log_path: str) -> Position:
    """The stored position, locked until the transaction ends (call inside one)."""
    params = {"node": node, "log_path": log_path}
    conn.execute(INSERT_POSITION, params)
    return _position(conn.execute(LOCK_POSITION, params).fetchone())


def save_position(
    conn: Conn, node: str, log_path: str, position: Position, counters: Counters, now: dt.datetime
) -> None:
    identity = position.identity
    conn.execute(
        SAVE_POSITION,
        {
            "node": node,
            "log_path": log_path,
            "offset": position.offset,
            "now": now,
            "cursor": position.cursor,
            "device": identity.device if identity else None,
            "inode": identity.inode if identity else None,
            "fingerprint": identity.fingerprint if identity else None,
            "lines_read": counters.lines_read,
            "unparsed_lines": counters.unparsed_lines,
            "unmatched_events": counters.unmatched_events,
            "nrcpt_mismatches": counters.nrcpt_mismatches,
        },
    )


def tracker_status(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(SELECT_STATUS).fetchall()


# --- events -------------------------------------------------------------------------------

# The newest message of this node that still owns the queue id and awaits qmgr's line is
# marked queued, and so are its accepted ledger rows; one statement, one round trip (qmgr
# logs a line like this for every message). Multi-row updates lock their rows in id order
# first (migration 0014's lock order). The counts read the snapshot the statement started
# with: accepted -> queued changes neither.
CONFIRM_QUEUED = """
WITH confirmed AS (
    UPDATE messages SET queued_at = %(now)s
     WHERE id = (SELECT id FROM messages
                  WHERE node = %(node)s AND queue_id = %(queue_id)s
                    AND queued_at IS NULL AND removed_at IS NULL
                  ORDER BY id DESC LIMIT 1)
    RETURNING id),
ledger_queued AS (
    UPDATE ledger SET state = 'queued', last_event = 'queued', last_event_at = %(now)s
     WHERE id IN (SELECT l.id FROM ledger l
                   WHERE l.message_id = (SELECT id FROM confirmed) AND l.state = 'accepted'
                   ORDER BY l.id FOR UPDATE)
       AND state = 'accepted')
SELECT c.id,
       (SELECT count(*) FROM ledger l WHERE l.message_id = c.id) AS rows,
       (SELECT count(*) FROM ledger l WHERE l.message_id = c.id AND l.state = 'voided')
           AS voided
  FROM confirmed c"""

# The message that owns the queue id now: queued and not yet removed from Postfix's queue.
SELECT_OWNER = """
SELECT id, queued_at FROM messages
 WHERE node = %(node)s AND queue_id = %(queue_id)s AND removed_at IS NULL
 ORDER BY id DESC LIMIT 1"""

# The owners of many queue ids at once: SELECT_OWNER for each.
SELECT_OWNERS = """
SELECT DISTINCT ON (queue_id) queue_id, id, queued_at FROM messages
 WHERE node = %(node)s AND queue_id = ANY(%(queue_ids)s) AND removed_at IS NULL
 ORDER BY queue_id, id DESC"""

SET_QUEUED_AT = """
UPDATE messages SET queued_at = %(now)s WHERE id = %(message_id)s AND queued_at IS NULL"""

# The rows of the addresses a delivery line can name (a message to 50 recipients logs 50
# lines); which one the line is about: open_copies_first.
SELECT_LEDGER_RECIPIENTS = """
SELECT id, message_id, lower(recipient) AS recipient, state FROM ledger
 WHERE message_id = %(message_id)s AND lower(recipient) = ANY(%(addresses)s)"""

# qmgr gave up on a message: its recipients still pending, each then recorded as a bounce
# through store/outcomes.py (the chunk locked them already, in id order).
EXPIRING_ROWS = f"""
SELECT id, dsn, last_event FROM ledger
 WHERE message_id = %(message_id)s AND state IN {sql_list(OPEN)}
 ORDER BY id"""  # noqa: S608 - composed of constants

# A chunk of log lines is one transaction that updates the rows of many messages in log
# order, which is not id order: the settler, which locks an account's pending rows by id,
# would meet it the other way round. So a chunk first locks, by id, every ledger row of the
# messages owning its queue ids (migration 0014's lock order). What it reads of them is what
# the chunk's delivery lines need (LedgerCopy): locked, they change only by the chunk itself.
LOCK_QUEUE_ROWS = """
SELECT l.id, l.message_id, lower(l.recipient) AS recipient, l.state
  FROM ledger l JOIN messages m ON m.id = l.message_id
 WHERE m.node = %(node)s AND m.queue_id = ANY(%(queue_ids)s) AND m.removed_at IS NULL
 ORDER BY l.id
   FOR UPDATE OF l"""

# The removal, and in the same round trip the message's rows that still wait for an outcome:
# Postfix removes a queue file only when every recipient is done, so a row still queued or
# deferred here had its delivery line lost (Postfix or its logger stopped abruptly).
MARK_REMOVED = """
WITH removed AS (UPDATE messages SET removed_at = %(now)s WHERE id = %(message_id)s)
SELECT count(*) AS open_rows FROM ledger
 WHERE message_id = %(message_id)s AND state IN ('queued', 'deferred')"""

# The queue ids of a chunk that have kept lines of this node (nearly always none).
SELECT_QUEUE_IDS_WITH_PENDING = """
SELECT DISTINCT queue_id FROM tracker_pending_events
 WHERE node = %(node)s AND queue_id = ANY(%(queue_ids)s)"""

INSERT_ANOMALY = """
INSERT INTO tracker_anomalies (node, queue_id, kind, detail, seen_at)
VALUES (%(node)s, %(queue_id)s, %(kind)s, %(detail)s, %(now)s)"""


@dataclass(frozen=True)
class Confirmed:
    message_id: int
    ledger_rows: int
    voided_rows: int


@dataclass(frozen=True)
class LedgerCopy:
    """One ledger row as a delivery line is matched against it: a recipient may have several,
    one per copy Postfix queued (migration 0013)."""

    ledger_id: int
    message_id: int
    recipient: str  # lower-cased
    state: str


def open_copies_first(copies: Iterable[LedgerCopy]) -> dict[str, int]:
    """Lower-cased recipient -> the row its next delivery line is about: of its copies, the
    open one with the lowest id; the final one with the lowest id when none is open."""
    chosen: dict[str, LedgerCopy] = {}
    for copy in copies:
        best = chosen.get(copy.recipient)
        if best is None or _preference(copy) < _preference(best):
            chosen[copy.recipient] = copy
    return {recipient: copy.ledger_id for recipient, copy in chosen.items()}


def _preference(copy: LedgerCopy) -> tuple[bool, int]:
    return copy.state in FINAL, copy.ledger_id


def _copies(rows: Iterable[dict[str, Any]]) -> list[LedgerCopy]:
    return [
        LedgerCopy(int(row["id"]), int(row["message_id"]), row["recipient"], row["state"])
        for row in rows
    ]


def lock_queue_rows(conn: Conn, node: str, queue_ids: Sequence[str]) -> list[LedgerCopy]:
    """Inside a transaction: lock the ledger rows of the messages owning these queue ids now,
    in id order, before any of them is updated; returns them as locked."""
    if not queue_ids:
        return []
    rows = conn.execute(LOCK_QUEUE_ROWS, {"node": node, "queue_ids": sorted(set(queue_ids))})
    return _copies(rows.fetchall())


def queue_ids_with_pending(conn: Conn, node: str, queue_ids: Sequence[str]) -> set[str]:
    """Which of these queue ids have kept lines of this node. Inside the transaction that
    holds the node's position lock (lock_position): only that tracker keeps or applies them."""
    if not queue_ids:
        return set()
    rows = conn.execute(
        SELECT_QUEUE_IDS_WITH_PENDING, {"node": node, "queue_ids": sorted(set(queue_ids))}
    ).fetchall()
    return {row["queue_id"] for row in rows}


def confirm_queued(conn: Conn, node: str, queue_id: str, now: dt.datetime) -> Confirmed | None:
    """qmgr queued the message: accepted rows become queued. None: no message awaits it."""
    row = conn.execute(CONFIRM_QUEUED, {"node": node, "queue_id": queue_id, "now": now}).fetchone()
    if row is None:
        return None
    return Confirmed(int(row["id"]), int(row["rows"]), int(row["voided"]))


# (message id, already queued) of the message owning a queue id.
Owner = tuple[int, bool]


def queue_owner(conn: Conn, node: str, queue_id: str) -> Owner | None:
    """(message id, already queued) of the message owning the queue id, if any."""
    row = conn.execute(SELECT_OWNER, {"node": node, "queue_id": queue_id}).fetchone()
    if row is None:
        return None
    return int(row["id"]), row["queued_at"] is not None


def queue_owners(conn: Conn, node: str, queue_ids: Sequence[str]) -> dict[str, Owner]:
    """queue_owner of each of these queue ids that has an owner, in one query."""
    if not queue_ids:
        return {}
    rows = conn.execute(
        SELECT_OWNERS, {"node": node, "queue_ids": sorted(set(queue_ids))}
    ).fetchall()
    return {row["queue_id"]: (int(row["id"]), row["queued_at"] is not None) for row in rows}


def ledger_recipients(conn: Conn, message_id: int, addresses: Sequence[str]) -> dict[str, int]:
    """open_copies_first of the message's rows of `addresses` (lower-cased)."""
    rows = conn.execute(
        SELECT_LEDGER_RECIPIENTS, {"message_id": message_id, "addresses": sorted(set(addresses))}
    ).fetchall()
    return open_copies_first(_copies(rows))


def mark_queued(conn: Conn, message_id: int, now: dt.datetime) -> None:
    """A delivery line proves Postfix queued the message (its qmgr line may come later)."""
    conn.execute(SET_QUEUED_AT, {"message_id": message_id, "now": now})


@dataclass(frozen=True)
class ExpiringRow:
    ledger_id: int
    dsn: str | None  # of its last deferral (4.x.x), if any
    last_event: str | None


def expiring_rows(conn: Conn, message_id: int) -> list[ExpiringRow]:
    rows = conn.execute(EXPIRING_ROWS, {"message_id": message_id}).fetchall()
    return [
        ExpiringRow(
            int(r["id"]),
            r["dsn"] if r["dsn"] and r["dsn"].startswith("4.") else None,
            r["last_event"],
        )
        for r in rows
    ]


def mark_removed(conn: Conn, message_id: int, now: dt.datetime) -> int:
    """The message's queue file is gone; returns how many of its rows still wait for an
    outcome (their log lines were lost)."""
    row = conn.execute(MARK_REMOVED, {"message_id": message_id, "now": now}).fetchone()
    return int(row["open_rows"]) if row is not None else 0


def record_anomaly(
    conn: Conn, node: str, queue_id: str, kind: str, detail: str, now: dt.datetime
) -> None:
    conn.execute(
        INSERT_ANOMALY,
        {"node": node, "queue_id": queue_id, "kind": kind, "detail": detail, "now": now},
    )


# --- events of queue ids the ledger does not know yet ---------------------------------------

# A journaled message (PostgreSQL was down) gets its row at replay, possibly after Postfix
# logged its lines: those lines wait here. Lines of queue ids that are never txrelay's
# (Postfix's own bounces, local mail) are deleted after this long; a journal older than this
# is not expected (every milter replays its node's journal as soon as PostgreSQL answers).
PENDING_EVENT_RETENTION = dt.timedelta(days=7)

KEEP_EVENT = """
INSERT INTO tracker_pending_events (node, queue_id, line, seen_at)
VALUES (%(node)s, %(queue_id)s, %(line)s, %(now)s)"""

# Only lines read after the owning message was accepted: older ones were an earlier use of
# the queue id (they stay until they expire, harmlessly).
SELECT_PENDING = """
SELECT p.id, p.line FROM tracker_pending_events p
  JOIN messages m ON m.id = (SELECT id FROM messages
                              WHERE node = %(node)s AND queue_id = %(queue_id)s
                                AND removed_at IS NULL
                              ORDER BY id DESC LIMIT 1)
 WHERE p.node = %(node)s AND p.queue_id = %(queue_id)s AND p.seen_at >= m.accepted_at
 ORDER BY p.id"""

FORGET_PENDING = "DELETE FROM tracker_pending_events WHERE id = %(id)s"

# Driven by the few rows awaiting qmgr (partial index ledger_awaiting_queue), not by the
# pending table, which holds a week of Postfix's own mail.
SELECT_AWAITED_WITH_PENDING = """
SELECT DISTINCT m.queue_id FROM ledger l JOIN messages m ON m.id = l.message_id
 WHERE l.state = 'accepted' AND m.node = %(node)s AND m.removed_at IS NULL
   AND EXISTS (SELECT 1 FROM tracker_pending_events p
                WHERE p.node = m.node AND p.queue_id = m.queue_id)
 ORDER BY m.queue_id"""

EXPIRE_PENDING = """
DELETE FROM tracker_pending_events WHERE node = %(node)s AND seen_at < %(before)s"""


@dataclass(frozen=True)
class PendingEvent:
    id: int
    line: str


def keep_event(conn: Conn, node: str, queue_id: str, line: str, now: dt.datetime) -> None:
    """Keep a line whose queue id has no message row yet, to apply when it gets one. A NUL
    (which PostgreSQL text cannot hold) can only be in text outsiders control: replaced."""
    conn.execute(
        KEEP_EVENT,
        {"node": node, "queue_id": queue_id, "line": line.replace("\x00", "\ufffd"), "now": now},
    )


def pending_events(conn: Conn, node: str, queue_id: str) -> list[PendingEvent]:
    """The kept lines of the message owning queue_id now, in log order (none without one).
    Callers hold the node's position lock (lock_position), so no other tracker applies them."""
    rows = conn.execute(SELECT_PENDING, {"node": node, "queue_id": queue_id}).fetchall()
    return [PendingEvent(int(row["id"]), row["line"]) for row in rows]


def forget_pending(conn: Conn, event_id: int) -> None:
    conn.execute(FORGET_PENDING, {"id": event_id})


def awaited_with_pending(conn: Conn, node: str) -> list[str]:
    """Queue ids of messages awaiting qmgr's line that have kept lines (journal replays)."""
    rows = conn.execute(SELECT_AWAITED_WITH_PENDING, {"node": node}).fetchall()
    return [row["queue_id"] for row in rows]


def expire_pending(conn: Conn, node: str, now: dt.datetime) -> int:
    """Delete this node's kept lines older than PENDING_EVENT_RETENTION."""
    return conn.execute(
        EXPIRE_PENDING, {"node": node, "before": now - PENDING_EVENT_RETENTION}
    ).rowcount


# --- voiding ------------------------------------------------------------------------------

# Rows the milter accepted that Postfix never queued (cleanup failed, the client vanished
# after end-of-message...). Rows another writer holds are skipped (voided at a later pass),
# so voiding never waits for a ledger row; the blocks are then locked one by one in id
# order (migration 0014's lock order). Only this node's: other nodes' logs are not read
# here. A message with kept lines of its queue id waits for them to be applied (a replayed
# journal entry).
VOID_UNCONFIRMED = """
WITH stale AS (
    SELECT l.id, l.account_id, l.billing, l.quota_block_id
      FROM ledger l JOIN messages m ON m.id = l.message_id
     WHERE m.node = %(node)s AND m.queued_at IS NULL AND l.state = 'accepted'
       AND m.accepted_at < %(cutoff)s
       AND NOT EXISTS (SELECT 1 FROM tracker_pending_events p  -- its qmgr line may be kept
                        WHERE p.node = m.node AND p.queue_id = m.queue_id
                          AND p.seen_at >= m.accepted_at)
     ORDER BY l.id
       FOR UPDATE OF l SKIP LOCKED)
UPDATE ledger SET state = 'voided', billing = 'void', quota_block_id = NULL,
                  last_event = 'voided: Postfix never queued the message',
                  last_event_at = %(now)s
  FROM stale
 WHERE ledger.id = stale.id
RETURNING stale.account_id, stale.quota_block_id"""

# Give the units back to the block. A block already closed by expiry keeps amount =
# used + expired_unused: the returned units expire with it.
RETURN_TO_BLOCK = """
UPDATE quota_blocks
   SET used = used - %(units)s,
       expired_unused = CASE WHEN expired_unused IS NULL THEN NULL
                             ELSE expired_unused + %(units)s END
 WHERE id = %(block_id)s
RETURNING account_id, expired_unused IS NULL AS open"""


@dataclass(frozen=True)
class Voided:
    rows: int
    credits: Sequence[tuple[int, int]]  # (account id, units) to add to Redis after commit


def void_unconfirmed(conn: Conn, node: str, cutoff: dt.datetime, now: dt.datetime) -> Voided:
    """Void rows never confirmed by qmgr before cutoff; quota-billed units go back."""
    rows = conn.execute(VOID_UNCONFIRMED, {"node": node, "cutoff": cutoff, "now": now}).fetchall()
    per_block: dict[int, int] = {}
    for row in rows:
        block_id = row["quota_block_id"]
        if block_id is not None:
            per_block[int(block_id)] = per_block.get(int(block_id), 0) + 1
    credits: dict[int, int] = {}
    for block_id, units in sorted(per_block.items()):
        back = conn.execute(RETURN_TO_BLOCK, {"units": units, "block_id": block_id}).fetchone()
        if back is not None and back["open"]:
            account_id = int(back["account_id"])
            credits[account_id] = credits.get(account_id, 0) + units
    return Voided(len(rows), sorted(credits.items()))
