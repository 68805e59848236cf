"""Offboarding domains: remove one (its keys destroyed), or move it to another account."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from txrelay.errors import InvalidInput
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.domains import get_domain
from txrelay.provisioning.integrity import transaction
from txrelay.store import connections as connection_store
from txrelay.store import domains as domain_store
from txrelay.store.domains import SendingDomain


@dataclass(frozen=True)
class DomainRemoval:
    domain: SendingDomain
    connections: list[str]  # the connections that could send from it, and no longer can
    keys_destroyed: int  # keys no other domain uses, deleted with their private halves


def remove_domain(conn: psycopg.Connection, domain: str) -> DomainRemoval:
    """Delete the domain, take it from its connections, destroy its keys unless another
    domain of the account signs with or publishes them. The ledger does not point at
    domains: its history stays."""
    with transaction(conn):
        found = get_domain(conn, domain)
        unlinked = domain_store.unlink_from_connections(conn, found.id)
        domain_store.delete_domain(conn, found.id)
        destroyed = sum(domain_store.delete_unused_key(conn, key_id) for key_id in _key_ids(found))
    return DomainRemoval(found, unlinked, destroyed)


@dataclass(frozen=True)
class DomainMove:
    domain: SendingDomain  # as it is now, in the new account
    from_account: str
    connections_lost: list[str]  # the old account's connections that sent from it
    connections_added: list[str]  # the new account's connections given it


def move_domain(
    conn: psycopg.Connection, domain: str, to_account: str, connections: Sequence[str] = ()
) -> DomainMove:
    """The domain, its signing key and its pending/retiring keys (with their rotation
    history) belong to `to_account` from now on; the old account's connections lose it, and
    the named connections of the new account may send from it. One transaction."""
    with transaction(conn):
        found = get_domain(conn, domain)
        target = get_account(conn, to_account)
        if found.account_id == target.id:
            raise InvalidInput(f"domain {found.domain} belongs to account {target.name!r} already")
        named = []
        for name in connections:
            matches = connection_store.list_connections(conn, account_id=target.id, name=name)
            if not matches:
                raise InvalidInput(
                    f"account {target.name!r} has no connection named {name!r}; see "
                    f"'txrelay connection list --account {target.name!r}'"
                )
            named.append(matches[0])
        lost = domain_store.unlink_from_connections(conn, found.id)
        domain_store.move_domain(conn, found.id, _key_ids(found), target.id)
        for connection in named:
            connection_store.link_domain(conn, connection.id, found.id, target.id)
        moved = get_domain(conn, found.domain)
    return DomainMove(moved, found.account_name, lost, [c.name for c in named])


def _key_ids(found: SendingDomain) -> list[int]:
    return sorted({*(k.id for k in found.signing_keys), *(r.key.id for r in found.rotating)})
