"""`txrelay account`: create with demo quota, list, show, set, and refusals."""

from __future__ import annotations

from tests.cli.conftest import DictConnection, Txrelay


def test_new_account_gets_the_demo_quota_and_is_listed(txrelay: Txrelay, unique: str,
                                                       db: DictConnection) -> None:
    name = f"Bücher {unique} GmbH"
    created = txrelay("--json", "account", "create", name, "--admin-email",
                      f"Ops@{unique}.EXAMPLE").json()
    assert created["account"] == name
    assert created["admin_email"] == f"Ops@{unique}.example"
    assert created["quota_remaining"] == 1000
    assert created["plan"] == "demo" and created["paid"] is False
    block = db.execute("SELECT kind, amount, expires_at FROM quota_blocks WHERE account_id = %s",
                       (created["id"],)).fetchall()
    assert block == [{"kind": "demo", "amount": 1000, "expires_at": None}]

    listed = {a["account"]: a for a in txrelay("account", "list", "--json").json()}
    assert listed[name] == created
    assert set(created) >= {"account", "id", "admin_email", "quota_remaining", "paid",
                            "connections", "domains"}
    human = txrelay("account", "list")
    assert name in human.stdout and "demo" in human.stdout


def test_account_show_counts_domains_and_connections(txrelay: Txrelay, account: str,
                                                     domain: str) -> None:
    txrelay("connection", "create", account, "Web shop", "--domain", domain)
    shown = txrelay("account", "show", account, "--json").json()
    assert (shown["domains"], shown["connections"]) == (1, 1)
    assert "quota remaining:  1,000" in txrelay("account", "show", account).stdout


def test_account_set_changes_threshold_and_admin_email(txrelay: Txrelay, account: str) -> None:
    changed = txrelay("account", "set", account, "--low-quota-threshold", "500",
                      "--admin-email", "billing@example.org", "--json").json()
    assert changed["low_quota_threshold"] == 500
    assert changed["admin_email"] == "billing@example.org"


def test_account_set_without_a_change_says_what_to_give(txrelay: Txrelay, account: str) -> None:
    result = txrelay("account", "set", account)
    assert result.exit_code == 4
    assert "--low-quota-threshold" in result.error


def test_duplicate_account_name_is_refused_and_nothing_is_written(
        txrelay: Txrelay, account: str, db: DictConnection) -> None:
    before = db.execute("SELECT count(*) AS n FROM quota_blocks").fetchone()
    result = txrelay("account", "create", account, "--admin-email", "x@example.org")
    assert result.exit_code == 1
    assert result.error == (f"an account named {account!r} exists already; pick another name "
                            "or see 'txrelay account list'")
    assert db.execute("SELECT count(*) AS n FROM quota_blocks").fetchone() == before


def test_unknown_account_is_named_in_the_error(txrelay: Txrelay, unique: str) -> None:
    result = txrelay("account", "show", f"nobody-{unique}")
    assert result.exit_code == 3
    assert f"no account named 'nobody-{unique}'" in result.error


def test_invalid_admin_email_is_refused(txrelay: Txrelay, unique: str,
                                        db: DictConnection) -> None:
    result = txrelay("account", "create", f"Bad {unique}", "--admin-email",
                     "ops@example.com\r\nBcc: x@example.org")
    assert result.exit_code == 4
    assert "not an e-mail address" in result.error
    assert db.execute("SELECT 1 FROM accounts WHERE name = %s", (f"Bad {unique}",)).fetchone() \
        is None


def test_sql_looking_account_name_is_stored_verbatim(txrelay: Txrelay, unique: str,
                                                     db: DictConnection) -> None:
    name = f"Robert'); DROP TABLE accounts;-- {unique}"
    created = txrelay("account", "create", name, "--admin-email", "ops@example.org", "--json")
    assert created.json()["account"] == name
    assert db.execute("SELECT name FROM accounts WHERE name = %s", (name,)).fetchone() == \
        {"name": name}


def test_account_name_with_a_line_break_is_refused(txrelay: Txrelay, unique: str) -> None:
    result = txrelay("account", "create", f"Evil\n{unique}", "--admin-email", "a@example.org")
    assert result.exit_code == 4
    assert "line breaks or control characters" in result.error
