"""The policy snapshot's return path and bounces: loaded from PostgreSQL, changes bump the
version, a local copy written before migration 0017 still loads (with the defaults)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from tests.store.builders import Tenant
from txrelay.config import QuotaConfig
from txrelay.store.policy import PolicyLoader, current_version, fetch_policy_rows


def test_changing_bounces_or_the_return_path_bumps_the_version(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    before = current_version(conn)
    conn.rollback()
    db.execute("UPDATE connections SET bounces = 'keep' WHERE id = %s", (tenant.connection_id,))
    after_bounces = current_version(conn)
    conn.rollback()
    assert after_bounces > before
    db.execute("UPDATE sending_domains SET return_path = %s WHERE domain = %s",
               (f"bounces.{tenant.domain}", tenant.domain))
    assert current_version(conn) > after_bounces
    snapshot = PolicyLoader(QuotaConfig()).load(conn)
    assert snapshot.connections[tenant.username].keep_bounces is True
    assert snapshot.domains[tenant.domain].return_path == f"bounces.{tenant.domain}"


def test_the_database_refuses_a_return_path_outside_the_domain(
        db: psycopg.Connection, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    for bad in ("bounces.elsewhere.example", f"evil{tenant.domain}", f"B.{tenant.domain}"):
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute("UPDATE sending_domains SET return_path = %s WHERE domain = %s",
                       (bad, tenant.domain))
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE connections SET bounces = 'drop' WHERE id = %s",
                   (tenant.connection_id,))


def test_a_local_copy_from_before_the_return_path_loads_with_the_defaults(
        conn: psycopg.Connection, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(own_return_path=True, bounces="keep")
    rows = fetch_policy_rows(conn)
    for row in rows["connections"]:
        del row["bounces"]
    for row in rows["domains"]:
        del row["return_path"]
    snapshot = PolicyLoader(QuotaConfig()).build(rows)
    assert snapshot.connections[tenant.username].keep_bounces is False
    assert snapshot.domains[tenant.domain].return_path == ""
