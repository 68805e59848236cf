"""The admin's view of an account's suppression list: list, add, remove, show."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from txrelay.errors import InvalidInput, NotFound
from txrelay.policy.names import normalize_email
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.integrity import transaction
from txrelay.store import suppressions as store
from txrelay.store.suppressions import Suppression

MAX_NOTE_LENGTH = 2000


@dataclass(frozen=True)
class SuppressionDetail:
    """One address's suppression as `show` prints it."""

    account: str
    suppression: Suppression
    status: str  # active, expired or removed
    source: dict[str, Any] | None  # the message whose bounce or complaint caused it


def recipient_address(text: str) -> str:
    """The address as the milter sees it at RCPT (lower case), after checking it is one."""
    normalize_email(text.strip())  # raises InvalidInput with what is wrong
    return text.strip().lower()


def list_suppressions(
    conn: psycopg.Connection, name: str, now: dt.datetime, *, reason: str | None, limit: int
) -> list[Suppression]:
    account = get_account(conn, name)
    with transaction(conn):
        return store.list_active(conn, account.id, now, reason=reason, limit=limit)


def add_suppression(
    conn: psycopg.Connection,
    name: str,
    address: str,
    now: dt.datetime,
    *,
    reason: str,
    note: str,
    expires_days: int | None,
) -> tuple[Suppression, bool]:
    """Suppress ADDRESS for the account; (the row now, whether it was written). An active
    manual suppression is replaced (a new note or expiry); an automatic one becomes manual."""
    account = get_account(conn, name)
    recipient = recipient_address(address)
    if len(note) > MAX_NOTE_LENGTH:
        raise InvalidInput(f"--note is longer than {MAX_NOTE_LENGTH} characters")
    expires_at = now + dt.timedelta(days=expires_days) if expires_days else None
    with transaction(conn):
        written = store.suppress(
            conn, account.id, recipient, reason, now, expires_at=expires_at, detail=note
        )
        row = store.find(conn, account.id, recipient)
    assert row is not None
    return row, written


def remove_suppression(
    conn: psycopg.Connection, name: str, address: str, now: dt.datetime
) -> Suppression:
    account = get_account(conn, name)
    recipient = recipient_address(address)
    with transaction(conn):
        removed = store.remove(conn, account.id, recipient, now)
    if removed is None:
        raise NotFound(
            f"{recipient} is not suppressed for account {name!r}; see "
            f"'txrelay suppression list {name!r}'"
        )
    return removed


def show_suppression(
    conn: psycopg.Connection, name: str, address: str, now: dt.datetime
) -> SuppressionDetail:
    account = get_account(conn, name)
    recipient = recipient_address(address)
    with transaction(conn):
        row = store.find(conn, account.id, recipient)
        source = (
            store.source_message(conn, row.source_ledger_id)
            if row is not None and row.source_ledger_id is not None
            else None
        )
    if row is None:
        raise NotFound(
            f"{recipient} has never been suppressed for account {name!r}; see "
            f"'txrelay suppression list {name!r}'"
        )
    if row.removed_at is not None:
        status = "removed"
    elif row.active(now):
        status = "active"
    else:
        status = "expired"
    return SuppressionDetail(account.name, row, status, source)
