"""Quota operations: book a block (and tell the milters' live balance), report an account."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from txrelay.config import QuotaConfig
from txrelay.errors import InvalidInput
from txrelay.policy.forecast import Forecast, Usage
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.integrity import transaction
from txrelay.store import lifecycle
from txrelay.store import quota as quota_store
from txrelay.store.accounts import Account
from txrelay.store.quota import QuotaBlock

MAX_BLOCK = 2**31 - 1  # quota_blocks.amount is a PostgreSQL integer


@dataclass(frozen=True)
class QuotaReport:
    account: Account
    blocks: list[QuotaBlock]
    now: dt.datetime
    remaining: int  # migration 0012's txrelay_remaining_quota: what the milters start from
    paid: bool  # txrelay_account_paid: out of quota, overage instead of a refusal
    forecast: Forecast  # when `remaining` runs out at the last 24 h / 7 d rate


def book_block(
    conn: psycopg.Connection, quota: QuotaConfig, now: dt.datetime, account_name: str, amount: int
) -> tuple[Account, QuotaBlock]:
    """A 'booked' block valid for block_validity_days from now; committed on return."""
    if amount < quota.min_block:
        raise InvalidInput(
            f"a block must hold at least {quota.min_block:,} mails "
            f"(asked for {amount:,}); book --amount {quota.min_block} or more"
        )
    if amount > MAX_BLOCK:
        raise InvalidInput(f"a block can hold at most {MAX_BLOCK:,} mails; book several blocks")
    expires_at = now + dt.timedelta(days=quota.block_validity_days)
    with transaction(conn):
        account = get_account(conn, account_name)
        block = quota_store.insert_block(conn, account.id, "booked", amount, now, expires_at)
    return account, block


def quota_report(conn: psycopg.Connection, account_name: str, now: dt.datetime) -> QuotaReport:
    """The account's blocks and totals, read-only (pending rows shown as settling would bill
    them; nothing is settled here)."""
    with transaction(conn):
        account = get_account(conn, account_name)
        remaining, paid = quota_store.quota_rules(conn, account.id, now)
        last_day, last_week = lifecycle.usage(conn, account.id, now)
        return QuotaReport(
            account,
            quota_store.list_blocks(conn, account.id, now),
            now,
            remaining,
            paid,
            Forecast(remaining, Usage(last_day, last_week), now),
        )
