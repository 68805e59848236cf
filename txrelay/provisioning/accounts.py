"""Account operations: create with demo quota, look up, summarise, change settings, disable,
enable and delete (offboarding)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from txrelay.config import QuotaConfig
from txrelay.errors import Conflict, InvalidInput, NotFound
from txrelay.policy.billing import Period, period_of
from txrelay.policy.names import normalize_email, validate_name
from txrelay.provisioning.integrity import transaction
from txrelay.store import accounts as account_store
from txrelay.store import quota as quota_store
from txrelay.store.accounts import UNCHANGED, Account, AccountSummary, Unchanged


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
        "accounts_live_name": f"an account named {name!r} exists already; pick "
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
    overage_cap: int | Unchanged | None = UNCHANGED,
) -> AccountSummary:
    if low_quota_threshold is None and admin_email is None and overage_cap is UNCHANGED:
        raise InvalidInput(
            "nothing to change; give --low-quota-threshold N, --admin-email ADDRESS, "
            "--overage-cap N or --no-overage-cap"
        )
    if isinstance(overage_cap, int) and overage_cap < 0:
        raise InvalidInput("--overage-cap must be 0 (refuse at quota) or a number of mails")
    if low_quota_threshold is not None and low_quota_threshold < 0:
        raise InvalidInput("--low-quota-threshold must be 0 (no reminder) or more")
    email = None if admin_email is None else normalize_email(admin_email)
    with transaction(conn):
        account = get_account(conn, name)
        account_store.update_account(
            conn,
            account.id,
            low_quota_threshold=low_quota_threshold,
            admin_email=email,
            overage_cap=overage_cap,
        )
    return account_summary(conn, name, now)


def set_disabled(
    conn: psycopg.Connection, now: dt.datetime, name: str, disabled: bool
) -> AccountSummary:
    """Disable or enable; the milters see it at their next policy poll and refuse (or accept
    again) the account's mail at MAIL. Messages already past MAIL finish and are billed."""
    with transaction(conn):
        account = get_account(conn, name)
        account_store.set_disabled(conn, account.id, disabled, now)
    return account_summary(conn, name, now)


@dataclass(frozen=True)
class Deletion:
    account: Account
    period: Period
    overage: int  # overage recipients of the open period, not invoiced yet
    in_flight: int  # recipients Postfix still holds: they finish and are billed


def delete_account(
    conn: psycopg.Connection, now: dt.datetime, name: str, *, force: bool
) -> Deletion:
    """Destroy credentials, domains and DKIM keys; keep the row and its ledger for billing.
    Refused (Conflict) while the open period has overage not yet invoiced, unless force."""
    period = period_of(now)
    with transaction(conn):
        account = get_account(conn, name)
        overage, in_flight = account_store.unbilled_usage(
            conn, account.id, period.start, period.end
        )
        if overage and not force:
            raise Conflict(
                f"account {name!r} has {overage:,} overage mails in {period.label} that are "
                f"not invoiced yet; run 'txrelay billing report {name!r} --period "
                f"{period.label}' (or billing export) first, then delete with --force"
            )
        account_store.mark_deleted(conn, account.id, now)
    return Deletion(account, period, overage, in_flight)
