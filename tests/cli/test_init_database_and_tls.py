"""`txrelay init` makes its own role and database, and checks or makes its TLS certificate."""

from __future__ import annotations

import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.cli.conftest import CliRun, run_main
from tests.conftest import ADMIN_DSN
from txrelay.config import load_config
from txrelay.provisioning import database_setup


def _admin(sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        cursor = admin.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture()
def fresh_name() -> Iterator[str]:
    """A role/database name nobody uses; both are dropped afterwards."""
    name = f"txrelay_init_{secrets.token_hex(4)}"
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'DROP ROLE IF EXISTS "{name}"')
    _admin(f'DROP ROLE IF EXISTS "{name}_milter"')


def _init(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *extra: str) -> CliRun:
    return run_main(["init", "--config-path", str(tmp_path / "etc" / "txrelay.toml"),
                     "--redis-url", "redis://127.0.0.1:6379/9",
                     "--smtp-host", "relay.example.com",
                     "--set", f"dovecot.config_dir={tmp_path / 'dovecot'}",
                     "--set", f"dovecot.base_dir={tmp_path / 'dovecot-run'}",
                     "--set", f"dovecot.auth_socket={tmp_path / 'dovecot-run' / 'auth'}",
                     "--set", f"dovecot.passdb_file={tmp_path / 'passdb' / 'passwd'}",
                     *extra], monkeypatch)


def test_init_creates_its_own_role_and_database_and_keeps_them_on_rerun(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_name: str) -> None:
    result = _init(monkeypatch, tmp_path, "--admin-url", ADMIN_DSN,
                   "--database-name", fresh_name)
    assert result.exit_code == 0, result.stderr
    config_path = tmp_path / "etc" / "txrelay.toml"
    url = urlsplit(load_config(config_path, required=True, environ={}).database.url)
    assert (url.username, url.path) == (fresh_name, f"/{fresh_name}")
    assert url.password and len(url.password) >= 22
    assert url.password not in result.stdout + result.stderr
    assert f"Database {fresh_name} owned by role {fresh_name} (not a superuser)" in \
        result.stdout
    [(superuser, createrole, createdb)] = _admin(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
        fresh_name)
    assert (superuser, createrole, createdb) == (False, False, False)
    [(owner,)] = _admin("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                        fresh_name)
    assert owner == fresh_name
    with psycopg.connect(load_config(config_path, environ={}).database.url) as conn:
        owners = {row[0] for row in conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {fresh_name}  # migrated as the role itself

    again = _init(monkeypatch, tmp_path, "--admin-url", ADMIN_DSN,
                  "--database-name", fresh_name, "--force")
    assert again.exit_code == 0, again.stderr
    assert "Database is up to date" in again.stdout
    assert urlsplit(load_config(config_path, environ={}).database.url) == url


def test_init_makes_the_daemons_role_and_the_kek_and_keeps_both_on_rerun(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_name: str) -> None:
    result = _init(monkeypatch, tmp_path, "--admin-url", ADMIN_DSN,
                   "--database-name", fresh_name)
    assert result.exit_code == 0, result.stderr
    config_path = tmp_path / "etc" / "txrelay.toml"
    config = load_config(config_path, required=True, environ={})
    milter = urlsplit(config.database.milter_url)
    assert (milter.username, milter.path) == (f"{fresh_name}_milter", f"/{fresh_name}")
    assert milter.password and milter.password not in result.stdout + result.stderr
    [(superuser, createrole, createdb)] = _admin(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
        f"{fresh_name}_milter")
    assert (superuser, createrole, createdb) == (False, False, False)
    assert f"connect as role {fresh_name}_milter" in result.stdout
    kek = Path(config.database.kek_file)
    assert kek == tmp_path / "etc" / "kek"
    assert stat.S_IMODE(kek.stat().st_mode) == 0o640
    with psycopg.connect(config.database.milter_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE accounts SET low_quota_threshold = 0")
        conn.rollback()
        assert conn.execute("SELECT version FROM policy_version").fetchone()

    kek_before = kek.read_text()
    again = _init(monkeypatch, tmp_path, "--admin-url", ADMIN_DSN,
                  "--database-name", fresh_name, "--force")
    assert again.exit_code == 0, again.stderr
    assert "Kept the key-encryption key" in again.stdout and kek.read_text() == kek_before
    assert load_config(config_path, environ={}).database.milter_url == config.database.milter_url


@pytest.mark.parametrize("rights", ["", "CREATEROLE", "CREATEDB"])
def test_init_as_an_admin_without_rights_prints_the_sql_and_writes_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_name: str, rights: str) -> None:
    weak = f"{fresh_name}_weak"
    _admin(f'CREATE ROLE "{weak}" LOGIN {rights}')
    try:
        weak_url = f"postgresql://{weak}@127.0.0.1:5432/postgres"
        result = _init(monkeypatch, tmp_path, "--admin-url", weak_url,
                       "--database-name", fresh_name)
    finally:
        _admin(f'DROP ROLE "{weak}"')
    assert result.exit_code == 1  # not 5: retrying unchanged cannot help
    first_line = result.stderr.splitlines()[0]
    assert first_line.startswith("txrelay: error: cannot create role and database")
    assert f"permission denied: role {weak} may not create roles and databases" in first_line
    assert "Traceback" not in result.stderr
    assert f"CREATE ROLE {fresh_name} LOGIN PASSWORD 'choose-a-password';" in result.stderr
    assert f"CREATE DATABASE {fresh_name} OWNER {fresh_name};" in result.stderr
    assert "txrelay init --database-url postgresql://" in result.stderr
    assert not (tmp_path / "etc").exists() and not (tmp_path / "dovecot").exists()
    assert _admin("SELECT 1 FROM pg_roles WHERE rolname = %s", fresh_name) == []
    assert _admin("SELECT 1 FROM pg_database WHERE datname = %s", fresh_name) == []


def test_init_refuses_a_database_of_that_name_that_belongs_to_another_role(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_name: str) -> None:
    _admin(f'CREATE DATABASE "{fresh_name}"')
    result = _init(monkeypatch, tmp_path, "--admin-url", ADMIN_DSN,
                   "--database-name", fresh_name)
    assert result.exit_code == 1
    assert f"database {fresh_name} exists and belongs to postgres" in result.error
    assert "--database-name" in result.error
    assert not (tmp_path / "etc").exists()
    assert _admin("SELECT 1 FROM pg_roles WHERE rolname = %s", fresh_name) == []


def test_init_without_a_certificate_makes_a_self_signed_one_and_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> None:
    result = _init(monkeypatch, tmp_path, "--database-url", database_url)
    assert result.exit_code == 0, result.stderr
    cert_file, key_file = tmp_path / "etc" / "tls" / "txrelay.crt", tmp_path / "etc" / "tls" / \
        "txrelay.key"
    assert f"TLS: Made a SELF-SIGNED certificate {cert_file}" in result.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "etc").stat().st_mode) == 0o750  # as without TLS
    smtp = load_config(tmp_path / "etc" / "txrelay.toml", environ={}).smtp
    assert (smtp.tls_cert_file, smtp.tls_key_file) == (str(cert_file), str(key_file))
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "relay.example.com"
    # The key really is the certificate's: openssl, as Postfix's TLS library, agrees.
    moduli = [subprocess.run(["openssl", kind, "-noout", "-modulus", "-in", str(path)],
                             capture_output=True, text=True, check=True).stdout
              for kind, path in (("x509", cert_file), ("rsa", key_file))]
    assert moduli[0] == moduli[1]

    again = _init(monkeypatch, tmp_path, "--database-url", database_url, "--force")
    assert again.exit_code == 0 and "TLS: Kept the SELF-SIGNED certificate" in again.stdout
    assert x509.load_pem_x509_certificate(cert_file.read_bytes()) == certificate


def _openssl_pair(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True)
    return cert, key


def test_init_with_a_certificate_and_its_key_uses_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> None:
    cert, key = _openssl_pair(tmp_path / "letsencrypt", "relay.example.com")
    result = _init(monkeypatch, tmp_path, "--database-url", database_url,
                   "--tls-cert", str(cert), "--tls-key", str(key))
    assert result.exit_code == 0, result.stderr
    assert "they belong together" in result.stdout and "SELF-SIGNED" not in result.stdout
    smtp = load_config(tmp_path / "etc" / "txrelay.toml", environ={}).smtp
    assert (smtp.tls_cert_file, smtp.tls_key_file) == (str(cert), str(key))
    assert not (tmp_path / "etc" / "tls").exists()


@pytest.mark.parametrize(("case", "message"), [
    ("missing certificate", "cannot read it (No such file or directory)"),
    ("key of another certificate", "is not the key of the certificate"),
    ("not a certificate", "not a PEM certificate"),
    ("certificate without key", "give both --tls-cert and --tls-key"),
])
def test_init_with_a_bad_certificate_is_one_line_and_writes_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, case: str,
        message: str) -> None:
    cert, key = _openssl_pair(tmp_path / "certs", "relay.example.com")
    _, other_key = _openssl_pair(tmp_path / "certs", "other.example.com")
    options = {
        "missing certificate": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)],
        "key of another certificate": ["--tls-cert", str(cert), "--tls-key", str(other_key)],
        "not a certificate": ["--tls-cert", str(key), "--tls-key", str(key)],
        "certificate without key": ["--tls-cert", str(cert)],
    }[case]
    result = _init(monkeypatch, tmp_path, "--database-url", database_url, *options)
    assert result.exit_code == 4  # invalid input: fix the file the message names
    assert message in result.error
    assert not (tmp_path / "etc").exists() and not (tmp_path / "dovecot").exists()


@pytest.mark.parametrize(("options", "status", "message"), [
    (("--admin-url", "postgresql://postgres@127.0.0.1:1/postgres"), 5,
     "cannot connect to PostgreSQL as postgresql://postgres@127.0.0.1:1/postgres: "
     "connection to server at \"127.0.0.1\", port 1 failed"),
    (("--admin-url", "mysql://root@127.0.0.1/mysql"), 4, "is not a postgresql:// URL"),
    (("--database-name", "Tx-Relay"), 4, "use lower-case letters, digits and _"),
])
def test_init_with_a_bad_admin_url_or_name_is_one_line_and_writes_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, options: tuple[str, ...],
        status: int, message: str) -> None:
    result = _init(monkeypatch, tmp_path, *options)
    assert result.exit_code == status
    assert message in result.error
    assert not (tmp_path / "etc").exists() and not (tmp_path / "dovecot").exists()


def test_a_password_in_the_admin_url_is_passed_outside_the_command_line() -> None:
    url, password = database_setup._split_password(
        "postgresql://admin:s%40cret@db.example:5433/postgres?sslmode=require")
    assert (url, password) == ("postgresql://admin@db.example:5433/postgres?sslmode=require",
                               "s@cret")
