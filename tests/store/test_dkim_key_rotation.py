"""DKIM key rotation in the store: which key signs, which are published, what is deleted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import psycopg
import pytest

from tests.store.builders import Tenant, add_domain
from txrelay.config import QuotaConfig
from txrelay.errors import Conflict
from txrelay.kek import KeyRing
from txrelay.provisioning import domains
from txrelay.provisioning.domains import KeyChoice
from txrelay.store.policy import PolicyLoader

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def _signing_key_id(db: psycopg.Connection, domain: str) -> int:
    row = db.execute("SELECT dkim_key_id FROM sending_domains WHERE domain = %s",
                     (domain,)).fetchone()
    return int(row["dkim_key_id"])  # type: ignore[index, call-overload]


def _key_exists(db: psycopg.Connection, key_id: int) -> bool:
    return db.execute("SELECT 1 FROM dkim_keys WHERE id = %s", (key_id,)).fetchone() is not None


def test_a_key_shared_with_another_domain_outlives_its_retirement_from_one(
        db: psycopg.Connection, tenant_factory: Callable[..., Tenant], kek_ring: KeyRing) -> None:
    tenant = tenant_factory()
    old_key = _signing_key_id(db, tenant.domain)
    sibling = f"news.{tenant.domain}"
    add_domain(db, tenant.account_id, sibling, old_key, tenant.list_help)

    rotated = domains.start_rotation(db, NOW, tenant.domain, KeyChoice("s2"), keys=kek_ring)
    pending = domains.pending_key(rotated)
    assert pending.key.algorithm == "rsa"  # the current key's type when none is asked for
    domains.switch_key(db, NOW, tenant.domain, pending.key.id)
    later = NOW + domains.RETIRE_AFTER
    domains.retire_key(db, later, tenant.domain, tenant.selector, force=False)

    assert _key_exists(db, old_key), "the sibling domain still signs with the old key"
    assert _signing_key_id(db, sibling) == old_key
    assert _signing_key_id(db, tenant.domain) == pending.key.id


def test_a_switch_refuses_a_pending_key_other_than_the_one_checked(
        db: psycopg.Connection, tenant_factory: Callable[..., Tenant], kek_ring: KeyRing) -> None:
    tenant = tenant_factory()
    first = domains.pending_key(domains.start_rotation(db, NOW, tenant.domain, KeyChoice("a1"),
                                                       keys=kek_ring))
    domains.retire_key(db, NOW, tenant.domain, "a1", force=False)
    assert not _key_exists(db, first.key.id), "a dropped pending key is deleted at once"
    domains.start_rotation(db, NOW, tenant.domain, KeyChoice("a2"), keys=kek_ring)
    with pytest.raises(Conflict, match="changed while its DNS record was checked"):
        domains.switch_key(db, NOW, tenant.domain, first.key.id)


def test_milter_policy_follows_the_switch_and_a_reload_is_signalled(
        db: psycopg.Connection, tenant_factory: Callable[..., Tenant], kek_ring: KeyRing) -> None:
    tenant = tenant_factory()
    loader = PolicyLoader(QuotaConfig(demo_rate_limit=25), kek_ring)
    version = loader.load(db).version  # type: ignore[arg-type]
    rotated = domains.start_rotation(db, NOW, tenant.domain, KeyChoice("b2", "ed25519"),
                                     keys=kek_ring)
    assert loader.load(db).domains[tenant.domain].selector == tenant.selector  # type: ignore[arg-type]
    domains.switch_key(db, NOW, tenant.domain, domains.pending_key(rotated).key.id)
    after = loader.load(db)  # type: ignore[arg-type]
    assert after.version > version, "the milters reload when the signing key changes"
    assert (after.domains[tenant.domain].selector,
            after.domains[tenant.domain].algorithm) == ("b2", "ed25519")
