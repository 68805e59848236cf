"""`txrelay suppression list|add|remove|show`, with and without --json, their bad input,
and what `stats` and `messages search` say about suppressions, bounces and complaints."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from tests.cli.billing_fixtures import sender_with_outcomes
from tests.cli.conftest import Txrelay
from tests.store.tracking_fixtures import make_sender
from txrelay.clock import FixedClock
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import outcomes
from txrelay.store.suppression_cache import bucket_of

DB = psycopg.Connection[dict[str, Any]]


def test_add_list_show_remove_round_trip_in_json(txrelay: Txrelay, db: DB, unique: str,
                                                 clock: FixedClock) -> None:
    sender = make_sender(db, unique)
    added = txrelay("suppression", "add", sender.account, "Someone@Example.COM", "--note",
                    "asked by phone", "--expires", "30", "--json").json()
    assert (added["address"], added["reason"], added["detail"], added["changed"]) == (
        "someone@example.com", "manual", "asked by phone", True)
    assert added["expires_at"] == (clock.now() + dt.timedelta(days=30)).isoformat()
    listed = txrelay("suppression", "list", sender.account, "--json").json()
    assert [r["address"] for r in listed] == ["someone@example.com"]
    assert txrelay("suppression", "list", sender.account, "--reason", "hard_bounce",
                   "--json").json() == []
    shown = txrelay("suppression", "show", sender.account, "someone@example.com",
                    "--json").json()
    assert (shown["status"], shown["since"], shown["source_message"]) == (
        "active", clock.now().isoformat(), None)
    removed = txrelay("suppression", "remove", sender.account, "someone@example.com",
                      "--json").json()
    assert removed["address"] == "someone@example.com"
    assert txrelay("suppression", "list", sender.account, "--json").json() == []
    shown = txrelay("suppression", "show", sender.account, "someone@example.com",
                    "--json").json()
    assert shown["status"] == "removed" and shown["removed_at"] == clock.now().isoformat()


def test_human_output_names_reason_message_and_dsn(txrelay: Txrelay, db: DB, unique: str,
                                                   clock: FixedClock) -> None:
    sender, message = sender_with_outcomes(db, unique, clock.now())
    row = db.execute("SELECT id FROM ledger WHERE message_id = %s AND recipient = %s",
                     (message, "ok@x.test")).fetchone()
    assert row is not None
    with db.transaction():
        outcomes.record_bounce(db, row["id"], "5.1.1", "550 5.1.1 <ok@x.test>: user unknown",
                               clock.now(), source="dsn", rules=SuppressionRules())
    listing = txrelay("suppression", "list", sender.account)
    assert listing.exit_code == 0
    assert "ok@x.test" in listing.stdout and "hard_bounce" in listing.stdout
    assert "never" in listing.stdout  # hard bounces suppress until removed by default
    shown = txrelay("suppression", "show", sender.account, "ok@x.test")
    assert shown.exit_code == 0, shown.stderr
    for expected in ("Status:", "active", "hard_bounce (hard bounce)", "DSN:", "5.1.1",
                     "user unknown", f"<order-{unique}@shop.example>", f"C{unique}"):
        assert expected in shown.stdout
    as_json = txrelay("suppression", "show", sender.account, "ok@x.test", "--json").json()
    assert as_json["source_message"]["queue_id"] == f"C{unique}"
    assert as_json["source_message"]["state"] == "bounced"
    added = txrelay("suppression", "add", sender.account, "ok@x.test")
    assert added.exit_code == 0 and "Suppressed ok@x.test" in added.stdout
    again = txrelay("suppression", "add", sender.account, "ok@x.test", "--reason",
                    "complaint")
    assert again.exit_code == 0 and "already suppressed" in again.stdout
    removed = txrelay("suppression", "remove", sender.account, "ok@x.test")
    assert removed.exit_code == 0 and "Removed ok@x.test" in removed.stdout


def test_bad_input_is_one_clear_line_with_its_exit_code(txrelay: Txrelay, db: DB,
                                                        unique: str) -> None:
    sender = make_sender(db, unique)
    for args in (("list", "Nobody at all"), ("add", "Nobody at all", "a@x.test"),
                 ("remove", "Nobody at all", "a@x.test"), ("show", "Nobody at all", "a@x.test")):
        result = txrelay("suppression", *args)
        assert result.exit_code == 3, args
        assert "no account named 'Nobody at all'" in result.error
    for bad in ("not-an-address", "a b@x.test", "<a@x.test>", "@x.test"):
        result = txrelay("suppression", "add", sender.account, bad)
        assert result.exit_code == 4, bad
        assert "is not an e-mail address" in result.error
    missing = txrelay("suppression", "remove", sender.account, "never@x.test")
    assert missing.exit_code == 3
    assert missing.error == (f"never@x.test is not suppressed for account {sender.account!r}; "
                             f"see 'txrelay suppression list {sender.account!r}'")
    shown = txrelay("suppression", "show", sender.account, "never@x.test")
    assert shown.exit_code == 3 and "has never been suppressed" in shown.error
    assert txrelay("suppression", "add", sender.account, "a@x.test", "--reason",
                   "whim").exit_code == 2
    assert txrelay("suppression", "add", sender.account, "a@x.test", "--expires",
                   "0").exit_code == 2


def test_every_suppression_command_explains_itself(txrelay: Txrelay) -> None:
    group = txrelay("suppression", "--help")
    assert group.exit_code == 0 and "550 5.1.1" in group.stdout
    for command in ("list", "add", "remove", "show"):
        result = txrelay("suppression", command, "--help")
        assert result.exit_code == 0 and "ACCOUNT" in result.stdout, command


def test_stats_show_complaints_and_suppressed_refusals(txrelay: Txrelay, db: DB, unique: str,
                                                      clock: FixedClock) -> None:
    sender, message = sender_with_outcomes(db, unique, clock.now() - dt.timedelta(hours=1))
    row = db.execute("SELECT id FROM ledger WHERE message_id = %s AND recipient = %s",
                     (message, "ok@x.test")).fetchone()
    assert row is not None
    with db.transaction():
        outcomes.record_complaint(db, row["id"], "abuse", clock.now(), rules=SuppressionRules())
    db.execute("SELECT txrelay_count_suppressed(%s, %s, %s)",
               ([sender.connection_id], [bucket_of(clock.now() - dt.timedelta(hours=2))], [3]))
    [stats] = txrelay("stats", "--account", sender.account, "--json").json()
    assert (stats["complained"], stats["suppressed"]) == (1, 3)
    [recent] = txrelay("stats", "--account", sender.account, "--since", "90m", "--json").json()
    assert (recent["complained"], recent["suppressed"]) == (1, 0)
    human = txrelay("stats", "--account", sender.account)
    assert "COMPLAINED" in human.stdout and "SUPPRESSED" in human.stdout


def test_messages_search_shows_bounce_kind_and_complaint(txrelay: Txrelay, db: DB,
                                                         unique: str, clock: FixedClock) -> None:
    sender, message = sender_with_outcomes(db, unique, clock.now())
    rows = {r["recipient"]: r["id"] for r in db.execute(
        "SELECT id, recipient FROM ledger WHERE message_id = %s", (message,)).fetchall()}
    with db.transaction():
        outcomes.record_bounce(db, rows["later@x.test"], "5.2.2", "552 mailbox full",
                               clock.now(), source="dsn", rules=SuppressionRules())
        outcomes.record_complaint(db, rows["ok@x.test"], "abuse", clock.now(),
                                  rules=SuppressionRules())
    found = {r["recipient"]: r for r in txrelay(
        "messages", "search", "--account", sender.account, "--json").json()}
    assert (found["later@x.test"]["bounce_kind"], found["later@x.test"]["bounce_source"],
            found["later@x.test"]["dsn"]) == ("soft", "dsn", "5.2.2")
    assert found["ok@x.test"]["complaint_type"] == "abuse"
    assert found["ok@x.test"]["complained_at"] == clock.now().isoformat()
    human = txrelay("messages", "search", "--account", sender.account).stdout
    assert "soft bounce (from dsn)" in human and "complaint (abuse)" in human


