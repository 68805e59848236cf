"""Connections made with the CLI log in to the real Dovecot, until disabled, rotated or deleted.

Dovecot caches credentials (so that known logins work while PostgreSQL is down): each test
logs in first, so the change must get past a cached entry; the CLI flushes it on this node.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.processes import TXRELAY
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


def test_printed_password_logs_in_and_a_wrong_one_does_not(dovecot: Any,
                                                           connection: dict[str, Any]) -> None:
    assert dovecot.auth_test(connection["username"], connection["password"])
    assert not dovecot.auth_test(connection["username"], connection["password"] + "x")


def test_disabled_connection_cannot_log_in_until_enabled(dovecot: Any, e2e_config_file: Path,
                                                         connection: dict[str, Any]) -> None:
    user, password = connection["username"], connection["password"]
    assert dovecot.auth_test(user, password)  # now in Dovecot's cache
    _txrelay(e2e_config_file, "connection", "disable", user)
    assert not dovecot.auth_test(user, password)  # and now "unknown" is
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


def test_a_change_made_elsewhere_waits_for_the_cache_the_cli_flushes_it(
        dovecot: Any, e2e_config: Config, e2e_config_file: Path,
        connection: dict[str, Any]) -> None:
    """What the flush is for: a change another node's CLI made (here: straight in SQL)
    leaves this node's cached entry in use for up to auth_cache_ttl (60 s)."""
    user, password = connection["username"], connection["password"]
    assert dovecot.auth_test(user, password)
    with psycopg.connect(e2e_config.database.url, autocommit=True) as conn:
        conn.execute("UPDATE connections SET enabled = false WHERE id = (SELECT connection_id "
                     "FROM credentials WHERE username = %s)", (user,))
    assert dovecot.auth_test(user, password)  # the cached entry, younger than 60 s
    _txrelay(e2e_config_file, "connection", "delete", user)  # on this node: flushed
    assert not dovecot.auth_test(user, password)
