"""Sending-domain operations: add with a DKIM key, show the DNS record, change List-Help."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import psycopg

from txrelay.errors import InvalidInput, NotFound
from txrelay.policy.names import normalize_domain, normalize_list_help, normalize_selector
from txrelay.provisioning import dkim_keys
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.integrity import transaction
from txrelay.store import domains as domain_store
from txrelay.store.domains import SendingDomain


@dataclass(frozen=True)
class KeyChoice:
    """Where the domain's DKIM key comes from: generated (default), a file, or another domain."""

    selector: str | None = None
    algorithm: str | None = None
    key_file: Path | None = None
    reuse_key_of: str | None = None


def default_selector(now: dt.datetime) -> str:
    """txr + year and month: a new selector each month keeps key rotation simple."""
    return f"txr{now:%Y%m}"


def get_domain(conn: psycopg.Connection, domain: str) -> SendingDomain:
    name = normalize_domain(domain)
    with transaction(conn):
        found = domain_store.find_domain(conn, name)
    if found is None:
        raise NotFound(f"domain {name} is not registered; see 'txrelay domain list' or add it "
                       "with 'txrelay domain add ACCOUNT DOMAIN --list-help URL'")
    return found


def add_domain(conn: psycopg.Connection, now: dt.datetime, account_name: str, domain: str,
               list_help: str, choice: KeyChoice) -> SendingDomain:
    """Store the domain with a new or shared DKIM key, in one transaction."""
    name = normalize_domain(domain)
    help_target = normalize_list_help(list_help)
    if choice.key_file is not None and choice.reuse_key_of is not None:
        raise InvalidInput("give either --key-file or --reuse-key-of, not both")
    taken = {"sending_domains_domain_key": f"domain {name} is already registered; see "
                                           f"'txrelay domain list'"}
    with transaction(conn, taken):
        account = get_account(conn, account_name)
        if choice.reuse_key_of is not None:
            key_id = _shared_key(conn, account.id, account.name, choice)
        else:
            key_id = _new_key(conn, account.id, now, choice)
        domain_store.insert_domain(conn, account.id, name, help_target, key_id)
    return get_domain(conn, name)


def _new_key(conn: psycopg.Connection, account_id: int, now: dt.datetime,
             choice: KeyChoice) -> int:
    selector = normalize_selector(choice.selector or default_selector(now))
    if choice.key_file is not None:
        material = dkim_keys.load_key_file(choice.key_file, choice.algorithm)
    else:
        material = dkim_keys.generate_key(choice.algorithm or "rsa")
    return domain_store.insert_dkim_key(conn, account_id, selector, material.algorithm,
                                        material.private_key_pem, material.public_key_b64)


def _shared_key(conn: psycopg.Connection, account_id: int, account_name: str,
                choice: KeyChoice) -> int:
    other = get_domain(conn, choice.reuse_key_of or "")
    if other.account_id != account_id:
        raise InvalidInput(f"domain {other.domain} belongs to account {other.account_name!r}, "
                           f"not {account_name!r}; a key can only be shared within an account")
    if choice.selector is not None and normalize_selector(choice.selector) != other.key.selector:
        raise InvalidInput(f"the key of {other.domain} has selector {other.key.selector}; drop "
                           "--selector or give that one")
    if choice.algorithm is not None and choice.algorithm != other.key.algorithm:
        raise InvalidInput(f"the key of {other.domain} is {other.key.algorithm}; drop "
                           "--algorithm or give that one")
    return other.key.id


def list_domains(conn: psycopg.Connection, account_name: str | None) -> list[SendingDomain]:
    with transaction(conn):
        account_id = None if account_name is None else get_account(conn, account_name).id
        return domain_store.list_domains(conn, account_id)


def change_list_help(conn: psycopg.Connection, domain: str, list_help: str) -> SendingDomain:
    help_target = normalize_list_help(list_help)
    with transaction(conn):
        found = get_domain(conn, domain)
        domain_store.update_list_help(conn, found.id, help_target)
    return get_domain(conn, domain)

