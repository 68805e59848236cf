"""PostgreSQL access to sending domains and their DKIM keys (private keys stay in here)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

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
class RotatingKey:
    """A key the domain publishes but does not sign with: 'pending' (new, waiting for its DNS
    record) or 'retiring' (old, kept published for mail still in flight), since when."""

    key: DkimKey
    state: str
    since: dt.datetime


@dataclass(frozen=True)
class SendingDomain:
    id: int
    account_id: int
    account_name: str
    domain: str
    list_help: str
    created_at: dt.datetime
    key: DkimKey  # the key the domain signs with
    rotating: tuple[RotatingKey, ...] = ()
    return_path: str | None = None  # its own bounce domain; None: the relay-wide one

    def rotating_key(self, state: str) -> RotatingKey | None:
        """The first pending or retiring key (there is at most one pending key)."""
        return next((r for r in self.rotating if r.state == state), None)

    @property
    def selectors(self) -> set[str]:
        """Every selector whose record this domain publishes."""
        return {self.key.selector, *(r.key.selector for r in self.rotating)}


INSERT_DKIM_KEY = """
INSERT INTO dkim_keys (account_id, selector, algorithm, private_key_pem, public_key_b64)
VALUES (%s, %s, %s, %s, %s)
RETURNING id"""


def insert_dkim_key(
    conn: psycopg.Connection,
    account_id: int,
    selector: str,
    algorithm: str,
    private_key_pem: str,
    public_key_b64: str,
) -> int:
    row = conn.execute(
        INSERT_DKIM_KEY, (account_id, selector, algorithm, private_key_pem, public_key_b64)
    ).fetchone()
    return int(row["id"])  # type: ignore[index, call-overload]


INSERT_DOMAIN = """
INSERT INTO sending_domains (account_id, domain, list_help, dkim_key_id)
VALUES (%s, %s, %s, %s)
RETURNING id"""


def insert_domain(
    conn: psycopg.Connection, account_id: int, domain: str, list_help: str, dkim_key_id: int
) -> int:
    row = conn.execute(INSERT_DOMAIN, (account_id, domain, list_help, dkim_key_id)).fetchone()
    return int(row["id"])  # type: ignore[index, call-overload]


SELECT_DOMAINS = """
SELECT d.id, d.account_id, a.name AS account_name, d.domain, d.list_help, d.created_at,
       d.return_path, k.id AS key_id, k.selector, k.algorithm, k.public_key_b64
  FROM sending_domains d
  JOIN accounts a ON a.id = d.account_id
  JOIN dkim_keys k ON k.id = d.dkim_key_id
 WHERE (%(domain)s::text IS NULL OR d.domain = %(domain)s)
   AND (%(account_id)s::bigint IS NULL OR d.account_id = %(account_id)s)
 ORDER BY a.name, d.domain"""


SELECT_ROTATING_KEYS = """
SELECT r.domain_id, r.state, r.since,
       k.id AS key_id, k.account_id, k.selector, k.algorithm, k.public_key_b64
  FROM dkim_key_rotations r
  JOIN dkim_keys k ON k.id = r.dkim_key_id
 WHERE r.domain_id = ANY(%s)
 ORDER BY r.state, r.since, k.id"""


def find_domain(conn: psycopg.Connection, domain: str) -> SendingDomain | None:
    rows = conn.execute(SELECT_DOMAINS, {"domain": domain, "account_id": None}).fetchall()
    found = _with_rotating_keys(conn, rows)  # type: ignore[arg-type]
    return found[0] if found else None


def list_domains(conn: psycopg.Connection, account_id: int | None = None) -> list[SendingDomain]:
    rows = conn.execute(SELECT_DOMAINS, {"domain": None, "account_id": account_id}).fetchall()
    return _with_rotating_keys(conn, rows)  # type: ignore[arg-type]


def _with_rotating_keys(
    conn: psycopg.Connection, rows: list[dict[str, Any]]
) -> list[SendingDomain]:
    """The domains of rows, each with its pending and retiring keys (one more query)."""
    rotating: dict[int, list[RotatingKey]] = {}
    if rows:
        for r in conn.execute(SELECT_ROTATING_KEYS, ([row["id"] for row in rows],)).fetchall():
            row_of_key: dict[str, Any] = r  # type: ignore[assignment]
            rotating.setdefault(row_of_key["domain_id"], []).append(
                RotatingKey(_key(row_of_key), row_of_key["state"], row_of_key["since"])
            )
    return [
        SendingDomain(
            row["id"],
            row["account_id"],
            row["account_name"],
            row["domain"],
            row["list_help"],
            row["created_at"],
            _key(row),
            tuple(rotating.get(row["id"], ())),
            row["return_path"],
        )
        for row in rows
    ]


def _key(row: dict[str, Any]) -> DkimKey:
    return DkimKey(
        row["key_id"], row["account_id"], row["selector"], row["algorithm"], row["public_key_b64"]
    )


UPDATE_LIST_HELP = "UPDATE sending_domains SET list_help = %s WHERE id = %s"


def update_list_help(conn: psycopg.Connection, domain_id: int, list_help: str) -> None:
    conn.execute(UPDATE_LIST_HELP, (list_help, domain_id))


UPDATE_RETURN_PATH = "UPDATE sending_domains SET return_path = %s WHERE id = %s"


def update_return_path(conn: psycopg.Connection, domain_id: int, return_path: str | None) -> None:
    conn.execute(UPDATE_RETURN_PATH, (return_path, domain_id))


INSERT_ROTATING_KEY = """
INSERT INTO dkim_key_rotations (domain_id, dkim_key_id, state, since) VALUES (%s, %s, %s, %s)"""


def insert_rotating_key(
    conn: psycopg.Connection, domain_id: int, key_id: int, state: str, since: dt.datetime
) -> None:
    conn.execute(INSERT_ROTATING_KEY, (domain_id, key_id, state, since))


DELETE_ROTATING_KEY = "DELETE FROM dkim_key_rotations WHERE domain_id = %s AND dkim_key_id = %s"


def delete_rotating_key(conn: psycopg.Connection, domain_id: int, key_id: int) -> None:
    conn.execute(DELETE_ROTATING_KEY, (domain_id, key_id))


UPDATE_SIGNING_KEY = "UPDATE sending_domains SET dkim_key_id = %s WHERE id = %s"


def update_signing_key(conn: psycopg.Connection, domain_id: int, key_id: int) -> None:
    conn.execute(UPDATE_SIGNING_KEY, (key_id, domain_id))


# A key shared with other domains (domain add --reuse-key-of) lives on while any uses it.
DELETE_UNUSED_KEY = """
DELETE FROM dkim_keys k
 WHERE k.id = %(id)s
   AND NOT EXISTS (SELECT 1 FROM sending_domains d WHERE d.dkim_key_id = %(id)s)
   AND NOT EXISTS (SELECT 1 FROM dkim_key_rotations r WHERE r.dkim_key_id = %(id)s)"""


def delete_unused_key(conn: psycopg.Connection, key_id: int) -> bool:
    """Delete the key (private half included) unless a domain still signs with or publishes
    it; True when it was deleted."""
    return conn.execute(DELETE_UNUSED_KEY, {"id": key_id}).rowcount == 1


LOCK_DOMAIN = "SELECT id FROM sending_domains WHERE id = %s FOR UPDATE"


def lock_domain(conn: psycopg.Connection, domain_id: int) -> None:
    """Serialise rotation steps of one domain (two admins switching at once)."""
    conn.execute(LOCK_DOMAIN, (domain_id,))
