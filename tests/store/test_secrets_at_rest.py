"""DKIM private keys and webhook secrets sealed at rest (dump, KEK rotation, sealing old
clear values) and the daemons' least-privilege role, against a database of their own (a
rotation re-seals every key of a database, which the run's shared one must not see)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dkim
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import ADMIN_DSN
from tests.store.builders import make_tenant
from tests.store.test_ledger import message
from tests.unit.test_policy_signing import nacl_shim  # noqa: F401 - a fixture (Ed25519)
from txrelay.config import DatabaseConfig, DnsConfig, QuotaConfig
from txrelay.errors import InvalidInput
from txrelay.kek import (
    OLD_SUFFIX,
    WEBHOOK_SECRET_AAD,
    KeyRing,
    generate_kek,
    is_sealed,
    write_kek_file,
)
from txrelay.provisioning import domains
from txrelay.provisioning.accounts import create_account
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.provisioning.domains import KeyChoice
from txrelay.provisioning.key_sealing import clear_key_count, rotate_kek, seal_clear_keys
from txrelay.provisioning.webhooks import add_webhook
from txrelay.signing import queued_header, sign
from txrelay.store import database
from txrelay.store.ledger import record_acceptance
from txrelay.store.policy import PolicyLoader, fetch_policy_rows
from txrelay.store.webhooks import get_webhook

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
QUOTA = QuotaConfig(demo_rate_limit=25)
MESSAGE_HEADERS = [(b"From", b"Shop <orders@{domain}>"), (b"To", b"c@example.org"),
                   (b"Subject", b"Your order")]
BODY = b"Thank you.\r\n"

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture()
def own_database() -> Iterator[str]:
    """A migrated database of this test alone, dropped afterwards."""
    name = f"txrelay_secrets_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url) as conn:
            database.migrate(conn)
        yield url
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def conn(own_database: str) -> Iterator[Conn]:
    with psycopg.connect(own_database, autocommit=True,
                         row_factory=dict_row) as connection:  # type: ignore[arg-type]
        yield connection


@pytest.fixture()
def kek_path(tmp_path: Path) -> Path:
    path = tmp_path / "kek"
    write_kek_file(path, generate_kek())
    return path


def _add_domain(conn: Conn, keys: KeyRing, name: str, algorithm: str) -> str:
    account = f"Shop {name}"
    if conn.execute("SELECT 1 FROM accounts WHERE name = %s", (account,)).fetchone() is None:
        create_account(conn, QUOTA, NOW, account, f"ops@{name}")
    domains.add_domain(conn, NOW, account, name, f"https://{name}/help",
                       KeyChoice(None, algorithm), keys=keys)
    return name


def _stored(conn: Conn) -> list[str]:
    rows: Any = conn.execute("SELECT private_key_pem FROM dkim_keys ORDER BY id").fetchall()
    conn.rollback()
    return [r["private_key_pem"] for r in rows]


def _signs_and_verifies(conn: Conn, keys: KeyRing | None, domain: str) -> bool:
    """The policy the milter would load signs a message that verifies against the key's
    published record."""
    policy = PolicyLoader(QUOTA, keys).load(conn).domains[domain]
    conn.rollback()
    found = domains.get_domain(conn, domain)
    headers = [(n, v.replace(b"{domain}", domain.encode())) for n, v in MESSAGE_HEADERS]
    value = sign([(n, queued_header(v)) for n, v in headers], BODY, domain=domain,
                 selector=policy.selector, signing_key=policy.signing_key)
    record = (f"v=DKIM1; k={found.key.algorithm}; p={found.key.public_key_b64}").encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        assert name == f"{found.key.selector}._domainkey.{domain}.".encode()
        return record

    signed = b"".join([b"DKIM-Signature: " + value.encode().replace(b"\n", b"\r\n") + b"\r\n",
                       *(n + b": " + v + b"\r\n" for n, v in headers), b"\r\n", BODY])
    return bool(dkim.verify(signed, dnsfunc=dnsfunc))


def _pem_body(pem: str) -> list[str]:
    """The base64 lines of a PEM (what a leak of the key would show)."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_a_database_dump_holds_no_private_key_in_clear(conn: Conn, own_database: str,
                                                       kek_path: Path) -> None:
    keys = KeyRing.load(kek_path)
    _add_domain(conn, keys, "rsa-shop.example", "rsa")
    _add_domain(conn, keys, "ed-shop.example", "ed25519")
    known = [keys.open(value) for value in _stored(conn)]
    # A key stored in clear by an older release, sealed by 'txrelay keys encrypt'.
    legacy = make_tenant(conn, "legacy")
    conn.commit()
    assert clear_key_count(conn) == (1, 3)
    assert seal_clear_keys(conn, keys).sealed == 1
    assert clear_key_count(conn) == (0, 3)
    known.append(legacy.keys.private_key_pem)

    dump = _pg_dump(own_database)

    assert "dkim_keys" in dump and "txrelay-aes256gcm:" in dump  # the rows are in it
    assert "PRIVATE KEY" not in dump
    public: Any = conn.execute("SELECT public_key_b64 FROM dkim_keys").fetchall()
    # An RSA PEM body holds the modulus, which is public (p= of the DNS record) and may show
    # through the same base64 alignment; every other line is private material.
    private_lines = [line for pem in known for line in _pem_body(pem)
                     if not any(line in r["public_key_b64"] for r in public)]
    assert len(private_lines) > 3 * len(known)
    for line in private_lines:
        assert line not in dump, "a line of a private key's PEM body is in the dump"
    assert _signs_and_verifies(conn, keys, legacy.domain)


@pytest.mark.usefixtures("nacl_shim")
def test_kek_rotation_keeps_every_key_usable_and_the_old_kek_stops_opening_them(
        conn: Conn, kek_path: Path) -> None:
    keys = KeyRing.load(kek_path)
    rsa_domain = _add_domain(conn, keys, "rsa-shop.example", "rsa")
    ed_domain = _add_domain(conn, keys, "ed-shop.example", "ed25519")
    before = _stored(conn)
    old_kek = kek_path.read_text()

    report = rotate_kek(conn, kek_path)

    after = _stored(conn)
    assert report.sealed == 2 and report.kek_id != keys.current_id
    assert all(is_sealed(v) and report.kek_id in v for v in after)
    assert set(before).isdisjoint(after)
    assert (kek_path.with_name("kek" + OLD_SUFFIX)).read_text() == old_kek
    assert oct(kek_path.stat().st_mode & 0o777) == "0o640"
    # Only the new KEK now: the previous file is deleted, as the admin does when done.
    kek_path.with_name("kek" + OLD_SUFFIX).unlink()
    fresh = KeyRing.load(kek_path)
    assert _signs_and_verifies(conn, fresh, rsa_domain)
    assert _signs_and_verifies(conn, fresh, ed_domain)
    # A milter that loaded the old KEK before the rotation picks the new file up by itself.
    assert _signs_and_verifies(conn, keys, rsa_domain)
    old_only = kek_path.with_name("old-only")
    old_only.write_text(old_kek)
    with pytest.raises(InvalidInput, match="sealed with KEK"):
        KeyRing.load(old_only).open(after[0])


def test_a_rotation_that_cannot_open_a_key_changes_neither_the_keys_nor_the_kek_file(
        conn: Conn, kek_path: Path) -> None:
    keys = KeyRing.load(kek_path)
    _add_domain(conn, keys, "rsa-shop.example", "rsa")
    conn.execute("UPDATE dkim_keys SET private_key_pem = 'txrelay-aes256gcm:0000:AAAA'")
    _add_domain(conn, keys, "other.example", "rsa")
    conn.commit()
    stored, old_kek = _stored(conn), kek_path.read_text()

    with pytest.raises(InvalidInput, match="nothing was changed"):
        rotate_kek(conn, kek_path)

    assert _stored(conn) == stored and kek_path.read_text() == old_kek
    assert not kek_path.with_name("kek" + OLD_SUFFIX).exists()


def test_the_daemons_role_cannot_update_accounts_but_reads_policy_and_records_mail(
        conn: Conn, own_database: str, kek_path: Path) -> None:
    keys = KeyRing.load(kek_path)
    domain = _add_domain(conn, keys, "rsa-shop.example", "rsa")
    tenant = make_tenant(conn, "daemon")
    conn.commit()
    role, password = f"txrelay_milter_{secrets.token_hex(3)}", secrets.token_hex(12)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    milter_url = _with_user(own_database, role, password)
    try:
        config = DatabaseConfig(url=own_database, milter_url=milter_url)
        assert database.grant_daemon_role(conn, config) == role
        conn.commit()
        with psycopg.connect(milter_url, autocommit=True,
                             row_factory=dict_row) as milter:  # type: ignore[arg-type]
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied for table accounts"):
                milter.execute("UPDATE accounts SET low_quota_threshold = 1")
            milter.rollback()
            for sql in ("UPDATE dkim_keys SET selector = 'x'",
                        "UPDATE sending_domains SET second_dkim_key_id = dkim_key_id",
                        "UPDATE sending_domains SET list_help = 'https://x.example/'",
                        "UPDATE connections SET enabled = false",
                        "DELETE FROM credentials",
                        "INSERT INTO schema_migrations VALUES (99, 'x')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    milter.execute(sql)
                milter.rollback()
            # The tracker's DKIM lookups: record a check, mark a pending domain published.
            milter.execute("UPDATE sending_domains SET dkim_published_at = now() "
                           "WHERE dkim_published_at IS NULL AND domain = 'none.invalid'")
            milter.execute("INSERT INTO dkim_publication_checks (domain_id, checked_at, "
                           "published, detail) SELECT id, now(), false, 'x' "
                           "FROM sending_domains WHERE domain = 'none.invalid'")
            rows = fetch_policy_rows(milter)
            assert {r["domain"] for r in rows["domains"]} >= {domain, tenant.domain}
        # Every right daemon_grants lists (migration 0034) is the role's, and no more.
        for grant in conn.execute("SELECT privileges, objects FROM daemon_grants").fetchall():
            privileges, _, column = grant["privileges"].partition(" (")
            for table in grant["objects"].split(","):
                for privilege in privileges.split(","):
                    check = (("has_column_privilege(%s, %s, %s, %s)",
                              (role, table.strip(), column.rstrip(")"), privilege.strip()))
                             if column else ("has_table_privilege(%s, %s, %s)",
                                             (role, table.strip(), privilege.strip())))
                    held: Any = conn.execute(f"SELECT {check[0]} AS ok", check[1]).fetchone()
                    assert held["ok"], (table, privilege, column)
        assert not conn.execute("SELECT has_table_privilege(%s, 'webhooks', 'UPDATE') AS ok",
                                (role,)).fetchone()["ok"]  # type: ignore[index]
        conn.rollback()
        with psycopg.connect(milter_url, autocommit=True,
                             row_factory=dict_row) as milter:  # type: ignore[arg-type]
            assert _signs_and_verifies(milter, keys, domain)
            recorded = record_acceptance(milter, message(tenant, ["a@x.example"]))
            milter.commit()
            assert recorded.message_row_id is not None
        row: Any = conn.execute("SELECT last_used_at FROM connections WHERE id = %s",
                                (tenant.connection_id,)).fetchone()
        assert row["last_used_at"] is not None
        conn.rollback()
    finally:
        conn.rollback()
        with psycopg.connect(own_database, autocommit=True) as owner:
            owner.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_no_daemon_role_is_granted_when_milter_url_names_none_or_the_owner(
        conn: Conn, own_database: str) -> None:
    assert database.grant_daemon_role(conn, DatabaseConfig(url=own_database)) is None
    same = DatabaseConfig(url=own_database, milter_url=own_database)
    assert database.grant_daemon_role(conn, same) is None
    missing = DatabaseConfig(url=own_database,
                             milter_url=_with_user(own_database, "no_such_role_x", "pw"))
    assert database.grant_daemon_role(conn, missing) is None


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}{port}"))


def _pg_dump(url: str) -> str:
    parts = urlsplit(url)
    environment = {**os.environ, "PGPASSWORD": parts.password or ""}
    done = subprocess.run(
        ["pg_dump", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
         "-U", parts.username or "postgres", "-d", parts.path.strip("/")],
        capture_output=True, text=True, env=environment, timeout=120, check=True)
    return done.stdout


# -- webhook signing secrets follow the KEK ---------------------------------------------------

def _add_webhook(conn: Conn, keys: KeyRing | None, account: str) -> str:
    return add_webhook(conn, keys, DnsLookup(DnsConfig()), NOW, account,
                       "http://10.0.0.7/hook", None, True).secret


def _stored_secret(conn: Conn, webhook_id: int) -> str:
    row: Any = conn.execute("SELECT secret FROM webhooks WHERE id = %s",
                            (webhook_id,)).fetchone()
    return str(row["secret"])


def test_rotate_kek_reseals_webhook_secrets_and_they_open_without_the_old_kek(
        conn: Conn, kek_path: Path) -> None:
    keys = KeyRing.load(kek_path)
    _add_domain(conn, keys, "hook-shop.example", "rsa")
    secret = _add_webhook(conn, keys, "Shop hook-shop.example")
    webhook_id = int(conn.execute("SELECT max(id) AS id FROM webhooks").fetchone()["id"])  # type: ignore[index]
    before = _stored_secret(conn, webhook_id)
    report = rotate_kek(conn, kek_path)
    after = _stored_secret(conn, webhook_id)
    assert after != before and is_sealed(after) and report.kek_id in after
    kek_path.with_name("kek" + OLD_SUFFIX).unlink()
    assert KeyRing.load(kek_path).open(after, aad=WEBHOOK_SECRET_AAD) == secret
    assert get_webhook(conn, webhook_id).secret == after


def test_keys_encrypt_seals_secrets_added_without_a_kek(conn: Conn, kek_path: Path) -> None:
    keys = KeyRing.load(kek_path)
    _add_domain(conn, keys, "clear-shop.example", "rsa")
    secret = _add_webhook(conn, None, "Shop clear-shop.example")
    webhook_id = int(conn.execute("SELECT max(id) AS id FROM webhooks").fetchone()["id"])  # type: ignore[index]
    assert _stored_secret(conn, webhook_id) == secret
    seal_clear_keys(conn, keys)
    sealed = _stored_secret(conn, webhook_id)
    assert is_sealed(sealed) and keys.open(sealed, aad=WEBHOOK_SECRET_AAD) == secret
    seal_clear_keys(conn, keys)  # again: unchanged
    assert _stored_secret(conn, webhook_id) == sealed
