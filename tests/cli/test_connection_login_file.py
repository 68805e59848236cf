"""The connection commands rewrite this machine's SMTP login file ([dovecot] passdb_file)
right after each change, and say so on stderr when they cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Txrelay
from txrelay.config import Config


def _logins(config: Config) -> dict[str, str]:
    text = Path(config.dovecot.passdb_file).read_text()
    return dict(line.split(":", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_every_change_of_a_login_is_in_the_file_when_the_command_returns(
        txrelay: Txrelay, config: Config, account: str, domain: str) -> None:
    user = txrelay("--json", "connection", "create", account, "Shop", "--domain",
                   domain).json()["username"]
    first = _logins(config)[user]
    assert first.startswith("{ARGON2ID}$argon2id$")
    txrelay("connection", "rotate-password", user)
    assert _logins(config)[user] not in ("", first)
    txrelay("connection", "disable", user)
    assert user not in _logins(config)
    txrelay("connection", "enable", user)
    assert user in _logins(config)
    deleted = txrelay("connection", "delete", user)
    assert deleted.exit_code == 0 and deleted.stderr == ""
    assert user not in _logins(config)


def test_a_file_that_cannot_be_written_is_a_note_and_the_change_stands(
        txrelay: Txrelay, account: str, domain: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_DOVECOT_PASSDB_FILE", str(tmp_path / "absent" / "passwd"))
    created = txrelay("--json", "connection", "create", account, "Shop", "--domain", domain)
    assert created.exit_code == 0
    assert "note: the SMTP login file on this machine was not updated" in created.stderr
    assert "policy_refresh_seconds" in created.stderr and "Traceback" not in created.stderr
    assert created.json()["password"] not in created.stderr
    assert txrelay("connection", "show", created.json()["username"]).exit_code == 0
