"""PostgreSQL access to quota blocks: book one, list an account's blocks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class QuotaBlock:
    id: int
    account_id: int
    kind: str
    amount: int
    used: int
    booked_at: dt.datetime
    expires_at: dt.datetime | None
    expired_unused: int | None
    live: bool  # counts toward the remaining quota at the time asked (migration 0012)
    remaining: int  # its unused units then; 0 once it is not live


# Live and remaining at the booking time: migration 0012's txrelay_block_live/_left.
INSERT_BLOCK = """
INSERT INTO quota_blocks (account_id, kind, amount, booked_at, expires_at)
VALUES (%(account_id)s, %(kind)s, %(amount)s, %(booked_at)s, %(expires_at)s)
RETURNING id, account_id, kind, amount, used, booked_at, expires_at, expired_unused,
          txrelay_block_live(expires_at, expired_unused, booked_at) AS live,
          txrelay_block_left(amount, used, expires_at, expired_unused, booked_at) AS remaining"""


def insert_block(
    conn: psycopg.Connection,
    account_id: int,
    kind: str,
    amount: int,
    booked_at: dt.datetime,
    expires_at: dt.datetime | None,
) -> QuotaBlock:
    row = conn.execute(
        INSERT_BLOCK,
        {
            "account_id": account_id,
            "kind": kind,
            "amount": amount,
            "booked_at": booked_at,
            "expires_at": expires_at,
        },
    ).fetchone()
    return QuotaBlock(**row)  # type: ignore[arg-type]


# The order in which blocks are consumed: oldest-expiring first, demo (no expiry) last.
# `used` includes the account's pending ledger rows where settling would bill them now
# (migration 0012's txrelay_pending_allocation): a report sees fresh figures and writes
# nothing; the settler and the quota tick do the writing.
SELECT_BLOCKS = """
SELECT b.id, b.account_id, b.kind, b.amount, u.used, b.booked_at, b.expires_at,
       b.expired_unused, txrelay_block_live(b.expires_at, b.expired_unused, %(now)s) AS live,
       txrelay_block_left(b.amount, u.used, b.expires_at, b.expired_unused, %(now)s)
           AS remaining
  FROM quota_blocks b
  LEFT JOIN (SELECT a.block_id, count(*)::integer AS units
               FROM txrelay_pending_allocation(%(account_id)s) a
              WHERE a.block_id IS NOT NULL
              GROUP BY a.block_id) p ON p.block_id = b.id
 CROSS JOIN LATERAL (SELECT b.used + COALESCE(p.units, 0) AS used) u
 WHERE b.account_id = %(account_id)s
 ORDER BY b.expires_at NULLS LAST, b.id"""


def list_blocks(conn: psycopg.Connection, account_id: int, now: dt.datetime) -> list[QuotaBlock]:
    """The account's blocks at `now` as they stand once its pending rows are settled
    (read-only)."""
    rows = conn.execute(SELECT_BLOCKS, {"account_id": account_id, "now": now}).fetchall()
    return [QuotaBlock(**row) for row in rows]  # type: ignore[arg-type]


# Migration 0012's rules, read-only: remaining quota (pending rows count as used) and paid.
SELECT_QUOTA_RULES = """
SELECT txrelay_remaining_quota(%(account_id)s, %(now)s) AS remaining,
       txrelay_account_paid(%(account_id)s) AS paid"""


def quota_rules(conn: psycopg.Connection, account_id: int, now: dt.datetime) -> tuple[int, bool]:
    """The account's remaining quota at `now` and whether it is paid."""
    row = conn.execute(SELECT_QUOTA_RULES, {"account_id": account_id, "now": now}).fetchone()
    assert row is not None  # a SELECT without FROM: always one row
    return int(row["remaining"]), bool(row["paid"])  # type: ignore[call-overload]
