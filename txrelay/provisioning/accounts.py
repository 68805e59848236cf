"""Account operations: create with demo quota, look up, summarise, change settings."""

from __future__ import annotations

import datetime as dt

import psycopg

from txrelay.config import QuotaConfig
from txrelay.errors import InvalidInput, NotFound
from txrelay.policy.names import normalize_email, validate_name
from txrelay.provisioning.integrity import transaction
from txrelay.store import accounts as account_store
from txrelay.store import quota as quota_store
from txrelay.store.accounts import Account, AccountSummary


def get_account(conn: psycopg.Connection, name: str) -> Account:
    with transaction(conn):
        account = account_store.find_account(conn, name)
    if account is None:
        raise NotFound(
            f"no account named {name!r}; see 'txrelay account list' or create it "
            "with 'txrelay account create'"
        )
    return account


def create_account(
    conn: psycopg.Connection, quota: QuotaConfig, now: dt.datetime, name: str, admin_email: str
) -> AccountSummary:
    """The account and its demo block, in one transaction."""
    name = validate_name(name, "account name")
    admin_email = normalize_email(admin_email)
    duplicate = {
        "accounts_name_key": f"an account named {name!r} exists already; pick "
        "another name or see 'txrelay account list'"
    }
    with transaction(conn, duplicate):
        account = account_store.insert_account(conn, name, admin_email)
        quota_store.insert_block(conn, account.id, "demo", quota.demo_quota, now, None)
    return account_summary(conn, name, now)


def account_summary(conn: psycopg.Connection, name: str, now: dt.datetime) -> AccountSummary:
    with transaction(conn):
        found = account_store.account_summaries(conn, now, name)
    if not found:
        get_account(conn, name)  # raises NotFound with the usual hint
    return found[0]


def list_accounts(conn: psycopg.Connection, now: dt.datetime) -> list[AccountSummary]:
    with transaction(conn):
        return account_store.account_summaries(conn, now)


def change_account(
    conn: psycopg.Connection,
    now: dt.datetime,
    name: str,
    *,
    low_quota_threshold: int | None,
    admin_email: str | None,
) -> AccountSummary:
    if low_quota_threshold is None and admin_email is None:
        raise InvalidInput(
            "nothing to change; give --low-quota-threshold N and/or --admin-email ADDRESS"
        )
    if low_quota_threshold is not None and low_quota_threshold < 0:
        raise InvalidInput("--low-quota-threshold must be 0 (no reminder) or more")
    email = None if admin_email is None else normalize_email(admin_email)
    with transaction(conn):
        account = get_account(conn, name)
        account_store.update_account(
            conn, account.id, low_quota_threshold=low_quota_threshold, admin_email=email
        )
    return account_summary(conn, name, now)
