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


# A newer cause replaces the row (its reason, source and expiry); a manual suppression is
# only replaced by another manual one, so that automatic events never shorten it.
UPSERT_SUPPRESSION = """
INSERT INTO suppressions AS s (account_id, address, reason, source_ledger_id, dsn, detail,
                               created_at, expires_at)
VALUES (%(account_id)s, %(address)s, %(reason)s, %(source_ledger_id)s, %(dsn)s, %(detail)s,
        %(now)s, %(expires_at)s)
ON CONFLICT (account_id, address) DO UPDATE
   SET reason = EXCLUDED.reason, source_ledger_id = EXCLUDED.source_ledger_id,
       dsn = EXCLUDED.dsn, detail = EXCLUDED.detail, created_at = EXCLUDED.created_at,
       expires_at = EXCLUDED.expires_at
 WHERE s.reason <> 'manual' OR EXCLUDED.reason = 'manual'
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
