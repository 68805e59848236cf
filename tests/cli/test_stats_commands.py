"""`txrelay stats` and `txrelay messages search` over ledger rows."""

from __future__ import annotations

import datetime as dt

import psycopg

from tests.cli.billing_fixtures import sender_with_outcomes
from tests.cli.conftest import Txrelay
from txrelay.clock import FixedClock


def test_stats_count_per_connection_with_bounce_rate_and_activity(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str) -> None:
    sender, _ = sender_with_outcomes(db, unique, clock.now() - dt.timedelta(hours=1))
    rows = txrelay("stats", "--account", sender.account, "--json").json()
    assert len(rows) == 1
    row = rows[0]
    assert (row["arrived"], row["delivered"], row["deferred"], row["bounced"],
            row["in_flight"]) == (4, 1, 1, 1, 1)
    assert row["bounce_rate"] == "0.2500"
    assert row["active"] is True and row["connection"] == "Web shop"
    assert row["last_used_at"] == (clock.now() - dt.timedelta(hours=1)).isoformat()


def test_stats_period_excludes_mail_outside_it(txrelay: Txrelay, db: psycopg.Connection,
                                                clock: FixedClock, unique: str) -> None:
    sender, _ = sender_with_outcomes(db, unique, clock.now() - dt.timedelta(days=3))
    rows = txrelay("stats", "--account", sender.account, "--since", "24h", "--json").json()
    assert rows[0]["arrived"] == 0
    rows = txrelay("stats", "--account", sender.account, "--since", "7d", "--json").json()
    assert rows[0]["arrived"] == 4


def test_connection_unused_for_longer_than_the_window_is_not_active(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str) -> None:
    sender, _ = sender_with_outcomes(db, unique, clock.now() - dt.timedelta(days=45))
    row = txrelay("stats", "--account", sender.account, "--json").json()[0]
    assert row["active"] is False and row["arrived"] == 4


def test_disabled_connection_is_not_active(txrelay: Txrelay, db: psycopg.Connection,
                                           clock: FixedClock, unique: str) -> None:
    sender, _ = sender_with_outcomes(db, unique, clock.now())
    db.execute("UPDATE connections SET enabled = false WHERE id = %s", (sender.connection_id,))
    result = txrelay("stats", "--account", sender.account)
    assert result.exit_code == 0
    assert "disabled" in result.stdout and "BOUNCE%" in result.stdout


def test_stats_for_an_unknown_account_is_one_clear_line(txrelay: Txrelay) -> None:
    result = txrelay("stats", "--account", "Nobody at all")
    assert result.exit_code == 3
    assert "no account named 'Nobody at all'" in result.error


def test_search_by_recipient_shows_state_dsn_and_last_event(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str) -> None:
    sender, _ = sender_with_outcomes(db, unique, clock.now())
    rows = txrelay("messages", "search", "--to", "GONE@x.test", "--account", sender.account,
                   "--json").json()
    assert [(r["recipient"], r["state"], r["dsn"]) for r in rows] == [
        ("gone@x.test", "bounced", "5.1.1")]
    assert "550 no such user" in rows[0]["last_event"]


def test_search_by_message_id_with_or_without_brackets(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str) -> None:
    sender_with_outcomes(db, unique, clock.now())
    for wanted in (f"<order-{unique}@shop.example>", f"order-{unique}@shop.example"):
        rows = txrelay("messages", "search", "--message-id", wanted, "--json").json()
        assert sorted(r["state"] for r in rows) == ["bounced", "deferred", "delivered",
                                                    "queued"]
    human = txrelay("messages", "search", "--message-id", f"order-{unique}@shop.example")
    assert "gone@x.test bounced dsn=5.1.1" in human.stdout


def test_search_needs_a_criterion(txrelay: Txrelay) -> None:
    result = txrelay("messages", "search")
    assert result.exit_code != 0 and "--to" in result.stderr
