"""Connection operations: create with credentials, find, enable/disable, rotate, delete, change."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import psycopg.errors

from txrelay.errors import Conflict, InvalidInput, NotFound
from txrelay.policy.names import validate_name
from txrelay.provisioning import credentials
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.domains import get_domain
from txrelay.provisioning.integrity import transaction
from txrelay.store import connections as connection_store
from txrelay.store.accounts import Account
from txrelay.store.connections import Connection
from txrelay.store.domains import SendingDomain

USERNAME_ATTEMPTS = 5


@dataclass(frozen=True)
class IssuedCredentials:
    """A connection with the password just issued: shown once, never stored in clear."""

    connection: Connection
    password: str


def create_connection(
    conn: psycopg.Connection,
    account_name: str,
    name: str,
    domains: Sequence[str],
    rate_limit: int | None,
    sandbox: bool = False,
) -> IssuedCredentials:
    name = validate_name(name, "connection name")
    _check_rate_limit(rate_limit)
    if not domains:
        raise InvalidInput("a connection needs at least one sending domain; give --domain D")
    taken = {
        "connections_live_name": f"account {account_name!r} already has a connection "
        f"named {name!r}; pick another name"
    }
    password = credentials.make_password()
    with transaction(conn, taken):
        account = get_account(conn, account_name)
        owned = [_owned_domain(conn, account, domain) for domain in domains]
        connection_id = connection_store.insert_connection(
            conn, account.id, name, rate_limit, sandbox
        )
        for domain in owned:
            connection_store.link_domain(conn, connection_id, domain.id, account.id)
        _insert_credentials(conn, connection_id, account.name, name, password)
        created = _by_id(conn, account.id, name)
    return IssuedCredentials(created, password)


def _insert_credentials(
    conn: psycopg.Connection, connection_id: int, account_name: str, name: str, password: str
) -> None:
    """A fresh random user name; on the rare collision, try another inside a savepoint."""
    password_hash = credentials.hash_password(password)
    for _ in range(USERNAME_ATTEMPTS):
        username = credentials.make_username(account_name, name)
        try:
            with conn.transaction():
                connection_store.insert_credentials(conn, connection_id, username, password_hash)
            return
        except psycopg.errors.UniqueViolation:
            continue
    raise Conflict("could not find a free user name; run the command again")


def _owned_domain(conn: psycopg.Connection, account: Account, domain: str) -> SendingDomain:
    found = get_domain(conn, domain)
    if found.account_id != account.id:
        raise InvalidInput(
            f"domain {found.domain} belongs to account {found.account_name!r}, "
            f"not {account.name!r}; a connection may only send from its own "
            "account's domains"
        )
    return found


def _by_id(conn: psycopg.Connection, account_id: int, name: str) -> Connection:
    return connection_store.list_connections(conn, account_id=account_id, name=name)[0]


def _check_rate_limit(rate_limit: int | None) -> None:
    if rate_limit is not None and rate_limit < 0:
        raise InvalidInput("--rate-limit must be 0 (unlimited) or a number of recipients per hour")


def find_connection(conn: psycopg.Connection, ref: str, account_name: str | None) -> Connection:
    """By account + name, or by SASL user name, or by a name only one account uses."""
    with transaction(conn):
        if account_name is not None:
            account = get_account(conn, account_name)
            found = connection_store.list_connections(conn, account_id=account.id, name=ref)
        else:
            found = connection_store.list_connections(
                conn, username=ref
            ) or connection_store.list_connections(conn, name=ref)
    if not found:
        where = f" in account {account_name!r}" if account_name else ""
        raise NotFound(f"no connection {ref!r}{where}; see 'txrelay connection list'")
    if len(found) > 1:
        accounts = ", ".join(repr(c.account_name) for c in found)
        raise InvalidInput(
            f"several accounts have a connection named {ref!r} ({accounts}); add --account ACCOUNT"
        )
    return found[0]


def list_connections(conn: psycopg.Connection, account_name: str | None) -> list[Connection]:
    with transaction(conn):
        account_id = None if account_name is None else get_account(conn, account_name).id
        return connection_store.list_connections(conn, account_id=account_id)


def set_enabled(
    conn: psycopg.Connection, ref: str, account_name: str | None, enabled: bool
) -> Connection:
    with transaction(conn):
        found = find_connection(conn, ref, account_name)
        connection_store.set_enabled(conn, found.id, enabled)
        return _by_id(conn, found.account_id, found.name)


def rotate_password(
    conn: psycopg.Connection, ref: str, account_name: str | None, now: dt.datetime
) -> IssuedCredentials:
    """A new password; the old one stops working at the next login on every node."""
    password = credentials.make_password()
    with transaction(conn):
        found = find_connection(conn, ref, account_name)
        connection_store.replace_password(conn, found.id, credentials.hash_password(password), now)
    return IssuedCredentials(found, password)


def delete_connection(
    conn: psycopg.Connection, ref: str, account_name: str | None, now: dt.datetime
) -> Connection:
    """Soft delete: the row stays for the ledger, the credentials go."""
    with transaction(conn):
        found = find_connection(conn, ref, account_name)
        connection_store.soft_delete(conn, found.id, now)
    return found


@dataclass(frozen=True)
class ConnectionChange:
    rate_limit: int | None = None
    default_rate_limit: bool = False
    add_domains: tuple[str, ...] = ()
    remove_domains: tuple[str, ...] = ()
    bounces: str | None = None  # 'relay' or 'keep'
    sandbox: bool | None = None  # True: captured, not delivered; False: live


def change_connection(
    conn: psycopg.Connection, ref: str, account_name: str | None, change: ConnectionChange
) -> Connection:
    if change == ConnectionChange():
        raise InvalidInput(
            "nothing to change; give --rate-limit, --default-rate-limit, "
            "--add-domain, --remove-domain, --bounces, --sandbox or --live"
        )
    if change.rate_limit is not None and change.default_rate_limit:
        raise InvalidInput("give either --rate-limit N or --default-rate-limit, not both")
    _check_rate_limit(change.rate_limit)
    with transaction(conn):
        found = find_connection(conn, ref, account_name)
        account = get_account(conn, found.account_name)
        if change.rate_limit is not None or change.default_rate_limit:
            connection_store.set_rate_limit(conn, found.id, change.rate_limit)
        if change.bounces is not None:
            connection_store.set_bounces(conn, found.id, change.bounces)
        if change.sandbox is not None:
            connection_store.set_sandbox(conn, found.id, change.sandbox)
        for domain in change.add_domains:
            connection_store.link_domain(
                conn, found.id, _owned_domain(conn, account, domain).id, account.id
            )
        for domain in change.remove_domains:
            connection_store.unlink_domain(conn, found.id, get_domain(conn, domain).id)
        changed = _by_id(conn, account.id, found.name)
        if not changed.domains:
            raise InvalidInput(
                "a connection needs at least one sending domain; add another "
                "before removing the last one"
            )
    return changed
