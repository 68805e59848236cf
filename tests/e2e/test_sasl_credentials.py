"""Connections made with the CLI log in to the real Dovecot, until disabled, rotated or deleted.

Dovecot checks logins against the SMTP login file ([dovecot] passdb_file, so that they work
while PostgreSQL is down): each test logs in before the change, so that Dovecot has read the
file, and the change must reach it at once on this node (the CLI rewrites it) and through
the milter's next policy refresh when it was made elsewhere.
"""

from __future__ import annotations

import json
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.processes import TXRELAY, wait_until
from txrelay.config import Config

pytestmark = pytest.mark.e2e


def _txrelay(config_file: Path, *args: str) -> Any:
    done = subprocess.run([TXRELAY, "--config", str(config_file), "--json", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture()
def connection(e2e_config_file: Path) -> dict[str, Any]:
    """A fresh account, domain and connection; the printed access data (with password)."""
    token = uuid.uuid4().hex[:8]
    account, domain = f"SASL {token}", f"sasl-{token}.example"
    _txrelay(e2e_config_file, "account", "create", account, "--admin-email", "o@example.org")
    _txrelay(e2e_config_file, "domain", "add", account, domain, "--list-help",
             "https://help.example/")
    created: dict[str, Any] = _txrelay(e2e_config_file, "connection", "create", account,
                                       "Web shop", "--domain", domain)
    return created


def _logins_in_file(config: Config) -> dict[str, str]:
    text = Path(config.dovecot.passdb_file).read_text()
    return dict(line.split(":", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_printed_password_logs_in_and_a_wrong_one_does_not(
        dovecot: Any, e2e_config: Config, connection: dict[str, Any]) -> None:
    assert dovecot.auth_test(connection["username"], connection["password"])
    assert not dovecot.auth_test(connection["username"], connection["password"] + "x")
    assert _logins_in_file(e2e_config)[connection["username"]].startswith("{ARGON2ID}$argon2id$")
    assert stat.S_IMODE(Path(e2e_config.dovecot.passdb_file).stat().st_mode) == 0o640


def test_disabled_connection_cannot_log_in_until_enabled(dovecot: Any, e2e_config_file: Path,
                                                         connection: dict[str, Any]) -> None:
    user, password = connection["username"], connection["password"]
    assert dovecot.auth_test(user, password)
    _txrelay(e2e_config_file, "connection", "disable", user)
    assert not dovecot.auth_test(user, password)
    _txrelay(e2e_config_file, "connection", "enable", user)
    assert dovecot.auth_test(user, password)


def test_rotated_password_replaces_the_old_one(dovecot: Any, e2e_config_file: Path,
                                               connection: dict[str, Any]) -> None:
    user, old = connection["username"], connection["password"]
    assert dovecot.auth_test(user, old)
    new = _txrelay(e2e_config_file, "connection", "rotate-password", user)["password"]
    assert new != old
    assert not dovecot.auth_test(user, old)
    assert dovecot.auth_test(user, new)


def test_deleted_connection_can_never_log_in_again(dovecot: Any, e2e_config_file: Path,
                                                   connection: dict[str, Any]) -> None:
    user, password = connection["username"], connection["password"]
    assert dovecot.auth_test(user, password)
    _txrelay(e2e_config_file, "connection", "delete", user)
    assert not dovecot.auth_test(user, password)


def test_a_change_made_on_another_node_reaches_this_one_through_the_milter(
        dovecot: Any, milter: Any, e2e_config: Config, connection: dict[str, Any]) -> None:
    """Another node's CLI (here: straight in SQL) cannot write this node's login file; the
    milter here rewrites it on its next policy refresh ([milter] policy_refresh_seconds), and
    Dovecot reads it at the next login a second later at most."""
    user, password = connection["username"], connection["password"]
    assert dovecot.auth_test(user, password)
    with psycopg.connect(e2e_config.database.url, autocommit=True) as conn:
        conn.execute("UPDATE connections SET enabled = false WHERE id = (SELECT connection_id "
                     "FROM credentials WHERE username = %s)", (user,))
    wait_until(lambda: user not in _logins_in_file(e2e_config), 15,
               "the milter removing the disabled login from the file", lambda: milter.log(20))
    # Dovecot looks at the file at most once a second: the next login after that refuses.
    wait_until(lambda: not dovecot.auth_test(user, password), 5,
               "Dovecot refusing the login the file no longer has")
