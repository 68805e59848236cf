"""An account's suppression list in PostgreSQL (the source of truth)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]

REASONS = ("hard_bounce", "soft_bounces", "complaint", "manual")


@dataclass(frozen=True)
class Suppression:
    account_id: int
    address: str
    reason: str
    source_ledger_id: int | None
    dsn: str | None
    detail: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    removed_at: dt.datetime | None = None
    change_id: int = 0

    def active(self, now: dt.datetime) -> bool:
        """It suppresses now: not removed, not expired."""
        return self.removed_at is None and (self.expires_at is None or self.expires_at > now)


# A newer cause replaces the row (its reason, source and expiry); a manual suppression is
# only replaced by another manual one, so that automatic events never shorten it. A removed
# or expired row is replaced by any cause (removed_at cleared: it suppresses again).
UPSERT_SUPPRESSION = """
INSERT INTO suppressions AS s (account_id, address, reason, source_ledger_id, dsn, detail,
                               created_at, expires_at)
VALUES (%(account_id)s, %(address)s, %(reason)s, %(source_ledger_id)s, %(dsn)s, %(detail)s,
        %(now)s, %(expires_at)s)
ON CONFLICT (account_id, address) DO UPDATE
   SET reason = EXCLUDED.reason, source_ledger_id = EXCLUDED.source_ledger_id,
       dsn = EXCLUDED.dsn, detail = EXCLUDED.detail, created_at = EXCLUDED.created_at,
       expires_at = EXCLUDED.expires_at, removed_at = NULL
 WHERE s.reason <> 'manual' OR EXCLUDED.reason = 'manual' OR s.removed_at IS NOT NULL
    OR (s.expires_at IS NOT NULL AND s.expires_at <= %(now)s)
RETURNING (xmax = 0) AS inserted
"""


def suppress(
    conn: Conn,
    account_id: int,
    address: str,
    reason: str,
    now: dt.datetime,
    *,
    expires_at: dt.datetime | None = None,
    source_ledger_id: int | None = None,
    dsn: str | None = None,
    detail: str = "",
) -> bool:
    """Suppress one recipient for an account (in the caller's transaction); True when the
    row was written (new, or replacing an automatic or expired one)."""
    if reason not in REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    row = conn.execute(
        UPSERT_SUPPRESSION,
        {
            "account_id": account_id,
            "address": address.strip().lower(),
            "reason": reason,
            "source_ledger_id": source_ledger_id,
            "dsn": dsn,
            "detail": detail,
            "now": now,
            "expires_at": expires_at,
        },
    ).fetchone()
    return row is not None


# A removal keeps the row (removed_at set, a new change_id by the trigger of migration 0019)
# so that every milter node learns of it with its next poll.
REMOVE_SUPPRESSION = """
UPDATE suppressions SET removed_at = %(now)s
 WHERE account_id = %(account_id)s AND address = %(address)s AND removed_at IS NULL
   AND (expires_at IS NULL OR expires_at > %(now)s)
RETURNING account_id, address, reason, source_ledger_id, dsn, detail, created_at,
       expires_at, removed_at, change_id"""

SELECT_SUPPRESSION = """
SELECT account_id, address, reason, source_ledger_id, dsn, detail, created_at,
       expires_at, removed_at, change_id FROM suppressions
 WHERE account_id = %(account_id)s AND address = %(address)s"""

LIST_SUPPRESSIONS = """
SELECT account_id, address, reason, source_ledger_id, dsn, detail, created_at,
       expires_at, removed_at, change_id FROM suppressions
 WHERE account_id = %(account_id)s AND removed_at IS NULL
   AND (expires_at IS NULL OR expires_at > %(now)s)
   AND (%(reason)s::text IS NULL OR reason = %(reason)s)
 ORDER BY created_at DESC, address
 LIMIT %(limit)s"""

# Every milter node's first read: what suppresses now, and the snapshot's xmin for the
# next read (see CHANGED_SUPPRESSIONS).
ACTIVE_SUPPRESSIONS = """
SELECT account_id, address, reason, source_ledger_id, dsn, detail, created_at,
       expires_at, removed_at, change_id FROM suppressions
 WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > %(now)s)"""

# The rows written by transactions that a read with snapshot xmin `after` could not see:
# every such transaction has an id at or above that xmin (those below it had ended).
CHANGED_SUPPRESSIONS = """
SELECT account_id, address, reason, source_ledger_id, dsn, detail, created_at,
       expires_at, removed_at, change_id FROM suppressions
 WHERE change_xid >= %(after)s::text::xid8"""

SNAPSHOT_XMIN = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin"


def _row(row: dict[str, Any]) -> Suppression:
    return Suppression(
        int(row["account_id"]),
        row["address"],
        row["reason"],
        row["source_ledger_id"],
        row["dsn"],
        row["detail"],
        row["created_at"],
        row["expires_at"],
        row["removed_at"],
        int(row["change_id"]),
    )


def remove(conn: Conn, account_id: int, address: str, now: dt.datetime) -> Suppression | None:
    """Lift a suppression (in the caller's transaction); None when the address was not
    suppressed (never, removed already, or expired)."""
    row = conn.execute(
        REMOVE_SUPPRESSION,
        {"account_id": account_id, "address": address.strip().lower(), "now": now},
    ).fetchone()
    return None if row is None else _row(row)


def find(conn: Conn, account_id: int, address: str) -> Suppression | None:
    """The account's row for this address, whether it suppresses now or not."""
    row = conn.execute(
        SELECT_SUPPRESSION, {"account_id": account_id, "address": address.strip().lower()}
    ).fetchone()
    return None if row is None else _row(row)


def list_active(
    conn: Conn, account_id: int, now: dt.datetime, *, reason: str | None, limit: int
) -> list[Suppression]:
    """The account's suppressions in effect now, newest first."""
    rows = conn.execute(
        LIST_SUPPRESSIONS,
        {"account_id": account_id, "now": now, "reason": reason, "limit": limit},
    ).fetchall()
    return [_row(row) for row in rows]


def snapshot_xmin(conn: Conn) -> str:
    """The current snapshot's xmin (call it first in the transaction that reads)."""
    row = conn.execute(SNAPSHOT_XMIN).fetchone()
    assert row is not None
    return str(row["xmin"])


def load_active(conn: Conn, now: dt.datetime) -> list[Suppression]:
    return [_row(row) for row in conn.execute(ACTIVE_SUPPRESSIONS, {"now": now}).fetchall()]


def load_changed(conn: Conn, after: str) -> list[Suppression]:
    return [_row(row) for row in conn.execute(CHANGED_SUPPRESSIONS, {"after": after}).fetchall()]


# The message whose bounce or complaint suppressed the address (show).
SOURCE_MESSAGE = """
SELECT m.txn_id, m.queue_id, m.message_id, m.accepted_at, l.state, l.last_event,
       c.name AS connection
  FROM ledger l JOIN messages m ON m.id = l.message_id
  JOIN connections c ON c.id = l.connection_id
 WHERE l.id = %(ledger_id)s"""


def source_message(conn: Conn, ledger_id: int) -> dict[str, Any] | None:
    row: dict[str, Any] | None = conn.execute(SOURCE_MESSAGE, {"ledger_id": ledger_id}).fetchone()
    return row
