"""`txrelay billing report` and the quota lifecycle commands: plan, tick, reconcile."""

from __future__ import annotations

import datetime as dt

import psycopg
import redis

from tests.cli.conftest import Txrelay
from tests.store.tracking_fixtures import add_message, make_sender
from txrelay.clock import FixedClock
from txrelay.config import Config
from txrelay.store.keys import AccountKeys

DAY = dt.timedelta(days=1)


def test_billing_report_bills_overage_at_the_configured_price(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str) -> None:
    start = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)
    sender = make_sender(db, unique, quota=25000, kind="booked", booked_at=start)
    add_message(db, sender, f"B1{unique}", ["a@x.test", "b@x.test"], accepted_at=start + DAY)
    add_message(db, sender, f"B2{unique}", [f"o{i}@x.test" for i in range(7)],
                accepted_at=start + 2 * DAY, billing="overage")
    report = txrelay("billing", "report", sender.account, "--period", "2026-10",
                     "--json").json()
    assert report["units_booked"] == 25000 and len(report["blocks_booked"]) == 1
    assert report["mails_from_blocks"] == 2
    assert report["overage_mails"] == 7
    assert report["overage_price_eur"] == "0.00095"
    assert report["amount_due_eur"] == "0.00665"
    assert report["amount_due_rounded_eur"] == "0.01"
    assert report["empty"] is False
    human = txrelay("billing", "report", sender.account, "--period", "2026-10")
    assert "EUR 0.00665" in human.stdout


def test_billing_report_for_a_month_without_data_says_so(
        txrelay: Txrelay, db: psycopg.Connection, unique: str) -> None:
    sender = make_sender(db, unique)
    result = txrelay("billing", "report", sender.account, "--period", "2024-02")
    assert result.exit_code == 0 and "no data for this period" in result.stdout
    assert txrelay("billing", "report", sender.account, "--period", "2024-02",
                   "--json").json()["empty"] is True


def test_billing_report_refuses_a_malformed_period(txrelay: Txrelay, db: psycopg.Connection,
                                                   unique: str) -> None:
    sender = make_sender(db, unique)
    result = txrelay("billing", "report", sender.account, "--period", "10/2026")
    assert result.exit_code == 4 and "YYYY-MM" in result.error


def test_plan_books_now_and_tick_renews_after_30_days(
        txrelay: Txrelay, account: str, clock: FixedClock, db: psycopg.Connection) -> None:
    planned = txrelay("quota", "plan", account, "--block", "25000", "--json").json()
    assert planned["plan"]["block"] == 25000
    assert [b["amount"] for b in planned["booked_now"]] == [25000]
    assert planned["plan"]["next_renewal_at"] == (clock.now() + 30 * DAY).isoformat()
    again = txrelay("quota", "plan", account, "--block", "30000", "--json").json()
    assert again["booked_now"] == []  # changing the size waits for the next renewal

    clock.advance(30 * DAY)
    ticked = txrelay("quota", "tick", account, "--json").json()
    assert [r["amount"] for r in ticked["renewals"]] == [30000]
    assert [e["expired_unused"] for e in ticked["expired"]] == [25000]
    assert txrelay("quota", "tick", account, "--json").json()["renewals"] == []

    stopped = txrelay("quota", "plan", account, "--none", "--json").json()
    assert stopped["plan"] is None and stopped["stopped"] is True


def test_plan_needs_block_or_none(txrelay: Txrelay, account: str) -> None:
    result = txrelay("quota", "plan", account)
    assert result.exit_code != 0 and "--block" in result.stderr


def test_reconcile_reports_and_repairs_a_drifted_balance(
        txrelay: Txrelay, account: str, config: Config, db: psycopg.Connection) -> None:
    account_id = txrelay("account", "show", account, "--json").json()["id"]
    client = redis.Redis.from_url(config.redis.url)
    key = AccountKeys(config.redis.key_prefix, int(account_id)).balance
    client.set(key, 12)
    report = txrelay("quota", "reconcile", account, "--json").json()
    assert report == [{"account": account, "postgres": 1000, "redis_before": 12,
                       "difference": -988, "repaired": True}]
    assert int(client.get(key)) == 1000
    human = txrelay("quota", "reconcile", account)
    assert "0 of 1 balances differed" in human.stdout
