"""`txrelay keys`: status, sealing keys stored in clear, rotating the KEK, through the CLI
against a database of its own (a rotation re-seals every key of the database)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.cli.conftest import CliRun, run_main
from tests.conftest import ADMIN_DSN
from tests.store.builders import make_tenant
from txrelay.config import QuotaConfig
from txrelay.kek import OLD_SUFFIX, KeyRing, generate_kek, is_sealed, write_kek_file
from txrelay.store import database
from txrelay.store.policy import PolicyLoader


@pytest.fixture()
def node(tmp_path: Path, config_file: Path) -> Iterator[tuple[Path, str]]:
    """(configuration file, database URL) of a node with a database of its own."""
    name = f"txrelay_keys_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url) as conn:
            database.migrate(conn)
        write_kek_file(tmp_path / "kek", generate_kek())
        lines = [line for line in config_file.read_text().splitlines()
                 if not line.startswith(("url = \"postgres", "kek_file = "))]
        at = lines.index("[database]") + 1
        lines[at:at] = [f'url = "{url}"', f'kek_file = "{tmp_path / "kek"}"']
        path = tmp_path / "txrelay.toml"
        path.write_text("\n".join(lines) + "\n")
        yield path, url
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(monkeypatch: pytest.MonkeyPatch, config: Path, *args: str) -> CliRun:
    return run_main(["--config", str(config), *args], monkeypatch)


def _stored(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT private_key_pem FROM dkim_keys ORDER BY id")]


def test_keys_stored_in_clear_are_sealed_by_encrypt_and_status_says_so(
        monkeypatch: pytest.MonkeyPatch, node: tuple[Path, str]) -> None:
    config, url = node
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:  # type: ignore[arg-type]
        tenant = make_tenant(conn, "old")  # stored in clear, as before this release
    before = _run(monkeypatch, config, "keys", "status", "--json")
    assert before.exit_code == 1
    assert json.loads(before.stdout) | {"kek_file": ""} == {
        "kek_file": "", "keys": 1, "clear": 1, "sealed": 0}

    done = _run(monkeypatch, config, "keys", "encrypt")
    assert done.exit_code == 0, done.stderr
    assert "Sealed 1 DKIM private keys" in done.stdout
    [stored] = _stored(url)
    assert is_sealed(stored) and "PRIVATE KEY" not in stored
    assert KeyRing.load(config.parent / "kek").open(stored) == tenant.keys.private_key_pem
    after = _run(monkeypatch, config, "keys", "status")
    assert after.exit_code == 0 and "1 of 1 DKIM private keys sealed" in after.stdout
    assert _run(monkeypatch, config, "keys", "encrypt", "--json").exit_code == 0  # again: no-op
    assert _stored(url) == [stored]


def test_rotate_kek_reseals_every_key_and_keeps_the_previous_kek_as_old(
        monkeypatch: pytest.MonkeyPatch, node: tuple[Path, str]) -> None:
    config, url = node
    kek = config.parent / "kek"
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:  # type: ignore[arg-type]
        tenant = make_tenant(conn, "rot")
    assert _run(monkeypatch, config, "keys", "encrypt").exit_code == 0
    before, old_kek = _stored(url), kek.read_text()

    done = _run(monkeypatch, config, "--json", "keys", "rotate-kek")

    assert done.exit_code == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["resealed"] == 1 and report["previous_kek_file"] == f"{kek}{OLD_SUFFIX}"
    assert kek.read_text() != old_kek
    assert Path(f"{kek}{OLD_SUFFIX}").read_text() == old_kek
    [after] = _stored(url)
    assert after != before[0] and report["kek_id"] in after
    Path(f"{kek}{OLD_SUFFIX}").unlink()
    with psycopg.connect(url, row_factory=dict_row) as conn:  # type: ignore[arg-type]
        policy = PolicyLoader(QuotaConfig(), KeyRing.load(kek)).load(conn)  # type: ignore[arg-type]
    assert tenant.domain in policy.domains


def test_without_the_kek_file_a_domain_add_says_what_to_do_and_writes_nothing(
        monkeypatch: pytest.MonkeyPatch, node: tuple[Path, str]) -> None:
    config, url = node
    (config.parent / "kek").unlink()
    assert _run(monkeypatch, config, "account", "create", "Acme",
                "--admin-email", "ops@acme.example").exit_code == 0
    done = _run(monkeypatch, config, "domain", "add", "Acme", "acme.example",
                "--list-help", "https://acme.example/help")
    assert done.exit_code == 1
    assert "key-encryption key" in done.error and "is missing" in done.error
    assert "Traceback" not in done.stderr and len(done.error.splitlines()) == 1
    assert _stored(url) == []
    rotate = _run(monkeypatch, config, "keys", "rotate-kek")
    assert rotate.exit_code == 1 and "is missing" in rotate.error
