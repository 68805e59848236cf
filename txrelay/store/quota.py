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

    def is_live(self, now: dt.datetime) -> bool:
        """Counts toward the remaining quota: not expired, not closed by the expiry job."""
        return self.expired_unused is None and (self.expires_at is None or self.expires_at > now)

    def remaining(self, now: dt.datetime) -> int:
        return self.amount - self.used if self.is_live(now) else 0


INSERT_BLOCK = """
INSERT INTO quota_blocks (account_id, kind, amount, booked_at, expires_at)
VALUES (%s, %s, %s, %s, %s)
RETURNING id, account_id, kind, amount, used, booked_at, expires_at, expired_unused"""


def insert_block(conn: psycopg.Connection, account_id: int, kind: str, amount: int,
                 booked_at: dt.datetime, expires_at: dt.datetime | None) -> QuotaBlock:
    row = conn.execute(INSERT_BLOCK, (account_id, kind, amount, booked_at, expires_at)).fetchone()
    return QuotaBlock(**row)  # type: ignore[arg-type]


# The order in which blocks are consumed: oldest-expiring first, demo (no expiry) last.
SELECT_BLOCKS = """
SELECT id, account_id, kind, amount, used, booked_at, expires_at, expired_unused
  FROM quota_blocks
 WHERE account_id = %s
 ORDER BY expires_at NULLS LAST, id"""


def list_blocks(conn: psycopg.Connection, account_id: int) -> list[QuotaBlock]:
    return [QuotaBlock(**row)  # type: ignore[arg-type]
            for row in conn.execute(SELECT_BLOCKS, (account_id,)).fetchall()]
