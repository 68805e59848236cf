"""The SMTP login hash is cheap for Dovecot to check (issue 15 item 1), and connections whose
hash an older version made with the costly Argon2id parameters keep logging in, until their
next rotation gives them the cheap one. Checked against the real Dovecot and login file."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from argon2 import PasswordHasher

from tests.harness.processes import TXRELAY
from txrelay.config import Config
from txrelay.store.passdb_file import sync_passdb_file, wait_until_dovecot_sees_it

pytestmark = pytest.mark.e2e

CHEAP = "{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$"
COSTLY = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"


def _txrelay(config_file: Path, *args: str) -> Any:
    done = subprocess.run([TXRELAY, "--config", str(config_file), "--json", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture()
def connection(e2e_config_file: Path) -> dict[str, Any]:
    token = uuid.uuid4().hex[:8]
    account, domain = f"Hash {token}", f"hash-{token}.example"
    _txrelay(e2e_config_file, "account", "create", account, "--admin-email", "o@example.org")
    _txrelay(e2e_config_file, "domain", "add", account, domain, "--list-help",
             "https://help.example/")
    created: dict[str, Any] = _txrelay(e2e_config_file, "connection", "create", account,
                                       "Web shop", "--domain", domain)
    return created


def _line(config: Config, user: str) -> str:
    for line in Path(config.dovecot.passdb_file).read_text().splitlines():
        if line.startswith(f"{user}:"):
            return line.split(":", 1)[1]
    raise AssertionError(f"{user} is not in the login file")


def test_a_new_connection_gets_the_cheap_hash_and_dovecot_accepts_it(
        dovecot: Any, e2e_config: Config, connection: dict[str, Any]) -> None:
    user, password = connection["username"], connection["password"]
    assert _line(e2e_config, user).startswith(CHEAP)
    assert dovecot.auth_test(user, password)
    assert not dovecot.auth_test(user, password[:-1])


def test_an_old_costly_hash_keeps_working_until_the_rotation_replaces_it(
        dovecot: Any, e2e_config: Config, e2e_config_file: Path,
        connection: dict[str, Any]) -> None:
    user, password = connection["username"], connection["password"]
    costly = "{ARGON2ID}" + PasswordHasher(time_cost=2, memory_cost=19456,
                                           parallelism=1).hash(password)
    login_file = Path(e2e_config.dovecot.passdb_file)
    with psycopg.connect(e2e_config.database.url, autocommit=True) as conn:
        # What a version before the change stored, written to the file as a node would.
        conn.execute("UPDATE credentials SET password_hash = %s WHERE username = %s",
                     (costly, user))
        sync_passdb_file(conn, login_file)
    wait_until_dovecot_sees_it(login_file)
    assert _line(e2e_config, user).startswith(COSTLY)
    assert dovecot.auth_test(user, password)
    assert not dovecot.auth_test(user, password + "x")

    new = _txrelay(e2e_config_file, "connection", "rotate-password", user)["password"]
    assert _line(e2e_config, user).startswith(CHEAP)
    assert dovecot.auth_test(user, new)
    assert not dovecot.auth_test(user, password)
