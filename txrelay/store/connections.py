"""PostgreSQL access to connections, their credentials and their sending domains."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass(frozen=True)
class Connection:
    id: int
    account_id: int
    account_name: str
    name: str
    enabled: bool
    rate_limit: int | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    username: str | None
    domains: tuple[str, ...]
    bounces: str = "relay"  # 'relay': the relay's return path; 'keep': the shop's own
    sandbox: bool = False  # its mail is captured (sandbox_messages), never delivered


INSERT_CONNECTION = """
INSERT INTO connections (account_id, name, rate_limit, sandbox) VALUES (%s, %s, %s, %s)
RETURNING id"""


def insert_connection(
    conn: psycopg.Connection,
    account_id: int,
    name: str,
    rate_limit: int | None,
    sandbox: bool = False,
) -> int:
    row = conn.execute(INSERT_CONNECTION, (account_id, name, rate_limit, sandbox)).fetchone()
    return int(row["id"])  # type: ignore[index, call-overload]


INSERT_CREDENTIALS = """
INSERT INTO credentials (connection_id, username, password_hash) VALUES (%s, %s, %s)"""


def insert_credentials(
    conn: psycopg.Connection, connection_id: int, username: str, password_hash: str
) -> None:
    conn.execute(INSERT_CREDENTIALS, (connection_id, username, password_hash))


INSERT_CONNECTION_DOMAIN = """
INSERT INTO connection_domains (connection_id, domain_id, account_id) VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING"""


def link_domain(
    conn: psycopg.Connection, connection_id: int, domain_id: int, account_id: int
) -> None:
    conn.execute(INSERT_CONNECTION_DOMAIN, (connection_id, domain_id, account_id))


DELETE_CONNECTION_DOMAIN = """
DELETE FROM connection_domains WHERE connection_id = %s AND domain_id = %s"""


def unlink_domain(conn: psycopg.Connection, connection_id: int, domain_id: int) -> None:
    conn.execute(DELETE_CONNECTION_DOMAIN, (connection_id, domain_id))


# Live connections only: a deleted connection's name may be reused.
SELECT_CONNECTIONS = """
SELECT c.id, c.account_id, a.name AS account_name, c.name, c.enabled, c.rate_limit,
       c.created_at, c.last_used_at, cr.username, c.bounces, c.sandbox,
       COALESCE(array_agg(d.domain ORDER BY d.domain) FILTER (WHERE d.domain IS NOT NULL),
                '{}') AS domains
  FROM connections c
  JOIN accounts a ON a.id = c.account_id
  LEFT JOIN credentials cr ON cr.connection_id = c.id
  LEFT JOIN connection_domains cd ON cd.connection_id = c.id
  LEFT JOIN sending_domains d ON d.id = cd.domain_id
 WHERE c.deleted_at IS NULL
   AND (%(account_id)s::bigint IS NULL OR c.account_id = %(account_id)s)
   AND (%(name)s::text IS NULL OR c.name = %(name)s)
   AND (%(username)s::text IS NULL OR cr.username = %(username)s)
 GROUP BY c.id, a.name, cr.username
 ORDER BY a.name, c.name"""


def list_connections(
    conn: psycopg.Connection,
    *,
    account_id: int | None = None,
    name: str | None = None,
    username: str | None = None,
) -> list[Connection]:
    params = {"account_id": account_id, "name": name, "username": username}
    return [
        _connection(row)  # type: ignore[arg-type]
        for row in conn.execute(SELECT_CONNECTIONS, params).fetchall()
    ]


def _connection(row: dict[str, Any]) -> Connection:
    return Connection(
        row["id"],
        row["account_id"],
        row["account_name"],
        row["name"],
        row["enabled"],
        row["rate_limit"],
        row["created_at"],
        row["last_used_at"],
        row["username"],
        tuple(row["domains"]),
        row["bounces"],
        row["sandbox"],
    )


UPDATE_ENABLED = "UPDATE connections SET enabled = %s WHERE id = %s"


def set_enabled(conn: psycopg.Connection, connection_id: int, enabled: bool) -> None:
    conn.execute(UPDATE_ENABLED, (enabled, connection_id))


UPDATE_RATE_LIMIT = "UPDATE connections SET rate_limit = %s WHERE id = %s"


def set_rate_limit(conn: psycopg.Connection, connection_id: int, rate_limit: int | None) -> None:
    conn.execute(UPDATE_RATE_LIMIT, (rate_limit, connection_id))


UPDATE_SANDBOX = "UPDATE connections SET sandbox = %s WHERE id = %s"


def set_sandbox(conn: psycopg.Connection, connection_id: int, sandbox: bool) -> None:
    conn.execute(UPDATE_SANDBOX, (sandbox, connection_id))


UPDATE_BOUNCES = "UPDATE connections SET bounces = %s WHERE id = %s"


def set_bounces(conn: psycopg.Connection, connection_id: int, bounces: str) -> None:
    conn.execute(UPDATE_BOUNCES, (bounces, connection_id))


UPDATE_PASSWORD = """
UPDATE credentials SET password_hash = %s, rotated_at = %s WHERE connection_id = %s"""  # noqa: S105 - SQL text


def replace_password(
    conn: psycopg.Connection, connection_id: int, password_hash: str, now: dt.datetime
) -> None:
    conn.execute(UPDATE_PASSWORD, (password_hash, now, connection_id))


# The ledger keeps pointing at the row; without credentials the username cannot log in.
SOFT_DELETE_CONNECTION = """
UPDATE connections SET deleted_at = %s, enabled = false WHERE id = %s"""
DELETE_CREDENTIALS = "DELETE FROM credentials WHERE connection_id = %s"


def soft_delete(conn: psycopg.Connection, connection_id: int, now: dt.datetime) -> None:
    conn.execute(SOFT_DELETE_CONNECTION, (now, connection_id))
    conn.execute(DELETE_CREDENTIALS, (connection_id,))
