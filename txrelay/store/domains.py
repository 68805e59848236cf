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
class LastDkimCheck:
    """The last DKIM publication check of a domain (domain check or the tracker)."""

    checked_at: dt.datetime
    published: bool
    detail: str


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
    second_key: DkimKey | None = None  # signs too (the other algorithm: dual signing)
    published_at: dt.datetime | None = None  # None: pending, live mail refused
    last_check: LastDkimCheck | None = None
    return_path: str | None = None  # its own bounce domain; None: the relay-wide one

    @property
    def signing_keys(self) -> tuple[DkimKey, ...]:
        """Every key each message is signed with: one, or an RSA and an Ed25519 key."""
        return (self.key,) if self.second_key is None else (self.key, self.second_key)

    def signing_key_of(self, algorithm: str) -> DkimKey | None:
        return next((k for k in self.signing_keys if k.algorithm == algorithm), None)

    def rotating_key(self, state: str) -> RotatingKey | None:
        """The first pending or retiring key (there is at most one pending key)."""
        return next((r for r in self.rotating if r.state == state), None)

    @property
    def selectors(self) -> set[str]:
        """Every selector whose record this domain publishes."""
        return {
            *(k.selector for k in self.signing_keys),
            *(r.key.selector for r in self.rotating),
        }


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
INSERT INTO sending_domains (account_id, domain, list_help, dkim_key_id, second_dkim_key_id)
VALUES (%s, %s, %s, %s, %s)
RETURNING id"""


def insert_domain(
    conn: psycopg.Connection,
    account_id: int,
    domain: str,
    list_help: str,
    dkim_key_id: int,
    second_dkim_key_id: int | None = None,
) -> int:
    """A new domain is pending (dkim_published_at NULL) until its records are checked."""
    row = conn.execute(
        INSERT_DOMAIN, (account_id, domain, list_help, dkim_key_id, second_dkim_key_id)
    ).fetchone()
    return int(row["id"])  # type: ignore[index, call-overload]


SELECT_DOMAINS = """
SELECT d.id, d.account_id, a.name AS account_name, d.domain, d.list_help, d.created_at,
       d.dkim_published_at, c.checked_at, c.published AS check_published, c.detail AS check_detail,
       d.return_path, k.id AS key_id, k.selector, k.algorithm, k.public_key_b64,
       k2.id AS key2_id, k2.selector AS key2_selector, k2.algorithm AS key2_algorithm,
       k2.public_key_b64 AS key2_public_key_b64
  FROM sending_domains d
  JOIN accounts a ON a.id = d.account_id
  JOIN dkim_keys k ON k.id = d.dkim_key_id
  LEFT JOIN dkim_keys k2 ON k2.id = d.second_dkim_key_id
  LEFT JOIN dkim_publication_checks c ON c.domain_id = d.id
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
            _second_key(row),
            row["dkim_published_at"],
            None
            if row["checked_at"] is None
            else LastDkimCheck(row["checked_at"], row["check_published"], row["check_detail"]),
            row["return_path"],
        )
        for row in rows
    ]


def _second_key(row: dict[str, Any]) -> DkimKey | None:
    if row["key2_id"] is None:
        return None
    return DkimKey(
        row["key2_id"],
        row["account_id"],
        row["key2_selector"],
        row["key2_algorithm"],
        row["key2_public_key_b64"],
    )


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
UPDATE_SECOND_SIGNING_KEY = "UPDATE sending_domains SET second_dkim_key_id = %s WHERE id = %s"


def update_signing_key(
    conn: psycopg.Connection, domain_id: int, key_id: int, *, second: bool = False
) -> None:
    """Replace the domain's (first, or with second=True its second) signing key."""
    conn.execute(UPDATE_SECOND_SIGNING_KEY if second else UPDATE_SIGNING_KEY, (key_id, domain_id))


UPSERT_PUBLICATION_CHECK = """
INSERT INTO dkim_publication_checks (domain_id, checked_at, published, detail)
VALUES (%(domain_id)s, %(checked_at)s, %(published)s, %(detail)s)
ON CONFLICT (domain_id) DO UPDATE
   SET checked_at = excluded.checked_at, published = excluded.published,
       detail = excluded.detail"""

SELECT_PENDING_DOMAINS = """
SELECT d.domain
  FROM sending_domains d
  LEFT JOIN dkim_publication_checks c ON c.domain_id = d.id
 WHERE d.dkim_published_at IS NULL
 ORDER BY c.checked_at NULLS FIRST, d.id
 LIMIT %s"""


def pending_domain_names(conn: psycopg.Connection, limit: int) -> list[str]:
    """Up to LIMIT pending domains, the least recently checked (never checked) first."""
    return [row["domain"] for row in conn.execute(SELECT_PENDING_DOMAINS, (limit,)).fetchall()]  # type: ignore[call-overload]


# Only a pending domain changes (and so bumps the policy version): published stays set.
MARK_PUBLISHED = """
UPDATE sending_domains SET dkim_published_at = %(now)s
 WHERE id = %(domain_id)s AND dkim_published_at IS NULL"""


def record_publication_check(
    conn: psycopg.Connection, domain_id: int, now: dt.datetime, published: bool, detail: str
) -> bool:
    """Store the check's outcome; a pending domain whose keys are all published becomes
    published. True when this check made it so."""
    conn.execute(
        UPSERT_PUBLICATION_CHECK,
        {"domain_id": domain_id, "checked_at": now, "published": published, "detail": detail},
    )
    if not published:
        return False
    return conn.execute(MARK_PUBLISHED, {"now": now, "domain_id": domain_id}).rowcount == 1


# A key shared with other domains (domain add --reuse-key-of) lives on while any uses it.
DELETE_UNUSED_KEY = """
DELETE FROM dkim_keys k
 WHERE k.id = %(id)s
   AND NOT EXISTS (SELECT 1 FROM sending_domains d
                    WHERE d.dkim_key_id = %(id)s OR d.second_dkim_key_id = %(id)s)
   AND NOT EXISTS (SELECT 1 FROM dkim_key_rotations r WHERE r.dkim_key_id = %(id)s)"""


def delete_unused_key(conn: psycopg.Connection, key_id: int) -> bool:
    """Delete the key (private half included) unless a domain still signs with or publishes
    it; True when it was deleted."""
    return conn.execute(DELETE_UNUSED_KEY, {"id": key_id}).rowcount == 1


LOCK_DOMAIN = "SELECT id FROM sending_domains WHERE id = %s FOR UPDATE"


def lock_domain(conn: psycopg.Connection, domain_id: int) -> None:
    """Serialise rotation steps of one domain (two admins switching at once)."""
    conn.execute(LOCK_DOMAIN, (domain_id,))


# The connections that send from the domain, by name, before they lose it.
SELECT_DOMAIN_CONNECTIONS = """
SELECT c.name FROM connection_domains cd JOIN connections c ON c.id = cd.connection_id
 WHERE cd.domain_id = %s ORDER BY c.name"""
UNLINK_DOMAIN = "DELETE FROM connection_domains WHERE domain_id = %s"


def unlink_from_connections(conn: psycopg.Connection, domain_id: int) -> list[str]:
    """Take the domain from every connection that may send from it; their names."""
    names = [r["name"] for r in conn.execute(SELECT_DOMAIN_CONNECTIONS, (domain_id,)).fetchall()]  # type: ignore[call-overload]
    conn.execute(UNLINK_DOMAIN, (domain_id,))
    return names


# Pending and retiring keys go with it (dkim_key_rotations cascades).
DELETE_DOMAIN = "DELETE FROM sending_domains WHERE id = %s"


def delete_domain(conn: psycopg.Connection, domain_id: int) -> None:
    conn.execute(DELETE_DOMAIN, (domain_id,))


# A key another domain also signs with or publishes stays with its account.
KEY_SHARED = """
SELECT EXISTS (SELECT 1 FROM sending_domains d
                WHERE (d.dkim_key_id = %(key)s OR d.second_dkim_key_id = %(key)s)
                  AND d.id <> %(domain)s)
    OR EXISTS (SELECT 1 FROM dkim_key_rotations r WHERE r.dkim_key_id = %(key)s
                  AND r.domain_id <> %(domain)s) AS shared"""
COPY_KEY = """
INSERT INTO dkim_keys (account_id, selector, algorithm, private_key_pem, public_key_b64,
                       created_at)
SELECT %(account)s, selector, algorithm, private_key_pem, public_key_b64, created_at
  FROM dkim_keys WHERE id = %(key)s
RETURNING id"""
REPOINT_SIGNING_KEY = """
UPDATE sending_domains
   SET dkim_key_id = CASE WHEN dkim_key_id = %(key)s THEN %(new)s ELSE dkim_key_id END,
       second_dkim_key_id = CASE WHEN second_dkim_key_id = %(key)s THEN %(new)s
                                 ELSE second_dkim_key_id END
 WHERE id = %(domain)s"""
REPOINT_ROTATING_KEY = """
UPDATE dkim_key_rotations SET dkim_key_id = %(new)s
 WHERE domain_id = %(domain)s AND dkim_key_id = %(key)s"""
MOVE_KEY = "UPDATE dkim_keys SET account_id = %(account)s WHERE id = %(key)s"
MOVE_DOMAIN = "UPDATE sending_domains SET account_id = %(account)s WHERE id = %(domain)s"


def move_domain(
    conn: psycopg.Connection, domain_id: int, key_ids: list[int], account_id: int
) -> None:
    """Give the domain and its keys (signing, pending, retiring) to another account; a key
    the old account shares with another of its domains is copied, not taken. The domain
    must have no connection links left (unlink_from_connections)."""
    for key_id in key_ids:
        params = {"key": key_id, "domain": domain_id, "account": account_id}
        row: Any = conn.execute(KEY_SHARED, params).fetchone()
        if row["shared"]:
            copy: Any = conn.execute(COPY_KEY, params).fetchone()
            params["new"] = copy["id"]
            conn.execute(REPOINT_SIGNING_KEY, params)
            conn.execute(REPOINT_ROTATING_KEY, params)
        else:
            conn.execute(MOVE_KEY, params)
    conn.execute(MOVE_DOMAIN, {"account": account_id, "domain": domain_id})
