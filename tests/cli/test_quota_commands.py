"""`txrelay quota`: booking blocks (minimum, expiry, live balance) and the quota report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import redis

from tests.cli.conftest import DictConnection, Txrelay, one_row
from txrelay.clock import FixedClock
from txrelay.config import Config
from txrelay.store.keys import AccountKeys


def _account_id(txrelay: Txrelay, account: str) -> int:
    return int(txrelay("account", "show", account, "--json").json()["id"])


def test_booking_adds_a_block_that_expires_after_30_days_and_makes_the_account_paid(
        txrelay: Txrelay, account: str, clock: FixedClock, db: DictConnection) -> None:
    booked = txrelay("quota", "book", account, "--amount", "25,000", "--json").json()
    block = booked["block"]
    assert (block["kind"], block["amount"], block["used"]) == ("booked", 25000, 0)
    assert block["booked_at"] == "2026-11-03T09:30:00+00:00"
    assert block["expires_at"] == "2026-12-03T09:30:00+00:00"
    assert booked["quota_remaining"] == 26000 and booked["paid"] is True
    row = one_row(db, "SELECT booked_at, expires_at FROM quota_blocks WHERE id = %s",
                  (block["id"],))
    assert row["expires_at"] - row["booked_at"] == dt.timedelta(days=30)
    assert txrelay("account", "show", account, "--json").json()["plan"] == "paid"


def test_quota_show_lists_blocks_oldest_expiring_first_and_drops_expired_ones(
        txrelay: Txrelay, account: str, clock: FixedClock) -> None:
    txrelay("quota", "book", account, "--amount", "30000")
    clock.advance(dt.timedelta(days=10))
    txrelay("quota", "book", account, "--amount", "25000")
    report = txrelay("quota", "show", account, "--json").json()
    assert [(b["kind"], b["amount"], b["remaining"]) for b in report["blocks"]] == [
        ("booked", 30000, 30000), ("booked", 25000, 25000), ("demo", 1000, 1000)]
    assert report["quota_remaining"] == 56000 and report["plan"] == "paid"

    clock.advance(dt.timedelta(days=21))  # the first block is 31 days old now
    later = txrelay("quota", "show", account, "--json").json()
    assert [b["expired"] for b in later["blocks"]] == [True, False, False]
    assert later["quota_remaining"] == 26000
    human = txrelay("quota", "show", account).stdout
    assert "26,000 mails remaining" in human and "expired" in human and "never" in human


def test_demo_account_report(txrelay: Txrelay, account: str) -> None:
    report = txrelay("quota", "show", account, "--json").json()
    assert report["paid"] is False and report["quota_remaining"] == 1000
    assert report["blocks"][0]["expires_at"] is None


def test_block_under_the_minimum_is_refused_naming_the_minimum(
        txrelay: Txrelay, account: str, db: DictConnection) -> None:
    before = db.execute("SELECT count(*) AS n FROM quota_blocks").fetchone()
    result = txrelay("quota", "book", account, "--amount", "24999")
    assert result.exit_code == 4
    assert result.error == ("a block must hold at least 25,000 mails (asked for 24,999); "
                            "book --amount 25000 or more")
    assert db.execute("SELECT count(*) AS n FROM quota_blocks").fetchone() == before


def test_amount_that_is_not_a_number_is_a_usage_error(txrelay: Txrelay, account: str) -> None:
    for amount in ("lots", "-25000", "25000; DROP TABLE quota_blocks"):
        result = txrelay("quota", "book", account, "--amount", amount)
        assert result.exit_code == 2 and "is not a number of mails" in result.stderr


def test_booking_credits_the_live_balance_the_milters_use(
        txrelay: Txrelay, account: str, config: Config, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = AccountKeys(config.redis.key_prefix, _account_id(txrelay, account)).balance
    client.set(key, 12)
    txrelay("quota", "book", account, "--amount", "25000")
    assert client.get(key) == b"25012"


def test_booking_for_unknown_account_is_refused(txrelay: Txrelay, unique: str) -> None:
    result = txrelay("quota", "book", f"ghost {unique}", "--amount", "25000")
    assert result.exit_code == 3 and "no account named" in result.error


def test_booking_with_redis_down_is_kept_and_says_how_to_repair(
        txrelay: Txrelay, account: str, config_file: Path, tmp_path: Path,
        db: DictConnection) -> None:
    broken = tmp_path / "redis-down.toml"
    text = config_file.read_text()
    redis_url = next(line for line in text.splitlines() if line.startswith("url = \"redis"))
    broken.write_text(text.replace(redis_url, 'url = "redis://127.0.0.1:1/9"'))
    result = txrelay("--config", str(broken), "quota", "book", account, "--amount", "25000")
    assert result.exit_code == 0
    assert "the block is booked, but Redis did not take the new balance" in result.stderr
    assert one_row(db, "SELECT count(*) AS n FROM quota_blocks b JOIN accounts a "
                   "ON a.id = b.account_id WHERE a.name = %s AND kind = 'booked'",
                   (account,))["n"] == 1
