"""Quota operations: book a block (and tell the milters' live balance), report an account."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from txrelay.config import QuotaConfig
from txrelay.errors import InvalidInput
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.integrity import transaction
from txrelay.store import quota as quota_store
from txrelay.store.accounts import Account
from txrelay.store.quota import QuotaBlock

MAX_BLOCK = 2**31 - 1  # quota_blocks.amount is a PostgreSQL integer


@dataclass(frozen=True)
class QuotaReport:
    account: Account
    blocks: list[QuotaBlock]
    now: dt.datetime

    @property
    def remaining(self) -> int:
        return sum(block.remaining(self.now) for block in self.blocks)

    @property
    def paid(self) -> bool:
        """Paid once any block was booked or came from a plan; demo accounts are refused
        when out of quota instead of going on as overage."""
        return any(block.kind in {"booked", "plan"} for block in self.blocks)


def book_block(conn: psycopg.Connection, quota: QuotaConfig, now: dt.datetime,
               account_name: str, amount: int) -> tuple[Account, QuotaBlock]:
    """A 'booked' block valid for block_validity_days from now; committed on return."""
    if amount < quota.min_block:
        raise InvalidInput(f"a block must hold at least {quota.min_block:,} mails "
                           f"(asked for {amount:,}); book --amount {quota.min_block} or more")
    if amount > MAX_BLOCK:
        raise InvalidInput(f"a block can hold at most {MAX_BLOCK:,} mails; book several blocks")
    expires_at = now + dt.timedelta(days=quota.block_validity_days)
    with transaction(conn):
        account = get_account(conn, account_name)
        block = quota_store.insert_block(conn, account.id, "booked", amount, now, expires_at)
    return account, block


def quota_report(conn: psycopg.Connection, account_name: str, now: dt.datetime) -> QuotaReport:
    with transaction(conn):
        account = get_account(conn, account_name)
        return QuotaReport(account, quota_store.list_blocks(conn, account.id), now)
