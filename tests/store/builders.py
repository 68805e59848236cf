"""Test data for the relay's store and milter tests, inserted with plain SQL (no CLI)."""

from __future__ import annotations

import base64
import datetime as dt
import functools
from dataclasses import dataclass, field

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    private_key_pem: str
    public_key_b64: str

    @property
    def dns_record(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key_b64}"


@functools.cache
def key_pair(algorithm: str = "rsa") -> KeyPair:
    """One key per algorithm per run: generating RSA keys per test would dominate the time."""
    if algorithm == "rsa":
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    return KeyPair(algorithm, pem, base64.b64encode(public).decode("ascii"))


@dataclass
class Tenant:
    """An account with one sending domain and one connection that may use it."""

    account_id: int
    account_name: str
    connection_id: int
    connection_name: str
    username: str
    domain: str
    selector: str
    list_help: str
    keys: KeyPair
    other_domains: list[str] = field(default_factory=list)


def make_tenant(db: psycopg.Connection, unique: str, *, demo_quota: int = 1000,
                paid: bool = False, rate_limit: int | None = None, enabled: bool = True,
                algorithm: str = "rsa", connection_name: str = "Web shop",
                overage_cap: int | None = None, disabled: bool = False,
                own_return_path: bool = False, bounces: str = "relay") -> Tenant:
    """own_return_path: the domain's return path is bounces.<domain> (domain set
    --return-path); bounces: the connection's 'relay' or 'keep'."""
    keys = key_pair(algorithm)
    domain = f"shop-{unique}.example"
    selector = "txr202611"
    list_help = f"https://{domain}/help"
    account_id = _one(db, "INSERT INTO accounts (name, admin_email, overage_cap, disabled_at) "
                          "VALUES (%s, %s, %s, CASE WHEN %s THEN now() END) RETURNING id",
                      (f"Account {unique}", f"admin@{domain}", overage_cap, disabled))
    _one(db, "INSERT INTO quota_blocks (account_id, kind, amount, booked_at) "
             "VALUES (%s, 'demo', %s, now()) RETURNING id", (account_id, demo_quota))
    if paid:
        add_block(db, account_id, "booked", 25000, used=25000, expires_in_days=30)
    key_id = _one(db, "INSERT INTO dkim_keys (account_id, selector, algorithm, private_key_pem, "
                      "public_key_b64) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                  (account_id, selector, algorithm, keys.private_key_pem, keys.public_key_b64))
    domain_id = add_domain(db, account_id, domain, key_id, list_help)
    if own_return_path:
        db.execute("UPDATE sending_domains SET return_path = %s WHERE id = %s",
                   (f"bounces.{domain}", domain_id))
    connection_id = _one(db, "INSERT INTO connections (account_id, name, enabled, rate_limit, "
                             "bounces) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                         (account_id, connection_name, enabled, rate_limit, bounces))
    username = f"u{unique}"
    _one(db, "INSERT INTO credentials (connection_id, username, password_hash) "
             "VALUES (%s, %s, '{PLAIN}x') RETURNING connection_id", (connection_id, username))
    link_domain(db, connection_id, domain_id, account_id)
    return Tenant(account_id, f"Account {unique}", connection_id, connection_name, username,
                  domain, selector, list_help, keys)


def add_domain(db: psycopg.Connection, account_id: int, domain: str, key_id: int,
               list_help: str) -> int:
    return _one(db, "INSERT INTO sending_domains (account_id, domain, list_help, dkim_key_id) "
                    "VALUES (%s, %s, %s, %s) RETURNING id",
                (account_id, domain, list_help, key_id))


def link_domain(db: psycopg.Connection, connection_id: int, domain_id: int,
                account_id: int) -> None:
    db.execute("INSERT INTO connection_domains (connection_id, domain_id, account_id) "
               "VALUES (%s, %s, %s)", (connection_id, domain_id, account_id))


def add_block(db: psycopg.Connection, account_id: int, kind: str, amount: int, *,
              used: int = 0, expires_in_days: float | None = 30) -> int:
    now = dt.datetime.now(dt.UTC)
    expires = None if expires_in_days is None else now + dt.timedelta(days=expires_in_days)
    return _one(db, "INSERT INTO quota_blocks (account_id, kind, amount, used, booked_at, "
                    "expires_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (account_id, kind, amount, used, now, expires))


def _one(db: psycopg.Connection, sql: str, params: tuple[object, ...]) -> int:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return int(next(iter(row.values())) if isinstance(row, dict) else row[0])
