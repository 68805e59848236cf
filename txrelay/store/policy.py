"""Loads the connection-policy snapshot the milter caches from PostgreSQL (a few queries),
and keeps a local copy of it so that a milter restarted during a PostgreSQL outage can still
authorise (the copy holds the DKIM private keys as the database does, sealed with the KEK;
it is written mode 0600, atomically)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import psycopg

from txrelay.atomic_file import write_atomically
from txrelay.config import QuotaConfig
from txrelay.errors import InvalidInput
from txrelay.kek import KeyRing, is_sealed
from txrelay.policy.snapshot import (
    AccountPolicy,
    ConnectionPolicy,
    DomainKey,
    DomainPolicy,
    PolicySnapshot,
    effective_rate_limit,
)
from txrelay.signing import SigningKey, load_signing_key
from txrelay.store.journal import private_directory

log = logging.getLogger("txrelay.milter.policy")

SELECT_VERSION = "SELECT version FROM policy_version"

SELECT_ACCOUNTS = """
SELECT a.id, txrelay_account_paid(a.id) AS paid, a.name,
       a.disabled_at IS NOT NULL OR a.deleted_at IS NOT NULL AS disabled, a.overage_cap
  FROM accounts a"""

SELECT_CONNECTIONS = """
SELECT cr.username, co.id, co.name, co.account_id, co.enabled, co.rate_limit, co.bounces,
       co.sandbox,
       left(encode(sha256(convert_to(cr.password_hash, 'UTF8')), 'hex'), 16)
           AS credential_version
  FROM credentials cr
  JOIN connections co ON co.id = cr.connection_id
 WHERE co.deleted_at IS NULL"""

SELECT_CONNECTION_DOMAINS = """
SELECT cd.connection_id, sd.domain
  FROM connection_domains cd
  JOIN sending_domains sd ON sd.id = cd.domain_id"""

# One row per signing key: a dual-signing domain has two, its first key's row first.
SELECT_DOMAINS = """
SELECT sd.domain, sd.account_id, sd.list_help, sd.return_path,
       sd.dkim_published_at IS NOT NULL AS published,
       k.id = sd.dkim_key_id AS first_key, k.id AS key_id, k.selector, k.algorithm,
       k.private_key_pem
  FROM sending_domains sd
  JOIN dkim_keys k ON k.id = sd.dkim_key_id OR k.id = sd.second_dkim_key_id
 ORDER BY sd.domain, first_key DESC"""


def current_version(conn: psycopg.Connection) -> int:
    row: Any = conn.execute(SELECT_VERSION).fetchone()
    return int(row["version"])


class PolicyLoader:
    """Builds snapshots; keeps parsed DKIM keys between reloads so each is parsed once."""

    def __init__(
        self, quota: QuotaConfig, keys: KeyRing | None = None, *, require_published: bool = True
    ) -> None:
        self.quota = quota
        self.keys = keys  # None: only keys stored in clear (before 'txrelay keys encrypt')
        # [dkim] require_published: off, every domain counts as published.
        self.require_published = require_published
        self._keys: dict[tuple[int, str], SigningKey] = {}
        # username -> (credential version, enabled, since): when each credential was first
        # seen in its current state, so that sessions older than it can be told apart.
        self._credentials: dict[str, tuple[str, bool, float]] = {}

    def load(self, conn: psycopg.Connection) -> PolicySnapshot:
        return self.build(fetch_policy_rows(conn))

    def build(self, rows: PolicyRows, credentials_since: float | None = None) -> PolicySnapshot:
        """The snapshot from its rows (fresh from PostgreSQL, or from the local copy).
        credentials_since: from when (wall clock) a credential that changed in these rows is
        the one this node's Dovecot checks (default: now)."""
        accounts = {int(r["id"]): _account(r) for r in rows["accounts"]}
        domains_of: dict[int, set[str]] = {}
        for r in rows["connection_domains"]:
            domains_of.setdefault(int(r["connection_id"]), set()).add(r["domain"])
        connections = self._stamp_credentials(
            {r["username"]: self._connection(r, accounts, domains_of) for r in rows["connections"]},
            time.time() if credentials_since is None else credentials_since,
        )
        previous_keys, self._keys = self._keys, {}
        domains: dict[str, DomainPolicy] = {}
        broken: set[str] = set()
        # A copy written before dual signing has one row per domain, without first_key.
        for r in rows["domains"]:
            if r["domain"] in broken:
                continue
            domain = self._domain(r, previous_keys, domains.get(r["domain"]))
            if domain is None:  # one unreadable key: the domain is left out (4xx)
                broken.add(r["domain"])
                domains.pop(r["domain"], None)
            else:
                domains[domain.domain] = domain
        return PolicySnapshot(int(rows["version"]), connections, domains, accounts)

    def _connection(
        self, r: dict[str, Any], accounts: dict[int, AccountPolicy], domains_of: dict[int, set[str]]
    ) -> ConnectionPolicy:
        account = accounts.get(int(r["account_id"]), AccountPolicy(int(r["account_id"]), False))
        return ConnectionPolicy(
            id=int(r["id"]),
            name=r["name"],
            account_id=account.id,
            enabled=bool(r["enabled"]),
            domains=frozenset(domains_of.get(int(r["id"]), ())),
            rate_limit=effective_rate_limit(
                r["rate_limit"], account.paid, self.quota.demo_rate_limit
            ),
            credential=str(r.get("credential_version") or ""),
            # A local copy written before migration 0017 has no column: the relay's default.
            keep_bounces=r.get("bounces") == "keep",
            # A local copy written before migration 0041 has no column: live.
            sandbox=bool(r.get("sandbox", False)),
        )

    def _stamp_credentials(
        self, connections: dict[str, ConnectionPolicy], now: float
    ) -> dict[str, ConnectionPolicy]:
        """Each connection with the time its credential reached its current state (rotated
        or re-enabled: `now`; unchanged: as before; a login not seen before: 0.0)."""
        previous = self._credentials
        seen: dict[str, tuple[str, bool, float]] = {}
        stamped = {}
        for username, connection in connections.items():
            before = previous.get(username)
            if before is None:  # new here: no session can hold an older credential of it
                since = 0.0
            elif before[:2] == (connection.credential, connection.enabled):
                since = before[2]
            else:
                since = now
            seen[username] = (connection.credential, connection.enabled, since)
            stamped[username] = dataclasses.replace(connection, credential_since=since)
        self._credentials = seen
        return stamped

    def _domain(
        self,
        r: dict[str, Any],
        previous_keys: dict[tuple[int, str], SigningKey],
        first: DomainPolicy | None,
    ) -> DomainPolicy | None:
        """A domain with its parsed key; a domain whose key cannot be read is left out (its
        mail gets a 4xx) and logged, rather than stopping every other domain. A sealed key is
        opened once per stored value (the cache key is the value's hash), then kept parsed in
        memory only."""
        fingerprint = hashlib.sha256(r["private_key_pem"].encode()).hexdigest()
        cache_key = (int(r["key_id"]), fingerprint)
        signing_key = self._keys.get(cache_key) or previous_keys.get(cache_key)
        if signing_key is None:
            try:
                signing_key = load_signing_key(r["algorithm"], self._open(r["private_key_pem"]))
            except InvalidInput as exc:
                log.error(
                    "event=bad_dkim_key domain=%s selector=%s error=%r",
                    r["domain"],
                    r["selector"],
                    str(exc),
                )
                return None
            self._keys[cache_key] = signing_key
        if first is not None and not r.get("first_key", True):
            second = DomainKey(r["selector"], r["algorithm"], signing_key)
            return dataclasses.replace(first, second_key=second)
        return DomainPolicy(
            domain=r["domain"],
            account_id=int(r["account_id"]),
            list_help=r["list_help"],
            selector=r["selector"],
            algorithm=r["algorithm"],
            signing_key=signing_key,
            published=bool(r.get("published", True)) or not self.require_published,
            return_path=r.get("return_path") or "",
        )

    def _open(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored
        if self.keys is None:
            raise InvalidInput(
                "the key is sealed and this milter has no key-encryption key ([database] kek_file)"
            )
        return self.keys.open(stored)


def _account(r: dict[str, Any]) -> AccountPolicy:
    """An account's row; a local copy written before migration 0033 has only id and paid."""
    cap = r.get("overage_cap")
    return AccountPolicy(
        int(r["id"]),
        bool(r["paid"]),
        str(r.get("name") or ""),
        bool(r.get("disabled")),
        None if cap is None else int(cap),
    )


PolicyRows = dict[str, Any]  # version + the rows of each query, as JSON-able values


def fetch_policy_rows(conn: psycopg.Connection) -> PolicyRows:
    """Everything the milter decides with. The version is read first: a change committed
    while loading makes the data newer than the version, so the next poll loads again."""
    with conn.transaction():
        return {
            "version": current_version(conn),
            "accounts": _rows(conn, SELECT_ACCOUNTS),
            "connection_domains": _rows(conn, SELECT_CONNECTION_DOMAINS),
            "connections": _rows(conn, SELECT_CONNECTIONS),
            "domains": _rows(conn, SELECT_DOMAINS),
        }


def save_policy_rows(path: Path, rows: PolicyRows) -> None:
    """Write the local copy: temp file mode 0600 in the same directory, fsync, rename."""
    private_directory(path.parent)
    write_atomically(path, json.dumps(rows, separators=(",", ":")), mode=0o600)


def read_policy_rows(path: Path) -> PolicyRows | None:
    """The local copy, or None when there is none or it cannot be read whole."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("event=policy_copy_unreadable path=%s error=%r", path, str(exc))
        return None
    wanted = {"version", "accounts", "connection_domains", "connections", "domains"}
    return rows if isinstance(rows, dict) and wanted <= set(rows) else None


def _rows(conn: psycopg.Connection, sql: str) -> list[dict[str, Any]]:
    return conn.execute(sql).fetchall()  # type: ignore[return-value]
