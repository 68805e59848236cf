"""Account-scoped dashboard links in PostgreSQL (migration 0042): hashed tokens."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from txrelay.errors import NotFound
from txrelay.policy.web_access import StoredLink, new_token, token_hash

Conn = psycopg.Connection[Any]

INSERT_LINK = """
INSERT INTO web_links (account_id, token_hash, created_at, expires_at)
VALUES (%(account_id)s, %(hash)s, %(now)s, %(expires)s)
RETURNING id"""


def insert_link(
    conn: Conn, account_id: int, token_hash: str, now: dt.datetime, expires_at: dt.datetime
) -> int:
    row = conn.execute(
        INSERT_LINK,
        {"account_id": account_id, "hash": token_hash, "now": now, "expires": expires_at},
    ).fetchone()
    assert row is not None
    return int(row["id"])


@dataclass(frozen=True)
class MintedLink:
    """A link just made: its token exists only here (the database keeps its hash)."""

    id: int
    token: str
    expires_at: dt.datetime


def mint_link(conn: Conn, account_id: int, now: dt.datetime, expires_at: dt.datetime) -> MintedLink:
    """A new account-scoped link, as `txrelay web link` and the low-quota reminder make it."""
    token = new_token()
    link_id = insert_link(conn, account_id, token_hash(token), now, expires_at)
    return MintedLink(link_id, token, expires_at)


LIST_LINKS = """
SELECT w.id, a.name AS account, w.created_at, w.expires_at, w.revoked_at
  FROM web_links w JOIN accounts a ON a.id = w.account_id
 WHERE (%(account)s::text IS NULL OR a.name = %(account)s)
 ORDER BY w.id"""


def list_links(conn: Conn, account: str | None) -> list[dict[str, Any]]:
    return conn.execute(LIST_LINKS, {"account": account}).fetchall()


REVOKE_LINK = """
UPDATE web_links SET revoked_at = COALESCE(revoked_at, %(now)s) WHERE id = %(id)s
RETURNING id, revoked_at"""


def revoke_link(conn: Conn, link_id: int, now: dt.datetime) -> dt.datetime:
    """Revoke link `link_id` (again: keeps the first revocation time)."""
    row = conn.execute(REVOKE_LINK, {"id": link_id, "now": now}).fetchone()
    if row is None:
        raise NotFound(f"no dashboard link {link_id}; see 'txrelay web links'")
    revoked_at: dt.datetime = row["revoked_at"]
    return revoked_at


FIND_LINK = """
SELECT a.name AS account, a.deleted_at IS NOT NULL AS account_deleted, w.expires_at,
       w.revoked_at
  FROM web_links w JOIN accounts a ON a.id = w.account_id
 WHERE w.token_hash = %(hash)s"""


def find_link(conn: Conn, token_hash: str) -> StoredLink | None:
    row = conn.execute(FIND_LINK, {"hash": token_hash}).fetchone()
    if row is None:
        return None
    return StoredLink(
        row["account"], row["expires_at"], row["revoked_at"], bool(row["account_deleted"])
    )
