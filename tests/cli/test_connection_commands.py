"""`txrelay connection`: credentials shown once, stored hashed, and every lifecycle step."""

from __future__ import annotations

import re

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tests.cli.conftest import DictConnection, Txrelay, one_row

ACCESS_KEYS = {"account", "connection", "username", "password", "host", "port", "starttls",
               "domains"}


def _hash_of(db: DictConnection, username: str) -> str | None:
    row = db.execute("SELECT password FROM sasl_passdb WHERE username = %s",
                     (username,)).fetchone()
    return None if row is None else row["password"]


def _verifies(stored: str | None, password: str) -> bool:
    if stored is None:
        return False
    assert stored.startswith("{ARGON2ID}$argon2id$")
    try:
        return PasswordHasher().verify(stored.removeprefix("{ARGON2ID}"), password)
    except (VerificationError, InvalidHashError):
        return False


def test_create_prints_the_access_data_once_and_stores_only_a_hash(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection) -> None:
    access = txrelay("--json", "connection", "create", account, "Web shop", "--domain",
                     domain).json()
    assert set(access) == ACCESS_KEYS
    assert (access["host"], access["port"], access["starttls"]) == ("127.0.0.1", 10587,
                                                                   "required")
    assert access["domains"] == [domain]
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{2,63}", access["username"])
    assert len(access["password"]) >= 32
    stored = _hash_of(db, access["username"])
    assert access["password"] not in str(stored)
    assert _verifies(stored, access["password"])
    shown = txrelay("connection", "show", access["username"], "--json").json()
    assert "password" not in shown


def test_human_create_output_has_host_port_starttls_username_password(
        txrelay: Txrelay, account: str, domain: str) -> None:
    out = txrelay("connection", "create", account, "CRM", "--domain", domain).stdout
    assert "host:      127.0.0.1" in out and "port:      10587" in out
    assert "STARTTLS (required)" in out
    assert re.search(r"username:  \S+", out) and re.search(r"password:  \S{32}", out)


def test_list_and_show_report_state_domains_and_rate(txrelay: Txrelay, account: str,
                                                     domain: str) -> None:
    txrelay("connection", "create", account, "Booking", "--domain", domain, "--rate-limit", "100")
    listed = txrelay("connection", "list", "--account", account, "--json").json()
    assert [(c["connection"], c["state"], c["rate_limit"], c["domains"], c["last_used_at"])
            for c in listed] == [("Booking", "active", 100, [domain], None)]
    shown = txrelay("connection", "show", "Booking", "--account", account, "--json").json()
    assert shown == listed[0]
    human = txrelay("connection", "list", "--account", account).stdout
    assert "Booking" in human and "100/h" in human and "active" in human


def test_disable_enable_rotate_delete_change_what_dovecot_reads(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection) -> None:
    access = txrelay("--json", "connection", "create", account, "Shop", "--domain",
                     domain).json()
    user = access["username"]
    ref = ("Shop", "--account", account)
    assert txrelay("connection", "disable", *ref, "--json").json()["state"] == "inactive"
    assert _hash_of(db, user) is None
    assert txrelay("connection", "enable", user, "--json").json()["state"] == "active"
    assert _verifies(_hash_of(db, user), access["password"])

    rotated = txrelay("connection", "rotate-password", *ref, "--json").json()
    assert set(rotated) == ACCESS_KEYS and rotated["username"] == user
    assert not _verifies(_hash_of(db, user), access["password"])
    assert _verifies(_hash_of(db, user), rotated["password"])

    deleted = txrelay("connection", "delete", *ref)
    assert deleted.exit_code == 0 and "can no longer log in" in deleted.stdout
    assert db.execute("SELECT 1 FROM credentials WHERE username = %s", (user,)).fetchone() is None
    row = one_row(db, "SELECT deleted_at, enabled FROM connections WHERE id = %s",
                  (_connection_id(db, account, "Shop"),))
    assert row["deleted_at"] is not None and row["enabled"] is False
    assert txrelay("connection", "show", *ref).exit_code == 3
    again = txrelay("--json", "connection", "create", account, "Shop", "--domain", domain)
    assert again.json()["username"] != user  # the name is free again, the login is new


def _connection_id(db: DictConnection, account: str, name: str) -> int:
    return one_row(db, "SELECT c.id FROM connections c JOIN accounts a ON a.id = c.account_id "
                   "WHERE a.name = %s AND c.name = %s ORDER BY c.id DESC LIMIT 1",
                   (account, name))["id"]


def test_set_changes_rate_limit_and_domains(txrelay: Txrelay, account: str, domain: str,
                                            unique: str) -> None:
    second = f"news-{unique}.example"
    txrelay("domain", "add", account, second, "--list-help", "https://h.example/")
    txrelay("connection", "create", account, "Forum", "--domain", domain)
    ref = ("Forum", "--account", account)
    changed = txrelay("connection", "set", *ref, "--rate-limit", "0", "--add-domain",
                      second.upper(), "--json").json()
    assert changed["rate_limit"] == 0 and changed["domains"] == sorted([domain, second])
    changed = txrelay("connection", "set", *ref, "--default-rate-limit", "--remove-domain",
                      domain, "--json").json()
    assert changed["rate_limit"] is None and changed["domains"] == [second]
    last = txrelay("connection", "set", *ref, "--remove-domain", second)
    assert last.exit_code == 4 and "at least one sending domain" in last.error
    assert txrelay("connection", "show", *ref, "--json").json()["domains"] == [second]


def test_domain_of_another_account_is_refused_and_nothing_is_written(
        txrelay: Txrelay, account: str, unique: str, db: DictConnection) -> None:
    other = f"Other {unique}"
    txrelay("account", "create", other, "--admin-email", "o@example.org")
    theirs = f"theirs-{unique}.example"
    txrelay("domain", "add", other, theirs, "--list-help", "https://h.example/")
    before = db.execute("SELECT count(*) AS n FROM connections").fetchone()
    result = txrelay("connection", "create", account, "Sneaky", "--domain", theirs)
    assert result.exit_code == 4
    assert result.error == (f"domain {theirs} belongs to account {other!r}, not {account!r}; a "
                            "connection may only send from its own account's domains")
    assert db.execute("SELECT count(*) AS n FROM connections").fetchone() == before


def test_unknown_domain_or_account_or_connection_is_named(txrelay: Txrelay, account: str,
                                                          domain: str, unique: str) -> None:
    missing_domain = txrelay("connection", "create", account, "X", "--domain",
                             f"nope-{unique}.example")
    assert missing_domain.exit_code == 3 and "is not registered" in missing_domain.error
    missing_account = txrelay("connection", "create", f"ghost {unique}", "X", "--domain", domain)
    assert missing_account.exit_code == 3 and "no account named" in missing_account.error
    for command in ("show", "disable", "enable", "rotate-password", "delete"):
        result = txrelay("connection", command, f"ghost-{unique}")
        assert result.exit_code == 3
        assert f"no connection 'ghost-{unique}'" in result.error


def test_duplicate_connection_name_in_one_account_is_a_conflict(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection) -> None:
    txrelay("connection", "create", account, "Web shop", "--domain", domain)
    before = db.execute("SELECT count(*) AS n FROM credentials").fetchone()
    result = txrelay("connection", "create", account, "Web shop", "--domain", domain)
    assert result.exit_code == 1
    assert "already has a connection named 'Web shop'" in result.error
    assert db.execute("SELECT count(*) AS n FROM credentials").fetchone() == before


def test_same_connection_name_in_two_accounts_needs_account(
        txrelay: Txrelay, account: str, domain: str, unique: str) -> None:
    other = f"Other {unique}"
    txrelay("account", "create", other, "--admin-email", "o@example.org")
    txrelay("domain", "add", other, f"o-{unique}.example", "--list-help", "https://h.example/")
    name = f"Shared {unique}"
    txrelay("connection", "create", account, name, "--domain", domain)
    txrelay("connection", "create", other, name, "--domain", f"o-{unique}.example")
    ambiguous = txrelay("connection", "show", name)
    assert ambiguous.exit_code == 4 and "add --account ACCOUNT" in ambiguous.error
    assert txrelay("connection", "show", name, "--account", other, "--json").json()[
        "account"] == other


@pytest.mark.parametrize("rate", ["-1", "ten"])
def test_bad_rate_limit_is_a_usage_error(txrelay: Txrelay, account: str, domain: str,
                                         rate: str) -> None:
    result = txrelay("connection", "create", account, "R", "--domain", domain, "--rate-limit",
                     rate)
    assert result.exit_code == 2 and "--rate-limit" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["create", "set"])
def test_rate_limit_help_says_the_limit_counts_recipients(txrelay: Txrelay,
                                                          command: str) -> None:
    shown = " ".join(txrelay("connection", command, "--help").stdout.split())
    assert "--rate-limit N Recipients per hour" in shown, shown
    assert "mails per hour" not in shown.lower()
