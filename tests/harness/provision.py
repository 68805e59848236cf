"""Provisioning through the real CLI (a subprocess), and DKIM checks against the database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import psycopg

from tests.harness.processes import TXRELAY, run, wait_until

# What the domain's DNS would publish: the signing key and every pending or retiring key.
SELECT_DNS_KEY = """
SELECT k.algorithm, k.public_key_b64
  FROM sending_domains d
  JOIN dkim_keys k ON k.id = d.dkim_key_id OR k.id = d.second_dkim_key_id
       OR k.id IN (SELECT r.dkim_key_id FROM dkim_key_rotations r WHERE r.domain_id = d.id)
 WHERE d.domain = %s AND k.selector = %s"""


@dataclass(frozen=True)
class Provisioned:
    account: str
    account_id: int
    connection: str
    username: str
    password: str
    domains: tuple[str, ...]

    @property
    def domain(self) -> str:
        return self.domains[0]

    def address(self, local: str = "shop") -> str:
        return f"{local}@{self.domain}"


def txrelay_json(config_file: Path, *args: str) -> Any:
    """`txrelay --config FILE --json ARGS…`; its one JSON document."""
    done = run([TXRELAY, "--config", str(config_file), "--json", *args])
    return json.loads(done.stdout)


def provision(config_file: Path, name: str, *, domain_count: int = 1,
              rate_limit: int | None = None,
              list_help: str = "https://help.example.com/unsubscribe") -> Provisioned:
    """An account with its sending domain(s) and one connection holding all of them."""
    account = txrelay_json(config_file, "account", "create", name, "--admin-email",
                           f"admin@{name}.example.com")
    domains = tuple(f"{'abcdefgh'[i]}.{name}.example.com" for i in range(domain_count))
    for domain in domains:
        txrelay_json(config_file, "domain", "add", name, domain, "--list-help", list_help)
    args = ["connection", "create", name, "shop"]
    for domain in domains:
        args += ["--domain", domain]
    if rate_limit is not None:
        args += ["--rate-limit", str(rate_limit)]
    connection = txrelay_json(config_file, *args)
    return Provisioned(account=name, account_id=int(account["id"]),
                       connection=connection["connection"], username=connection["username"],
                       password=connection["password"], domains=domains)


def dkim_dns(database_url: str) -> Any:
    """A dkimpy dnsfunc answering <selector>._domainkey.<domain> as the zone would (the
    signing key and any key being rotated in or out), from dkim_keys, never DNS."""

    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        selector, _, domain = text.rstrip(".").partition("._domainkey.")
        with psycopg.connect(database_url) as conn:
            row = conn.execute(SELECT_DNS_KEY, (domain.lower(), selector.lower())).fetchone()
        if row is None:
            return None
        algorithm, public_key = row
        return f"v=DKIM1; k={algorithm}; p={public_key}".encode()

    return lookup


def verify_dkim(raw: bytes, database_url: str) -> bool:
    return bool(dkim.verify(raw, dnsfunc=dkim_dns(database_url)))


def dkim_tags(raw: bytes) -> dict[str, str]:
    """The tags of the (first) DKIM-Signature header, whitespace removed."""
    import email

    message = email.message_from_bytes(raw)
    signature = message.get("DKIM-Signature")
    assert signature is not None, "no DKIM-Signature header"
    flat = "".join(str(signature).split())
    return dict(part.split("=", 1) for part in flat.split(";") if "=" in part)


def provision_many(config_file: Path, names: list[str], **options: Any) -> list[Provisioned]:
    """Several accounts at once (each CLI call is a process start of about a second)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return list(pool.map(lambda name: provision(config_file, name, **options), names))


SELECT_USAGE = """
SELECT (SELECT count(*) FROM ledger WHERE account_id = %(a)s) AS ledger_rows,
       (SELECT count(*) FROM ledger WHERE account_id = %(a)s AND billing = 'overage')
           AS overage_rows,
       (SELECT count(*) FROM messages WHERE account_id = %(a)s) AS messages,
       (SELECT coalesce(sum(used), 0) FROM quota_blocks WHERE account_id = %(a)s) AS used"""

SELECT_PENDING = "SELECT count(*) FROM ledger WHERE account_id = %(a)s AND billing = 'pending'"


@dataclass(frozen=True)
class Usage:
    ledger_rows: int
    overage_rows: int
    messages: int
    used: int


def account_usage(database_url: str, account_id: int) -> Usage:
    """What PostgreSQL has recorded for an account, once the milter's settler has billed
    every recorded recipient to a block or as overage (it does so within a second)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        wait_until(lambda: _pending(conn, account_id) == 0, 10,
                   f"the milter settling account {account_id}'s ledger rows")
        row = conn.execute(SELECT_USAGE, {"a": account_id}).fetchone()
    assert row is not None
    return Usage(*(int(value) for value in row))


def _pending(conn: psycopg.Connection, account_id: int) -> int:
    row = conn.execute(SELECT_PENDING, {"a": account_id}).fetchone()
    return int(row[0]) if row is not None else 0
