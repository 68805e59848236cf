"""PostgreSQL access to accounts: create, find, summarise, change."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from txrelay.store.ledger_states import OPEN, sql_list


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    admin_email: str
    low_quota_threshold: int
    created_at: dt.datetime
    disabled_at: dt.datetime | None = None  # 'account disable': its mail is refused at MAIL
    overage_cap: int | None = None  # recipients per period beyond quota; None = unlimited


class Unchanged:
    """The marker for "leave this field as it is" where None is a value of its own."""


UNCHANGED = Unchanged()


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
RETURNING id, name, admin_email, low_quota_threshold, created_at, disabled_at, overage_cap"""


def insert_account(conn: psycopg.Connection, name: str, admin_email: str) -> Account:
    row = conn.execute(INSERT_ACCOUNT, (name, admin_email)).fetchone()
    return Account(**row)  # type: ignore[arg-type]


SELECT_ACCOUNT_BY_NAME = """
SELECT id, name, admin_email, low_quota_threshold, created_at, disabled_at, overage_cap
  FROM accounts WHERE name = %s AND deleted_at IS NULL"""


def find_account(conn: psycopg.Connection, name: str) -> Account | None:
    row = conn.execute(SELECT_ACCOUNT_BY_NAME, (name,)).fetchone()
    return None if row is None else Account(**row)  # type: ignore[arg-type]


# Remaining quota and "paid" are migration 0012's rules (txrelay_remaining_quota,
# txrelay_account_paid): read-only, pending ledger rows counted as used.
SELECT_ACCOUNT_SUMMARIES = """
SELECT a.id, a.name, a.admin_email, a.low_quota_threshold, a.created_at, a.disabled_at,
       a.overage_cap,
       txrelay_remaining_quota(a.id, %(now)s) AS quota_remaining,
       txrelay_account_paid(a.id) AS paid,
       (SELECT count(*) FROM connections c
         WHERE c.account_id = a.id AND c.deleted_at IS NULL) AS connections,
       (SELECT count(*) FROM sending_domains d WHERE d.account_id = a.id) AS domains
  FROM accounts a
 WHERE a.deleted_at IS NULL AND (%(name)s::text IS NULL OR a.name = %(name)s)
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
            for key in (
                "id",
                "name",
                "admin_email",
                "low_quota_threshold",
                "created_at",
                "disabled_at",
                "overage_cap",
            )
        }
    )
    return AccountSummary(
        account,
        int(row["quota_remaining"]),
        bool(row["paid"]),
        int(row["connections"]),
        int(row["domains"]),
    )


# overage_cap: %(set_cap)s says whether to change it (NULL is a value: unlimited).
UPDATE_ACCOUNT = """
UPDATE accounts
   SET low_quota_threshold = COALESCE(%(threshold)s, low_quota_threshold),
       admin_email = COALESCE(%(admin_email)s, admin_email),
       overage_cap = CASE WHEN %(set_cap)s THEN %(cap)s::integer ELSE overage_cap END
 WHERE id = %(id)s
RETURNING id, name, admin_email, low_quota_threshold, created_at, disabled_at, overage_cap"""


def update_account(
    conn: psycopg.Connection,
    account_id: int,
    *,
    low_quota_threshold: int | None,
    admin_email: str | None,
    overage_cap: int | Unchanged | None = UNCHANGED,
) -> Account:
    """Change the given fields; None (UNCHANGED for the cap) leaves a field as it is."""
    row = conn.execute(
        UPDATE_ACCOUNT,
        {
            "threshold": low_quota_threshold,
            "admin_email": admin_email,
            "set_cap": not isinstance(overage_cap, Unchanged),
            "cap": None if isinstance(overage_cap, Unchanged) else overage_cap,
            "id": account_id,
        },
    ).fetchone()
    return Account(**row)  # type: ignore[arg-type]


SET_DISABLED = """
UPDATE accounts SET disabled_at = CASE WHEN %(disabled)s THEN COALESCE(disabled_at, %(now)s) END
 WHERE id = %(id)s"""


def set_disabled(
    conn: psycopg.Connection, account_id: int, disabled: bool, now: dt.datetime
) -> None:
    """Disable (keeping the first time it was disabled) or enable the account."""
    conn.execute(SET_DISABLED, {"disabled": disabled, "now": now, "id": account_id})


MARK_DELETED = """
UPDATE accounts SET deleted_at = %(now)s, disabled_at = COALESCE(disabled_at, %(now)s),
       low_quota_threshold = 0
 WHERE id = %(id)s"""
# The domains' keys go with them; a key only this account held that no domain uses any more
# (a retired one) goes too. dkim_key_rotations and connection_domains follow by cascade.
DELETE_ACCOUNT_DOMAINS = "DELETE FROM sending_domains WHERE account_id = %(id)s"
DELETE_ACCOUNT_KEYS = "DELETE FROM dkim_keys WHERE account_id = %(id)s"
DELETE_ACCOUNT_PLAN = "DELETE FROM quota_plans WHERE account_id = %(id)s"
SOFT_DELETE_ACCOUNT_CONNECTIONS = """
UPDATE connections SET deleted_at = %(now)s, enabled = false
 WHERE account_id = %(id)s AND deleted_at IS NULL"""
DELETE_ACCOUNT_CREDENTIALS = """
DELETE FROM credentials cr USING connections co
 WHERE co.id = cr.connection_id AND co.account_id = %(id)s"""


def mark_deleted(conn: psycopg.Connection, account_id: int, now: dt.datetime) -> None:
    """The row, its messages and its ledger stay (billing retention); credentials, domains,
    DKIM keys (private halves included), the plan renewal and the quota reminder go."""
    params = {"id": account_id, "now": now}
    for sql in (
        MARK_DELETED,
        DELETE_ACCOUNT_CREDENTIALS,
        SOFT_DELETE_ACCOUNT_CONNECTIONS,
        DELETE_ACCOUNT_DOMAINS,
        DELETE_ACCOUNT_KEYS,
        DELETE_ACCOUNT_PLAN,
    ):
        conn.execute(sql, params)


# What the next invoice will still charge for: overage recipients of the open period
# (migration 0033's txrelay_overage_used; blocks are paid when booked), and recipients
# still in flight (they will be billed when they finish).
UNBILLED_USAGE = f"""
SELECT txrelay_overage_used(%(id)s, %(start)s, %(end)s) AS overage,
       (SELECT count(*) FROM ledger l
         WHERE l.account_id = %(id)s AND l.state IN {sql_list(OPEN)}
           AND l.billing <> 'void') AS in_flight"""  # noqa: S608 - composed of constants


def unbilled_usage(
    conn: psycopg.Connection, account_id: int, start: dt.datetime, end: dt.datetime
) -> tuple[int, int]:
    """(overage recipients in [start, end), recipients still in flight)."""
    row: Any = conn.execute(
        UNBILLED_USAGE, {"id": account_id, "start": start, "end": end}
    ).fetchone()
    return int(row["overage"]), int(row["in_flight"])
