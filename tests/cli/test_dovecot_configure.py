"""`txrelay dovecot configure` rewrites Dovecot's configuration and this node's SMTP login
file from txrelay.toml and PostgreSQL: the step an admin runs after an upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Txrelay


def test_configure_writes_dovecot_conf_and_fills_a_new_login_file(
        txrelay: Txrelay, account: str, domain: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = txrelay("--json", "connection", "create", account, "Shop", "--domain",
                   domain).json()["username"]
    conf_dir, login_file = tmp_path / "dovecot", tmp_path / "auth" / "passwd"
    monkeypatch.setenv("TXRELAY_DOVECOT_CONFIG_DIR", str(conf_dir))
    monkeypatch.setenv("TXRELAY_DOVECOT_PASSDB_FILE", str(login_file))

    conf_dir.mkdir()
    old_sql = conf_dir / "dovecot-sql.conf.ext"  # what versions before the login file wrote
    old_sql.write_text("connect = host=db password=secret\n")
    first = txrelay("--json", "dovecot", "configure")
    assert first.exit_code == 0, first.stderr
    report = first.json()
    assert report["config"] == str(conf_dir / "dovecot.conf")
    assert report["login_file"] == str(login_file) and report["login_file_changed"] is True
    assert f"args = scheme=ARGON2ID {login_file}" in (conf_dir / "dovecot.conf").read_text()
    assert not old_sql.exists()  # it held the database URL; nothing reads it any more
    logins = login_file.read_text()
    assert f"\n{user}:{{ARGON2ID}}$argon2id$" in f"\n{logins}"
    assert login_file.stat().st_mode & 0o007 == 0  # never world-readable
    assert "hash" not in first.stdout.lower() and "argon2" not in first.stdout

    again = txrelay("dovecot", "configure")
    assert again.exit_code == 0 and "already up to date" in again.stdout


def test_an_unwritable_config_dir_is_a_clear_error(
        txrelay: Txrelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TXRELAY_DOVECOT_CONFIG_DIR", str(blocker / "dovecot"))
    monkeypatch.setenv("TXRELAY_DOVECOT_PASSDB_FILE", str(tmp_path / "auth" / "passwd"))
    failed = txrelay("dovecot", "configure")
    assert failed.exit_code != 0
    assert "cannot write Dovecot's configuration" in failed.stderr
    assert "Traceback" not in failed.stderr
