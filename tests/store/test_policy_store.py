"""Loading the milter's connection-policy snapshot from the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from tests.store.builders import Tenant, key_pair
from txrelay.config import QuotaConfig
from txrelay.store.policy import PolicyLoader, current_version


def test_snapshot_finds_connection_by_username_with_its_domains(
        conn: psycopg.Connection, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    snapshot = PolicyLoader(QuotaConfig(demo_rate_limit=25)).load(conn)
    connection = snapshot.connections[tenant.username]
    assert (connection.id, connection.name, connection.account_id) == (
        tenant.connection_id, "Web shop", tenant.account_id)
    assert connection.domains == {tenant.domain}
    assert connection.rate_limit == 25  # demo default
    domain = snapshot.domains[tenant.domain]
    assert (domain.list_help, domain.selector, domain.algorithm) == (
        tenant.list_help, tenant.selector, "rsa")
    assert "PRIVATE" not in repr(domain)


def test_paid_account_is_unlimited_unless_the_connection_says_otherwise(
        conn: psycopg.Connection, tenant_factory: Callable[..., Tenant]) -> None:
    paid = tenant_factory(paid=True)
    limited = tenant_factory(paid=True, rate_limit=100)
    demo_unlimited = tenant_factory(rate_limit=0)
    snapshot = PolicyLoader(QuotaConfig()).load(conn)
    assert snapshot.account(paid.account_id).paid
    assert snapshot.connections[paid.username].rate_limit == 0
    assert snapshot.connections[limited.username].rate_limit == 100
    assert snapshot.connections[demo_unlimited.username].rate_limit == 0


def test_provisioning_change_bumps_the_version(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    before = current_version(conn)
    conn.rollback()
    db.execute("UPDATE connections SET enabled = false WHERE id = %s", (tenant.connection_id,))
    assert current_version(conn) > before
    snapshot = PolicyLoader(QuotaConfig()).load(conn)
    assert not snapshot.connections[tenant.username].enabled


def test_unreadable_key_leaves_out_only_its_domain(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    broken = tenant_factory()
    fine = tenant_factory()
    db.execute("UPDATE dkim_keys SET private_key_pem = 'garbage' WHERE account_id = %s",
               (broken.account_id,))
    snapshot = PolicyLoader(QuotaConfig()).load(conn)
    assert broken.domain not in snapshot.domains
    assert fine.domain in snapshot.domains


def test_rotated_or_reenabled_credential_is_stamped_when_first_seen(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    """The credential's version changes with its hash; its `since` stays 0.0 for what the
    loader met first (a new login has no older credential), and moves when it changes."""
    tenant = tenant_factory()
    loader = PolicyLoader(QuotaConfig())
    first = loader.load(conn).connections[tenant.username]
    assert first.credential and first.credential_since == 0.0
    assert loader.load(conn).connections[tenant.username] == first
    db.execute("UPDATE credentials SET password_hash = '{ARGON2ID}other' "
               "WHERE connection_id = %s", (tenant.connection_id,))
    rotated = loader.load(conn).connections[tenant.username]
    assert rotated.credential != first.credential and rotated.credential_since > 0
    assert loader.load(conn).connections[tenant.username].credential_since == \
        rotated.credential_since
    db.execute("UPDATE connections SET enabled = false WHERE id = %s", (tenant.connection_id,))
    loader.load(conn)
    db.execute("UPDATE connections SET enabled = true WHERE id = %s", (tenant.connection_id,))
    reenabled = loader.load(conn).connections[tenant.username]
    assert reenabled.credential == rotated.credential
    assert reenabled.credential_since > rotated.credential_since


def test_a_pending_domain_is_loaded_unpublished_unless_publication_is_not_required(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()  # inserted as provisioning does: dkim_published_at NULL
    assert not PolicyLoader(QuotaConfig()).load(conn).domains[tenant.domain].published
    conn.rollback()
    relaxed = PolicyLoader(QuotaConfig(), require_published=False).load(conn)
    assert relaxed.domains[tenant.domain].published
    conn.rollback()
    db.execute("UPDATE sending_domains SET dkim_published_at = now() WHERE domain = %s",
               (tenant.domain,))
    assert PolicyLoader(QuotaConfig()).load(conn).domains[tenant.domain].published


def _add_second_key(db: psycopg.Connection, tenant: Tenant, pem: str) -> None:
    ed = key_pair("ed25519")
    row = db.execute("INSERT INTO dkim_keys (account_id, selector, algorithm, private_key_pem, "
                     "public_key_b64) VALUES (%s, 'ed1', 'ed25519', %s, %s) RETURNING id",
                     (tenant.account_id, pem, ed.public_key_b64)).fetchone()
    assert row is not None
    db.execute("UPDATE sending_domains SET second_dkim_key_id = %s WHERE domain = %s",
               (row["id"], tenant.domain))


def test_a_dual_signing_domain_is_loaded_with_both_keys(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    _add_second_key(db, tenant, key_pair("ed25519").private_key_pem)
    domain = PolicyLoader(QuotaConfig()).load(conn).domains[tenant.domain]
    assert [(k.selector, k.algorithm) for k in domain.keys] == [
        (tenant.selector, "rsa"), ("ed1", "ed25519")]
    assert all(k.signing_key is not None for k in domain.keys)


def test_an_unreadable_second_key_leaves_its_domain_out(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    _add_second_key(db, tenant, "garbage")
    assert tenant.domain not in PolicyLoader(QuotaConfig()).load(conn).domains
