"""Quota over time with a FixedClock: expiry after 30 days, plan renewal, reconcile,
the low-quota reminder, and the billing inputs — against real PostgreSQL and Redis."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
import redis

from tests.store.tracking_fixtures import RecordingMailer, add_message, make_sender
from txrelay.clock import FixedClock
from txrelay.config import Config
from txrelay.policy.billing import bill, parse_period
from txrelay.policy.web_access import token_hash
from txrelay.store import database, lifecycle, reporting
from txrelay.store.keys import AccountKeys
from txrelay.tracker.tick import run_tick

START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture()
def client(config: Config) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(config.redis.url)
    yield connection
    connection.close()


@pytest.fixture()
def clock() -> FixedClock:
    return FixedClock(START)


def balance(client: redis.Redis, config: Config, account_id: int) -> int | None:
    value = client.get(AccountKeys(config.redis.key_prefix, account_id).balance)
    return None if value is None else int(value)


def cache_balance(client: redis.Redis, config: Config, account_id: int, units: int) -> None:
    client.set(AccountKeys(config.redis.key_prefix, account_id).balance, units)


def remaining(store_conn: psycopg.Connection, name: str, now: dt.datetime) -> int:
    return lifecycle.remaining_by_account(store_conn, now, name)[0][2]


def block(db: psycopg.Connection, block_id: int) -> dict:
    return db.execute("SELECT * FROM quota_blocks WHERE id = %s", (block_id,)).fetchone()


def test_booked_block_partly_used_expires_after_30_days(db, store_conn, client, config, clock,
                                                        unique):
    sender = make_sender(db, unique, quota=25000, kind="booked", booked_at=START)
    add_message(db, sender, f"L1{unique}", [f"r{i}@x.test" for i in range(40)],
                accepted_at=START + DAY)
    cache_balance(client, config, sender.account_id, 24960)
    mailer = RecordingMailer()

    clock.advance(dt.timedelta(days=29, hours=23))
    early = run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    assert sender.block_id not in [e.block_id for e in early.expired]
    assert remaining(store_conn, sender.account, clock.now()) == 24960

    clock.advance(dt.timedelta(hours=1))
    result = run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    assert [(e.block_id, e.expired_unused) for e in result.expired
            if e.account_id == sender.account_id] == [(sender.block_id, 24960)]
    assert block(db, sender.block_id)["expired_unused"] == 24960
    assert remaining(store_conn, sender.account, clock.now()) == 0
    assert balance(client, config, sender.account_id) == 0

    again = run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    assert sender.account_id not in [e.account_id for e in again.expired]
    assert balance(client, config, sender.account_id) == 0


def test_plan_books_now_and_renews_every_30_days(db, store_conn, client, config, clock, unique):
    sender = make_sender(db, unique, quota=1000)
    cache_balance(client, config, sender.account_id, 1000)
    with store_conn.transaction():
        lifecycle.set_plan(store_conn, sender.account_id, 25000, config.quota.min_block,
                           clock.now())
        first = lifecycle.renew_plans(store_conn, clock.now(), 30 * DAY, [sender.account_id])
    lifecycle.apply_credits(client, config.redis.key_prefix,
                            [(r.account_id, r.amount) for r in first])
    assert [(r.amount, r.booked_at) for r in first] == [(25000, START)]
    assert balance(client, config, sender.account_id) == 26000

    add_message(db, sender, f"L2{unique}", ["a@x.test"], accepted_at=START)  # demo block
    clock.advance(30 * DAY)
    result = run_tick(store_conn, client, config, clock.now(), RecordingMailer(),
                      [sender.account_id])
    renewed = [r for r in result.renewals if r.account_id == sender.account_id]
    assert [(r.amount, r.booked_at, r.expires_at) for r in renewed] == [
        (25000, START + 30 * DAY, START + 60 * DAY)]
    expired = [e for e in result.expired if e.account_id == sender.account_id]
    assert [e.expired_unused for e in expired] == [25000]
    assert remaining(store_conn, sender.account, clock.now()) == 999 + 25000
    # Redis followed every step: +25000 renewal, -25000 expiry (the milter's -1 not cached)
    assert balance(client, config, sender.account_id) == 26000

    again = run_tick(store_conn, client, config, clock.now(), RecordingMailer(),
                     [sender.account_id])
    assert sender.account_id not in [r.account_id for r in again.renewals]
    plan = lifecycle.get_plan(store_conn, sender.account_id)
    assert plan["next_renewal_at"] == START + 60 * DAY


def test_plan_stopped_books_nothing_more(db, store_conn, client, config, clock, unique):
    sender = make_sender(db, unique)
    with store_conn.transaction():
        lifecycle.set_plan(store_conn, sender.account_id, 25000, config.quota.min_block,
                           clock.now())
        lifecycle.renew_plans(store_conn, clock.now(), 30 * DAY, [sender.account_id])
        assert lifecycle.clear_plan(store_conn, sender.account_id) == 25000
    clock.advance(31 * DAY)
    result = run_tick(store_conn, client, config, clock.now(), RecordingMailer(),
                      [sender.account_id])
    assert sender.account_id not in [r.account_id for r in result.renewals]


def test_plan_below_the_minimum_block_is_refused(db, store_conn, config, clock, unique):
    sender = make_sender(db, unique)
    with pytest.raises(Exception, match="at least 25000"):
        lifecycle.set_plan(store_conn, sender.account_id, 100, config.quota.min_block, clock.now())


def test_a_missed_renewal_period_is_skipped_not_booked_expired(db, store_conn, client, config,
                                                               clock, unique):
    sender = make_sender(db, unique)
    with store_conn.transaction():
        lifecycle.set_plan(store_conn, sender.account_id, 25000, config.quota.min_block,
                           clock.now())
        lifecycle.renew_plans(store_conn, clock.now(), 30 * DAY, [sender.account_id])
    clock.advance(65 * DAY)  # the tick did not run for two periods
    result = run_tick(store_conn, client, config, clock.now(), RecordingMailer(),
                      [sender.account_id])
    renewed = [r.booked_at for r in result.renewals if r.account_id == sender.account_id]
    assert renewed == [START + 60 * DAY]


def test_reconcile_rewrites_wrong_balances_and_reports_them(db, store_conn, client, config, clock,
                                                           unique):
    sender = make_sender(db, unique, quota=1000)
    add_message(db, sender, f"L3{unique}", ["a@x.test", "b@x.test"], accepted_at=START)
    cache_balance(client, config, sender.account_id, 5)
    checks = lifecycle.reconcile(store_conn, client, config.redis.key_prefix, clock.now(),
                                 sender.account)
    assert [(c.postgres, c.redis_before, c.difference) for c in checks] == [(998, 5, -993)]
    assert balance(client, config, sender.account_id) == 998
    clean = lifecycle.reconcile(store_conn, client, config.redis.key_prefix, clock.now(),
                                sender.account)
    assert clean[0].difference == 0


def test_reconcile_counts_pending_rows_as_used(db, store_conn, client, config, clock, unique):
    sender = make_sender(db, unique, quota=1000)
    add_message(db, sender, f"L5{unique}", ["a@x.test", "b@x.test"], accepted_at=START,
                billing="pending")
    cache_balance(client, config, sender.account_id, 1000)
    checks = lifecycle.reconcile(store_conn, client, config.redis.key_prefix, clock.now(),
                                 sender.account)
    assert [(c.postgres, c.redis_before) for c in checks] == [(998, 1000)]
    assert balance(client, config, sender.account_id) == 998


def test_renewal_settles_first_so_earlier_mail_does_not_use_the_new_block(
        db, store_conn, client, config, clock, unique):
    sender = make_sender(db, unique, quota=1)
    add_message(db, sender, f"L6{unique}", ["a@x.test", "b@x.test"], accepted_at=START,
                billing="pending")
    with store_conn.transaction():
        lifecycle.set_plan(store_conn, sender.account_id, 25000, config.quota.min_block,
                           clock.now())
        [renewal] = lifecycle.renew_plans(store_conn, clock.now(), 30 * DAY, [sender.account_id])
    rows = db.execute("SELECT billing, quota_block_id FROM ledger WHERE account_id = %s "
                      "ORDER BY id", (sender.account_id,)).fetchall()
    assert [(r["billing"], r["quota_block_id"]) for r in rows] == [
        ("quota", sender.block_id), ("overage", None)]
    assert block(db, renewal.block_id)["used"] == 0


def test_reconcile_leaves_uncached_balances_to_the_milter(db, store_conn, client, config, clock,
                                                          unique):
    sender = make_sender(db, unique)
    checks = lifecycle.reconcile(store_conn, client, config.redis.key_prefix, clock.now(),
                                 sender.account)
    assert checks[0].redis_before is None and checks[0].difference == 0
    assert balance(client, config, sender.account_id) is None


def test_low_quota_reminder_once_per_crossing_and_rearmed_by_booking(db, store_conn, client, config,
                                                                      clock, unique):
    sender = make_sender(db, unique, quota=1000, threshold=100)
    mailer = RecordingMailer()
    run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    assert mailer.sent == []
    add_message(db, sender, f"L4{unique}", [f"r{i}@x.test" for i in range(901)],
                accepted_at=clock.now() - dt.timedelta(hours=2))
    run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    mine = [m for m in mailer.sent if m["To"] == f"owner-{unique}@example.net"]
    assert len(mine) == 1
    body = mine[0].get_content()
    assert "99 mails of quota left" in body
    assert "last 24 hours: 901" in body and "runs out in about" in body
    assert "token=" not in body and "dashboard" not in body  # [web] public_url is unset
    notes = db.execute("SELECT kind, detail FROM notifications WHERE account_id = %s",
                       (sender.account_id,)).fetchall()
    assert [n["kind"] for n in notes] == ["low_quota"]
    assert notes[0]["detail"]["remaining"] == 99

    db.execute("INSERT INTO quota_blocks (account_id, kind, amount, booked_at, expires_at) "
               "VALUES (%s, 'booked', 25000, %s, %s)",
               (sender.account_id, clock.now(), clock.now() + 30 * DAY))
    run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])  # re-armed
    add_message(db, sender, f"L5{unique}", [f"s{i}@x.test" for i in range(99)],
                accepted_at=clock.now())
    db.execute("UPDATE quota_blocks SET used = amount WHERE account_id = %s AND kind = "
               "'booked'", (sender.account_id,))
    run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    mine = [m for m in mailer.sent if m["To"] == f"owner-{unique}@example.net"]
    assert len(mine) == 2


def test_failed_reminder_is_retried_by_the_next_tick(db, store_conn, client, config, clock, unique):
    from txrelay.errors import ServiceUnavailable

    class DownMailer:
        def send(self, message: object) -> None:
            raise ServiceUnavailable("smtp down")

    sender = make_sender(db, unique, quota=50, threshold=100)
    result = run_tick(store_conn, client, config, clock.now(), DownMailer(), [sender.account_id])
    assert sender.account in result.reminder_failures
    mailer = RecordingMailer()
    run_tick(store_conn, client, config, clock.now(), mailer, [sender.account_id])
    assert [m["To"] for m in mailer.sent].count(f"owner-{unique}@example.net") == 1


def test_billing_inputs_count_bounced_as_billed_and_voided_as_not(db, store_conn, clock, unique):
    sender = make_sender(db, unique, quota=25000, kind="booked", booked_at=START)
    message = add_message(db, sender, f"L6{unique}", ["a@x.test", "b@x.test", "c@x.test"],
                          accepted_at=START + DAY)
    db.execute("UPDATE ledger SET state = 'bounced' WHERE message_id = %s AND recipient = "
               "'b@x.test'", (message,))
    db.execute("UPDATE ledger SET state = 'voided', billing = 'void', quota_block_id = NULL "
               "WHERE message_id = %s AND recipient = 'c@x.test'", (message,))
    add_message(db, sender, f"L7{unique}", ["o1@x.test", "o2@x.test", "o3@x.test"],
                accepted_at=START + 2 * DAY, billing="overage")
    add_message(db, sender, f"L8{unique}", ["next@x.test"], accepted_at=START + 40 * DAY,
                billing="overage")
    inputs = reporting.billing_inputs(store_conn, sender.account_id, parse_period("2026-03"))
    assert [b.amount for b in inputs.blocks_booked] == [25000]
    assert (inputs.mails_from_blocks, inputs.overage_mails, inputs.voided) == (2, 3, 1)
    assert bill(inputs, Decimal("0.00095")).amount_due_eur == Decimal("0.00285")
    empty = reporting.billing_inputs(store_conn, sender.account_id, parse_period("2025-01"))
    assert bill(empty, Decimal("0.00095")).empty


def with_dashboard(config: Config, days: int = 14) -> Config:
    web = dataclasses.replace(config.web, public_url="https://relay.example/dash/",
                              reminder_link_days=days)
    return dataclasses.replace(config, web=web)


@pytest.fixture()
def daemon_conn(config: Config) -> Iterator[psycopg.Connection]:
    """The tracker's role ([database] milter_url): the tick's rights, not the admin's."""
    connection = database.connect(config.database.for_daemons(), autocommit=True)
    yield connection
    connection.close()


def test_reminder_links_the_accounts_dashboard_page_when_the_dashboard_has_an_address(
        db, daemon_conn, client, config, clock, unique):
    sender = make_sender(db, unique, quota=50, threshold=100)
    mailer = RecordingMailer()
    run_tick(daemon_conn, client, with_dashboard(config), clock.now(), mailer,
             [sender.account_id])
    [reminder] = [m for m in mailer.sent if m["To"] == f"owner-{unique}@example.net"]
    body = reminder.get_content()
    found = re.search(r"https://relay\.example/dash/accounts/([^?\s]+)\?token=(\S+)", body)
    assert found, body
    assert found.group(1) == sender.account.replace(" ", "%20")
    link = db.execute("SELECT id, account_id, created_at, expires_at, revoked_at FROM web_links "
                      "WHERE token_hash = %s", (token_hash(found.group(2)),)).fetchone()
    assert link is not None and link["account_id"] == sender.account_id
    assert link["expires_at"] - link["created_at"] == 14 * DAY and link["revoked_at"] is None
    expires = (clock.now() + 14 * DAY).strftime("%Y-%m-%d %H:%M")
    assert f"this link works until {expires} UTC" in body
    detail = db.execute("SELECT detail FROM notifications WHERE account_id = %s",
                        (sender.account_id,)).fetchone()["detail"]
    assert detail["dashboard_link_id"] == link["id"] and found.group(2) not in str(detail)


def test_reminder_without_link_days_or_with_a_failed_send_leaves_no_link(
        db, daemon_conn, client, config, clock, unique):
    from txrelay.errors import ServiceUnavailable

    class DownMailer:
        def send(self, message: object) -> None:
            raise ServiceUnavailable("smtp down")

    sender = make_sender(db, unique, quota=50, threshold=100)
    run_tick(daemon_conn, client, with_dashboard(config), clock.now(), DownMailer(),
             [sender.account_id])
    links = "SELECT count(*) AS n FROM web_links WHERE account_id = %s"
    assert db.execute(links, (sender.account_id,)).fetchone()["n"] == 0
    mailer = RecordingMailer()
    run_tick(daemon_conn, client, with_dashboard(config, days=0), clock.now(), mailer,
             [sender.account_id])
    [reminder] = [m for m in mailer.sent if m["To"] == f"owner-{unique}@example.net"]
    assert "token=" not in reminder.get_content()
    assert db.execute(links, (sender.account_id,)).fetchone()["n"] == 0
