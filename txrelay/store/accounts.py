"""PostgreSQL access to accounts: create, find, summarise, change."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    admin_email: str
    low_quota_threshold: int
    created_at: dt.datetime


@dataclass(frozen=True)
class AccountSummary:
    """An account with what an admin wants to see at a glance."""

    account: Account
    quota_remaining: int
    paid: bool
    connections: int
    domains: int


INSERT_ACCOUNT = """
INSERT INTO accounts (name, admin_email) VALUES (%s, %s)
RETURNING id, name, admin_email, low_quota_threshold, created_at"""


def insert_account(conn: psycopg.Connection, name: str, admin_email: str) -> Account:
    row = conn.execute(INSERT_ACCOUNT, (name, admin_email)).fetchone()
    return Account(**row)  # type: ignore[arg-type]


SELECT_ACCOUNT_BY_NAME = """
SELECT id, name, admin_email, low_quota_threshold, created_at
  FROM accounts WHERE name = %s"""


def find_account(conn: psycopg.Connection, name: str) -> Account | None:
    row = conn.execute(SELECT_ACCOUNT_BY_NAME, (name,)).fetchone()
    return None if row is None else Account(**row)  # type: ignore[arg-type]


# Remaining quota and "paid" are migration 0012's rules (txrelay_remaining_quota,
# txrelay_account_paid): read-only, pending ledger rows counted as used.
SELECT_ACCOUNT_SUMMARIES = """
SELECT a.id, a.name, a.admin_email, a.low_quota_threshold, a.created_at,
       txrelay_remaining_quota(a.id, %(now)s) AS quota_remaining,
       txrelay_account_paid(a.id) AS paid,
       (SELECT count(*) FROM connections c
         WHERE c.account_id = a.id AND c.deleted_at IS NULL) AS connections,
       (SELECT count(*) FROM sending_domains d WHERE d.account_id = a.id) AS domains
  FROM accounts a
 WHERE %(name)s::text IS NULL OR a.name = %(name)s
 ORDER BY a.name"""


def account_summaries(
    conn: psycopg.Connection, now: dt.datetime, name: str | None = None
) -> list[AccountSummary]:
    rows = conn.execute(SELECT_ACCOUNT_SUMMARIES, {"now": now, "name": name}).fetchall()
    return [_summary(row) for row in rows]  # type: ignore[arg-type]


def _summary(row: dict[str, Any]) -> AccountSummary:
    account = Account(
        **{
            key: row[key]
            for key in ("id", "name", "admin_email", "low_quota_threshold", "created_at")
        }
    )
    return AccountSummary(
        account,
        int(row["quota_remaining"]),
        bool(row["paid"]),
        int(row["connections"]),
        int(row["domains"]),
    )


UPDATE_ACCOUNT = """
UPDATE accounts
   SET low_quota_threshold = COALESCE(%(threshold)s, low_quota_threshold),
       admin_email = COALESCE(%(admin_email)s, admin_email)
 WHERE id = %(id)s
RETURNING id, name, admin_email, low_quota_threshold, created_at"""


def update_account(
    conn: psycopg.Connection,
    account_id: int,
    *,
    low_quota_threshold: int | None,
    admin_email: str | None,
) -> Account:
    """Change the given fields; None leaves a field as it is."""
    row = conn.execute(
        UPDATE_ACCOUNT,
        {"threshold": low_quota_threshold, "admin_email": admin_email, "id": account_id},
    ).fetchone()
    return Account(**row)  # type: ignore[arg-type]
