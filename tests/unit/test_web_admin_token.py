"""The web dashboard's admin token file ([web] admin_token_file) is a secret: `txrelay web`
refuses one that every local user can read, as ssh refuses such a key."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import pytest

from txrelay.cli.web import read_admin_token
from txrelay.config import Config
from txrelay.errors import ConfigError


def config_with(token_file: Path) -> Config:
    base = Config()
    return dataclasses.replace(base, web=dataclasses.replace(base.web,
                                                             admin_token_file=str(token_file)))


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666])
def test_a_token_file_readable_by_every_user_is_refused_with_the_fix(tmp_path: Path,
                                                                       mode: int) -> None:
    token_file = tmp_path / "web-admin-token"
    token_file.write_text(secrets.token_hex(32) + "\n")
    token_file.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        read_admin_token(config_with(token_file))
    assert f"chmod 600 {token_file}" in str(refused.value)
    assert f"mode {mode:04o}" in str(refused.value)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_token_file_of_its_owner_and_group_is_read(tmp_path: Path, mode: int) -> None:
    token = secrets.token_hex(32)
    token_file = tmp_path / "web-admin-token"
    token_file.write_text(token + "\n")
    token_file.chmod(mode)
    assert read_admin_token(config_with(token_file)) == token
