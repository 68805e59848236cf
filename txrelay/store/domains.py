"""PostgreSQL access to sending domains and their DKIM keys (private keys stay in here)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class DkimKey:
    """A key as the CLI may show it: selector, algorithm and public half only."""

    id: int
    account_id: int
    selector: str
    algorithm: str
    public_key_b64: str


@dataclass(frozen=True)
class SendingDomain:
    id: int
    account_id: int
    account_name: str
    domain: str
    list_help: str
    created_at: dt.datetime
    key: DkimKey


INSERT_DKIM_KEY = """
INSERT INTO dkim_keys (account_id, selector, algorithm, private_key_pem, public_key_b64)
VALUES (%s, %s, %s, %s, %s)
RETURNING id"""


def insert_dkim_key(conn: psycopg.Connection, account_id: int, selector: str, algorithm: str,
                    private_key_pem: str, public_key_b64: str) -> int:
    row = conn.execute(INSERT_DKIM_KEY, (account_id, selector, algorithm, private_key_pem,
                                         public_key_b64)).fetchone()
    return int(row["id"])  # type: ignore[index, call-overload]


INSERT_DOMAIN = """
INSERT INTO sending_domains (account_id, domain, list_help, dkim_key_id)
VALUES (%s, %s, %s, %s)
RETURNING id"""


def insert_domain(conn: psycopg.Connection, account_id: int, domain: str, list_help: str,
                  dkim_key_id: int) -> int:
    row = conn.execute(INSERT_DOMAIN, (account_id, domain, list_help, dkim_key_id)).fetchone()
    return int(row["id"])  # type: ignore[index, call-overload]


SELECT_DOMAINS = """
SELECT d.id, d.account_id, a.name AS account_name, d.domain, d.list_help, d.created_at,
       k.id AS key_id, k.selector, k.algorithm, k.public_key_b64
  FROM sending_domains d
  JOIN accounts a ON a.id = d.account_id
  JOIN dkim_keys k ON k.id = d.dkim_key_id
 WHERE (%(domain)s::text IS NULL OR d.domain = %(domain)s)
   AND (%(account_id)s::bigint IS NULL OR d.account_id = %(account_id)s)
 ORDER BY a.name, d.domain"""


def find_domain(conn: psycopg.Connection, domain: str) -> SendingDomain | None:
    rows = conn.execute(SELECT_DOMAINS, {"domain": domain, "account_id": None}).fetchall()
    return _domain(rows[0]) if rows else None  # type: ignore[arg-type]


def list_domains(conn: psycopg.Connection, account_id: int | None = None) -> list[SendingDomain]:
    rows = conn.execute(SELECT_DOMAINS, {"domain": None, "account_id": account_id}).fetchall()
    return [_domain(row) for row in rows]  # type: ignore[arg-type]


def _domain(row: dict) -> SendingDomain:
    key = DkimKey(row["key_id"], row["account_id"], row["selector"], row["algorithm"],
                  row["public_key_b64"])
    return SendingDomain(row["id"], row["account_id"], row["account_name"], row["domain"],
                         row["list_help"], row["created_at"], key)


UPDATE_LIST_HELP = "UPDATE sending_domains SET list_help = %s WHERE id = %s"


def update_list_help(conn: psycopg.Connection, domain_id: int, list_help: str) -> None:
    conn.execute(UPDATE_LIST_HELP, (list_help, domain_id))
