"""The milter's [limits]: header fields per message and MAILs per SMTP session."""

from __future__ import annotations

import dataclasses

import Milter

from tests.memory_store import MemoryStores, memory_runtime
from tests.milter.conftest import Driver, default_headers
from tests.store.builders import Tenant
from txrelay.clock import SystemClock
from txrelay.config import Config


def limited_driver(config: Config, stores: MemoryStores, **limits: int) -> Driver:
    changed = dataclasses.replace(config, limits=dataclasses.replace(config.limits, **limits))
    return Driver(memory_runtime(changed, SystemClock(), stores))


def test_header_fields_over_the_cap_get_550_5_6_0_and_nothing_is_held(
        memory_config: Config, stores: MemoryStores, tenant: Tenant) -> None:
    driver = limited_driver(memory_config, stores, max_headers=20)
    base = default_headers(tenant.domain)
    at_cap = [*base, *((f"X-Line-{n}", b"v") for n in range(20 - len(base)))]
    assert driver.send(tenant, headers=at_cap).eom == Milter.ACCEPT
    outcome = driver.send(tenant, headers=[*at_cap, ("X-One-More", b"v")])
    assert outcome.eom == Milter.REJECT
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("550", "5.6.0")
    assert stores.reservations.held_count(tenant.account_id) == 0
    assert driver.milter.txn is None


def test_mail_past_the_session_cap_gets_421_and_a_new_session_may_send(
        memory_config: Config, stores: MemoryStores, tenant: Tenant) -> None:
    driver = limited_driver(memory_config, stores, max_messages_per_session=2)
    assert [driver.send(tenant).eom for _ in range(2)] == [Milter.ACCEPT] * 2
    refused = driver.send(tenant)
    assert refused.mail == Milter.TEMPFAIL
    assert refused.mail_reply is not None and refused.mail_reply[:2] == ("421", "4.7.0")
    fresh = limited_driver(memory_config, stores, max_messages_per_session=2)
    assert fresh.send(tenant).eom == Milter.ACCEPT
