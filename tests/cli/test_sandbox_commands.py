"""Sandbox connections at the command line (issue 14, item 2): create/set --sandbox/--live,
`messages show ID --raw` and `--json`, `messages search --state sandboxed`, `stats` and
`stats --by` counting sandbox recipients apart, and the tick's purge after retention."""

from __future__ import annotations

import datetime as dt
import uuid

from tests.cli.conftest import DictConnection, Txrelay, one_row
from tests.store.tracking_fixtures import add_message, make_sender
from txrelay.config import Config
from txrelay.store import database
from txrelay.store.policy import PolicyLoader
from txrelay.store.sandbox import CapturedMessage, capture, purge_sandbox_messages

NOW = dt.datetime(2026, 11, 3, 9, 0, tzinfo=dt.UTC)  # before the CLI's fixed clock (09:30)
RAW = (b"DKIM-Signature: v=1; a=rsa-sha256; d=shop.example; s=x;\r\n\tb=AAAA\r\n"
       b"From: Shop <orders@shop.example>\r\nSubject: Test \xc3\xa4\r\n"
       b"Message-ID: <sbx-{n}@shop.example>\r\n\r\nBody line\r\n")


def captured(db: DictConnection, config: Config, account_id: int, connection_id: int,
             n: str, recipients: list[str], at: dt.datetime = NOW) -> CapturedMessage:
    """A message as the milter captures it (its own insert), at time `at`."""
    message = CapturedMessage(uuid.uuid4(), f"4QSBX{n}", "relay1", f"<sbx-{n}@shop.example>",
                              account_id, connection_id, "orders@shop.example",
                              "orders@shop.example", recipients,
                              RAW.replace(b"{n}", n.encode()))
    with database.connect(config.database) as conn:
        capture(conn, message)
    db.execute("UPDATE sandbox_messages SET captured_at = %s WHERE txn_id = %s",
               (at, message.txn_id))
    return message


def test_create_sandbox_then_live_then_sandbox_again_reaches_the_milters_policy(
        txrelay: Txrelay, account: str, domain: str, db: DictConnection,
        config: Config) -> None:
    created = txrelay("connection", "create", account, "Staging", "--domain", domain,
                      "--sandbox")
    assert created.exit_code == 0, created.stderr
    assert "sandbox:   yes: mail is kept by the relay, not delivered" in created.stdout
    shown = txrelay("connection", "show", "Staging", "--account", account, "--json").json()
    assert shown["sandbox"] is True
    username = shown["username"]
    assert PolicyLoader(config.quota).load(db).connections[username].sandbox is True
    listed = txrelay("connection", "list", "--account", account).stdout
    assert "active sandbox" in listed

    live = txrelay("connection", "set", "Staging", "--account", account, "--live", "--json")
    assert live.json()["sandbox"] is False
    assert PolicyLoader(config.quota).load(db).connections[username].sandbox is False
    again = txrelay("connection", "set", "Staging", "--account", account, "--sandbox")
    assert again.exit_code == 0 and "mode:        sandbox (captured, not delivered)" in again.stdout
    plain = txrelay("connection", "create", account, "Shop", "--domain", domain, "--json")
    assert txrelay("connection", "show", plain.json()["username"], "--json").json()[
        "sandbox"] is False


def test_show_raw_prints_the_captured_bytes_and_json_tells_it_was_sandboxed(
        txrelay: Txrelay, db: DictConnection, config: Config, unique: str) -> None:
    sender = make_sender(db, unique)
    message = captured(db, config, sender.account_id, sender.connection_id, unique,
                       ["a@x.test", "b@x.test"])
    expected = RAW.replace(b"{n}", unique.encode())
    for ref in (str(message.txn_id), f"<sbx-{unique}@shop.example>", f"sbx-{unique}@shop.example"):
        raw = txrelay("messages", "show", ref, "--raw")
        assert raw.exit_code == 0, raw.stderr
        assert raw.stdout.encode() == expected
    [story] = txrelay("messages", "show", str(message.txn_id), "--json").json()
    assert story["decision"]["verdict"] == "sandboxed"
    assert story["decision"]["recipients"] == 2
    assert story["message"]["connection"] == sender.connection
    assert story["recipients"] == [{"recipient": "a@x.test", "state": "sandboxed"},
                                   {"recipient": "b@x.test", "state": "sandboxed"}]
    text = txrelay("messages", "show", str(message.txn_id)).stdout
    assert "captured and not delivered, not billed" in text


def test_show_raw_of_live_or_unknown_mail_is_one_clear_line_exit_3(
        txrelay: Txrelay, db: DictConnection, unique: str) -> None:
    sender = make_sender(db, unique)
    add_message(db, sender, f"4QLIVE{unique}", ["a@x.test"], message_id=f"<live-{unique}@x>")
    for ref in (f"<live-{unique}@x>", "no-such-message"):
        result = txrelay("messages", "show", ref, "--raw")
        assert result.exit_code == 3
        assert result.error.startswith(f"no sandbox message with Message-ID or transaction id "
                                       f"{ref!r}: --raw prints only mail of sandbox connections")
    assert txrelay("messages", "show", f"<live-{unique}@x>", "--json").json()[0][
        "decision"]["verdict"] == "accepted"


def test_search_lists_sandbox_recipients_as_sandboxed_beside_live_ones(
        txrelay: Txrelay, db: DictConnection, config: Config, unique: str) -> None:
    sender = make_sender(db, unique)
    add_message(db, sender, f"4QLIVE{unique}", ["live@x.test"], accepted_at=NOW)
    captured(db, config, sender.account_id, sender.connection_id, unique, ["sbx@x.test"])
    rows = txrelay("messages", "search", "--account", sender.account, "--json").json()
    assert sorted((r["recipient"], r["state"], r["billing"]) for r in rows) == [
        ("live@x.test", "accepted", "quota"), ("sbx@x.test", "sandboxed", None)]
    only = txrelay("messages", "search", "--account", sender.account, "--state", "sandboxed",
                   "--json").json()
    assert [(r["recipient"], r["queue_id"]) for r in only] == [("sbx@x.test", f"4QSBX{unique}")]
    text = txrelay("messages", "search", "--to", "sbx@x.test", "--account", sender.account)
    assert f"4QSBX{unique} sbx@x.test sandboxed [{sender.account} / Web shop]" in text.stdout


def test_stats_and_stats_by_count_sandbox_recipients_apart(
        txrelay: Txrelay, db: DictConnection, config: Config, unique: str) -> None:
    sender = make_sender(db, unique)
    add_message(db, sender, f"4QLIVE{unique}", ["live@x.test"], accepted_at=NOW)
    captured(db, config, sender.account_id, sender.connection_id, unique,
             ["a@x.test", "b@x.test", "c@x.test"])
    [row] = txrelay("stats", "--account", sender.account, "--since", "2026-11-01",
                    "--json").json()
    assert (row["arrived"], row["sandboxed"]) == (1, 3)
    table = txrelay("stats", "--account", sender.account, "--since", "2026-11-01").stdout
    assert "SANDBOXED" in table.splitlines()[0]
    by = txrelay("stats", "--by", "1h", "--account", sender.account, "--since",
                 "2026-11-03T08:00:00Z", "--until", "2026-11-03T10:00:00Z", "--json").json()
    assert [(r["start"], r["arrived"], r["sandboxed"]) for r in by] == [
        ("2026-11-03T08:00:00+00:00", 0, 0), ("2026-11-03T09:00:00+00:00", 1, 3)]


def test_purge_deletes_sandbox_mail_older_than_the_retention_only(
        db: DictConnection, config: Config, unique: str) -> None:
    sender = make_sender(db, unique)
    old = captured(db, config, sender.account_id, sender.connection_id, unique + "o",
                   ["a@x.test"], at=NOW - dt.timedelta(days=8))
    new = captured(db, config, sender.account_id, sender.connection_id, unique + "n",
                   ["a@x.test"], at=NOW - dt.timedelta(days=6))
    with database.connect(config.database) as conn:
        assert purge_sandbox_messages(conn, NOW, config.sandbox.retention_days) >= 1
    left = {str(r["txn_id"]) for r in db.execute(
        "SELECT txn_id FROM sandbox_messages WHERE connection_id = %s",
        (sender.connection_id,)).fetchall()}
    assert left == {str(new.txn_id)} and str(old.txn_id) not in left
    assert one_row(db, "SELECT count(*) AS n FROM ledger WHERE connection_id = %s",
                   (sender.connection_id,))["n"] == 0
