"""Offboarding and money (issue 14, items 5 and 7): account disable/enable/delete, domain
remove/move, account set --overage-cap, quota show's forecast, billing export."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest
import redis

from tests.cli.conftest import DictConnection, Txrelay, one_row
from tests.store.tracking_fixtures import Sender, add_message, make_sender
from txrelay.clock import FixedClock
from txrelay.config import Config
from txrelay.policy.sender import authorize_sender
from txrelay.policy.verdict import Verdict
from txrelay.store.keys import AccountKeys
from txrelay.store.policy import PolicyLoader

HOUR = dt.timedelta(hours=1)


def connected(txrelay: Txrelay, account: str, domain: str, name: str = "Web shop") -> str:
    """Create a connection; its SMTP user name."""
    created = txrelay("connection", "create", account, name, "--domain", domain, "--json")
    return str(created.json()["username"])


def sender_of(db: DictConnection, account: str) -> Sender:
    """The CLI-made account as the ledger fixtures want it (its demo block, first connection)."""
    row = one_row(db, "SELECT a.id, b.id AS block_id, c.id AS connection_id, c.name "
                      "FROM accounts a JOIN quota_blocks b ON b.account_id = a.id "
                      "JOIN connections c ON c.account_id = a.id "
                      "WHERE a.name = %s AND a.deleted_at IS NULL ORDER BY c.id LIMIT 1",
                  (account,))
    return Sender(row["id"], account, row["connection_id"], row["name"], row["block_id"])


def test_disabled_account_is_refused_at_mail_with_its_name_and_enable_undoes_it(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection,
        config: Config) -> None:
    username = connected(txrelay, account, domain)
    disabled = txrelay("account", "disable", account, "--json").json()
    assert disabled["disabled"] is True and disabled["disabled_at"] == "2026-11-03T09:30:00+00:00"
    assert "DISABLED since 2026-11-03 09:30 UTC" in txrelay("account", "show", account).stdout

    verdict = authorize_sender(PolicyLoader(config.quota).load(db), username, f"o@{domain}")
    assert isinstance(verdict, Verdict)
    assert (verdict.smtp_code, verdict.enhanced_code, verdict.text) == (
        "550", "5.7.1", f"account {account} is disabled; no mail is accepted for it: contact "
                        "the relay administrator")

    enabled = txrelay("account", "enable", account, "--json").json()
    assert enabled["disabled"] is False
    allowed = authorize_sender(PolicyLoader(config.quota).load(db), username, f"o@{domain}")
    assert not isinstance(allowed, Verdict)
    assert "Enabled account" in txrelay("account", "enable", account).stdout


def test_account_delete_is_refused_with_uninvoiced_overage_then_forced_keeps_the_ledger(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection, config: Config,
        clock: FixedClock, redis_url: str) -> None:
    username = connected(txrelay, account, domain)
    txrelay("account", "set", account, "--low-quota-threshold", "100")
    sender = sender_of(db, account)
    live = redis.Redis.from_url(redis_url, socket_timeout=5)
    keys = AccountKeys(config.redis.key_prefix, sender.account_id)
    live.set(keys.balance, 997)
    live.hset(keys.overage, "2026-11", 2)
    add_message(db, sender, "D1", ["a@x.test"], accepted_at=clock.now() - HOUR)
    add_message(db, sender, "D2", ["b@x.test", "c@x.test"], accepted_at=clock.now() - HOUR,
                billing="overage")
    assert username in Path(config.dovecot.passdb_file).read_text()

    refused = txrelay("account", "delete", account)
    assert refused.exit_code == 1
    assert refused.error.startswith(
        f"account {account!r} has 2 overage mails in 2026-11 that are not invoiced yet")
    assert one_row(db, "SELECT deleted_at FROM accounts WHERE id = %s",
                   (sender.account_id,))["deleted_at"] is None

    deleted = txrelay("account", "delete", account, "--force", "--json").json()
    assert deleted == {"account": account, "id": sender.account_id, "deleted": True,
                       "period": "2026-11", "overage_not_invoiced": 2,
                       "recipients_in_flight": 3}
    counts = one_row(db, """
        SELECT (SELECT count(*) FROM credentials cr JOIN connections c ON c.id = cr.connection_id
                 WHERE c.account_id = %(id)s) AS credentials,
               (SELECT count(*) FROM sending_domains WHERE account_id = %(id)s) AS domains,
               (SELECT count(*) FROM dkim_keys WHERE account_id = %(id)s) AS keys,
               (SELECT count(*) FROM ledger WHERE account_id = %(id)s) AS ledger,
               (SELECT count(*) FROM connections
                 WHERE account_id = %(id)s AND deleted_at IS NULL) AS live_connections,
               (SELECT low_quota_threshold FROM accounts WHERE id = %(id)s) AS reminder""",
                     {"id": sender.account_id})  # type: ignore[arg-type]
    assert counts == {"credentials": 0, "domains": 0, "keys": 0, "ledger": 3,
                      "live_connections": 0, "reminder": 0}
    assert live.exists(keys.balance, keys.overage) == 0
    live.close()
    assert username not in Path(config.dovecot.passdb_file).read_text()
    assert account not in [a["account"] for a in txrelay("account", "list", "--json").json()]
    assert txrelay("account", "show", account).exit_code == 3
    assert txrelay("account", "delete", account).exit_code == 3

    exported = txrelay("billing", "export", "--period", "2026-11", "--json").json()
    line = next(x for x in exported if x["account_id"] == sender.account_id)
    assert (line["status"], line["overage_mails"], line["amount_due_eur"]) == (
        "deleted", 2, "0.00190")
    again = txrelay("account", "create", account, "--admin-email", "new@example.org")
    assert again.exit_code == 0, again.stderr  # the name is free again
    assert domain not in [d["domain"] for d in txrelay("domain", "list", "--json").json()]


def test_account_without_overage_is_deleted_without_force(
        txrelay: Txrelay, account: str, domain: str) -> None:
    connected(txrelay, account, domain)
    done = txrelay("account", "delete", account)
    assert done.exit_code == 0, done.stderr
    assert "credentials, domains and DKIM keys destroyed" in done.stdout


def test_overage_cap_is_set_shown_removed_and_reported_in_billing(
        txrelay: Txrelay, account: str, db: DictConnection) -> None:
    assert txrelay("account", "show", account, "--json").json()["overage_cap"] is None
    capped = txrelay("account", "set", account, "--overage-cap", "10000", "--json").json()
    assert capped["overage_cap"] == 10000
    assert "overage cap:      10,000 mails per month" in txrelay("account", "show",
                                                                 account).stdout
    zero = txrelay("account", "set", account, "--overage-cap", "0", "--json").json()
    assert zero["overage_cap"] == 0
    report = txrelay("billing", "report", account, "--period", "2026-11", "--json").json()
    assert report["overage_cap"] == 0
    assert txrelay("account", "set", account, "--no-overage-cap", "--json").json()[
        "overage_cap"] is None
    both = txrelay("account", "set", account, "--overage-cap", "5", "--no-overage-cap")
    assert both.exit_code == 2 and "not both" in both.stderr
    negative = txrelay("account", "set", account, "--overage-cap", "-1")
    assert negative.exit_code == 2 and "Traceback" not in negative.stderr


def test_billing_report_says_when_the_overage_cap_was_reached(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection,
        clock: FixedClock) -> None:
    connected(txrelay, account, domain)
    add_message(db, sender_of(db, account), "R1", ["a@x.test", "b@x.test"],
                accepted_at=clock.now() - HOUR, billing="overage")
    txrelay("account", "set", account, "--overage-cap", "2")
    human = txrelay("billing", "report", account, "--period", "2026-11").stdout
    assert "overage cap (per month)             2 (reached: further mail was refused)" in human


def test_billing_export_csv_has_one_line_per_account_with_exact_money(
        txrelay: Txrelay, db: DictConnection, unique: str) -> None:
    start = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)
    first = make_sender(db, f"{unique}a", quota=25000, kind="booked", booked_at=start)
    add_message(db, first, f"E1{unique}", [f"o{i}@x.test" for i in range(3)],
                accepted_at=start + HOUR, billing="overage")
    second = make_sender(db, f"{unique}b")
    add_message(db, second, f"E2{unique}", ["a@x.test"], accepted_at=start + HOUR)

    result = txrelay("billing", "export", "--period", "2026-10", "--csv")
    assert result.exit_code == 0, result.stderr
    rows = {r["account"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert result.stdout.splitlines()[0].startswith("period,account_id,account,status,")
    assert {k: rows[first.account][k] for k in (
        "period", "status", "blocks_booked", "units_booked", "overage_mails",
        "amount_due_eur", "amount_due_rounded_eur")} == {
        "period": "2026-10", "status": "active", "blocks_booked": "1", "units_booked": "25000",
        "overage_mails": "3", "amount_due_eur": "0.00285", "amount_due_rounded_eur": "0.00"}
    assert (rows[second.account]["mails_from_blocks"], rows[second.account]["amount_due_eur"]) \
        == ("1", "0.00000")
    as_json = txrelay("billing", "export", "--period", "2026-10", "--json").json()
    assert {x["account"]: x["overage_mails"] for x in as_json}[first.account] == 3
    human = txrelay("billing", "export", "--period", "2026-10")
    assert first.account in human.stdout and "0.00285" in human.stdout
    bad = txrelay("billing", "export", "--period", "2026-13", "--csv")
    assert bad.exit_code == 4 and "YYYY-MM" in bad.error


def test_quota_show_forecasts_when_the_quota_runs_out(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection,
        clock: FixedClock) -> None:
    connected(txrelay, account, domain)
    add_message(db, sender_of(db, account), "F1", [f"r{i}@x.test" for i in range(100)],
                accepted_at=clock.now() - HOUR)
    shown = txrelay("quota", "show", account, "--json").json()
    assert shown["quota_remaining"] == 900
    assert shown["forecast"] == {"last_24h": 100, "last_7d": 100, "mails_per_day": 100.0,
                                 "runs_out_at": "2026-11-12T09:30:00+00:00"}
    human = txrelay("quota", "show", account).stdout
    assert "Sent in the last 24 hours: 100; in the last 7 days: 100." in human
    assert "runs out in about 9.0 days, around 2026-11-12 09:30 UTC." in human


def test_quota_show_without_recent_mail_has_no_run_out_date(
        txrelay: Txrelay, account: str) -> None:
    assert txrelay("quota", "show", account, "--json").json()["forecast"]["runs_out_at"] is None
    assert "no run-out date" in txrelay("quota", "show", account).stdout


def test_domain_move_takes_keys_and_drops_the_old_connections(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection,
        unique: str) -> None:
    connected(txrelay, account, domain)
    other = f"Other {unique}"
    txrelay("account", "create", other, "--admin-email", f"ops@other-{unique}.example")
    own = f"own-{unique}.example"
    txrelay("domain", "add", other, own, "--list-help", "https://help.example/")
    connected(txrelay, other, own, "Shop B")
    key_before = txrelay("domain", "show", domain, "--json").json()

    moved = txrelay("domain", "move", domain, "--to", other, "--connection", "Shop B",
                    "--json").json()
    assert (moved["account"], moved["moved_from"]) == (other, account)
    assert (moved["connections_lost"], moved["connections_added"]) == (["Web shop"], ["Shop B"])
    assert moved["dns"] == key_before["dns"]  # the published record stays valid
    key_owner = one_row(db, "SELECT account_id FROM dkim_keys WHERE id = %s",
                        (moved["dkim_key_id"],))["account_id"]
    assert key_owner == one_row(db, "SELECT id FROM accounts WHERE name = %s", (other,))["id"]
    lists = {c["connection"]: c["domains"]
             for c in txrelay("connection", "list", "--json").json()
             if c["account"] in (account, other)}
    assert lists == {"Web shop": [], "Shop B": sorted([own, domain])}

    same = txrelay("domain", "move", domain, "--to", other)
    assert same.exit_code == 4 and "already" in same.error
    nobody = txrelay("domain", "move", domain, "--to", account, "--connection", "Nope")
    assert nobody.exit_code == 4 and "no connection named 'Nope'" in nobody.error
    assert txrelay("domain", "move", domain, "--to", f"Missing {unique}").exit_code == 3


def test_domain_move_copies_a_key_the_old_account_shares_with_another_domain(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection,
        unique: str) -> None:
    sibling = f"sibling-{unique}.example"
    txrelay("domain", "add", account, sibling, "--list-help", "https://help.example/",
            "--reuse-key-of", domain)
    other = f"Other {unique}"
    txrelay("account", "create", other, "--admin-email", f"ops@other-{unique}.example")
    moved = txrelay("domain", "move", sibling, "--to", other, "--json").json()
    stayed = txrelay("domain", "show", domain, "--json").json()
    assert moved["dkim_key_id"] != stayed["dkim_key_id"]
    assert moved["dns"]["value"] == stayed["dns"]["value"]
    assert "no connection of the new account" in txrelay(
        "domain", "move", sibling, "--to", account).stdout


def test_domain_remove_destroys_its_key_and_frees_the_name(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection) -> None:
    connected(txrelay, account, domain)
    key_id = txrelay("domain", "show", domain, "--json").json()["dkim_key_id"]
    removed = txrelay("domain", "remove", domain, "--json").json()
    assert removed == {"domain": domain, "account": account, "removed": True,
                       "connections": ["Web shop"], "keys_destroyed": 1}
    assert db.execute("SELECT 1 FROM dkim_keys WHERE id = %s", (key_id,)).fetchone() is None
    assert txrelay("domain", "show", domain).exit_code == 3
    assert txrelay("domain", "remove", domain).exit_code == 3
    again = txrelay("domain", "add", account, domain, "--list-help", "https://help.example/")
    assert again.exit_code == 0, again.stderr


@pytest.mark.parametrize("option", ["--queue-id", "--state", "--from"])
def test_messages_search_new_filters(txrelay: Txrelay, db: DictConnection, unique: str,
                                     option: str) -> None:
    from tests.cli.billing_fixtures import sender_with_outcomes

    at = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)
    sender, _message = sender_with_outcomes(db, unique, at)
    value = {"--queue-id": f"C{unique}", "--state": "bounced",
             "--from": "@ACME.example"}[option]
    found = txrelay("messages", "search", option, value, "--account", sender.account,
                    "--json").json()
    expected = {"--queue-id": 4, "--state": 1, "--from": 4}[option]
    assert len(found) == expected
    if option == "--state":
        assert (found[0]["recipient"], found[0]["dsn"]) == ("gone@x.test", "5.1.1")
    none = txrelay("messages", "search", option, value, "--account", sender.account,
                   "--until", "2026-11-01", "--json").json()
    assert none == []


def test_messages_search_by_exact_sender_and_refuses_an_unknown_state(
        txrelay: Txrelay, db: DictConnection, unique: str) -> None:
    from tests.cli.billing_fixtures import sender_with_outcomes

    sender_with_outcomes(db, unique, dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC))
    found = txrelay("messages", "search", "--from", "Shop@Acme.example", "--queue-id",
                    f"C{unique}", "--json").json()
    assert {r["envelope_sender"] for r in found} == {"shop@acme.example"}
    bad = txrelay("messages", "search", "--state", "lost")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr


def test_messages_show_tells_the_story_of_one_message(
        txrelay: Txrelay, db: DictConnection, unique: str) -> None:
    from tests.cli.billing_fixtures import sender_with_outcomes

    at = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)
    sender, _message = sender_with_outcomes(db, unique, at)
    [story] = txrelay("messages", "show", f"C{unique}", "--json").json()
    assert set(story) == {"message", "decision", "recipients"}
    assert story["message"]["account"] == sender.account
    assert story["message"]["message_id"] == f"<order-{unique}@shop.example>"
    assert story["decision"]["verdict"] == "accepted" and story["decision"]["recipients"] == 4
    assert [(r["recipient"], r["state"], r["dsn"]) for r in story["recipients"]] == [
        ("ok@x.test", "delivered", "2.0.0"), ("later@x.test", "deferred", "4.2.0"),
        ("gone@x.test", "bounced", "5.1.1"), ("wait@x.test", "queued", None)]
    by_message_id = txrelay("messages", "show", f"order-{unique}@shop.example", "--json").json()
    assert by_message_id == [story]
    human = txrelay("messages", "show", f"C{unique}").stdout
    for text in ("Message:", "Milter decision:", "Recipients:",
                 "gone@x.test: bounced dsn=5.1.1, billed quota",
                 "bounced via mx: 550 no such user"):
        assert text in human
    missing = txrelay("messages", "show", f"NOPE{unique}")
    assert missing.exit_code == 3 and "messages search" in missing.error


def test_messages_show_finds_a_message_by_its_transaction_id(
        txrelay: Txrelay, db: DictConnection, unique: str) -> None:
    from tests.cli.billing_fixtures import sender_with_outcomes

    _sender, message = sender_with_outcomes(db, unique, dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    txn = one_row(db, "SELECT txn_id::text AS txn FROM messages WHERE id = %s", (message,))
    [story] = txrelay("messages", "show", txn["txn"].upper(), "--json").json()
    assert story["message"]["queue_id"] == f"C{unique}"
    bracketed = txrelay("messages", "show", f"<order-{unique}@shop.example>", "--json").json()
    assert bracketed == [story]
