"""A disabled account and an overage cap as the milter applies them (in-memory stores)."""

from __future__ import annotations

import Milter

from tests.memory_store import MemoryStores
from tests.milter.conftest import Driver


def recorded(stores: MemoryStores, queue_id: str) -> list[str]:
    return [r for m in stores.ledger.messages.values() if m.queue_id == queue_id
            for r in m.recipients]


def test_disabled_account_is_refused_at_mail_saying_so(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("offb", disabled=True)
    outcome = driver.send(tenant, queue_id="4QOFF")
    assert outcome.mail == Milter.REJECT
    assert outcome.mail_reply == (
        "550", "5.7.1", f"account {tenant.account_name} is disabled; no mail is accepted for "
                        "it: contact the relay administrator")
    assert recorded(stores, "4QOFF") == []


def test_first_recipient_over_the_overage_cap_gets_550_and_is_not_billed(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("capd", demo_quota=1, paid=True, overage_cap=2)
    first = driver.send(tenant, recipients=("a@c.example", "b@c.example"), queue_id="4QCAP1")
    assert first.eom == Milter.ACCEPT
    second = driver.send(tenant, recipients=("c@c.example", "d@c.example"), queue_id="4QCAP2")
    assert second.rcpt[0][0] == Milter.CONTINUE
    assert second.rcpt[1][0] == Milter.REJECT
    assert second.rcpt[1][1] == (
        "550", "5.7.1", "the account's quota is used up and so is its overage cap of 2 mails "
                        "this billing month; book quota (txrelay quota book) or ask the relay "
                        "administrator to raise the cap")
    assert second.eom == Milter.ACCEPT
    assert recorded(stores, "4QCAP2") == ["c@c.example"]
    third = driver.send(tenant, recipients=("e@c.example",), queue_id="4QCAP3")
    assert third.rcpt[0][0] == Milter.REJECT
    assert recorded(stores, "4QCAP3") == []


def test_overage_cap_zero_refuses_a_paid_account_at_quota(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("cap0", demo_quota=1, paid=True, overage_cap=0)
    outcome = driver.send(tenant, recipients=("a@c.example", "b@c.example"), queue_id="4QCAP0")
    assert outcome.rcpt[1][0] == Milter.REJECT
    assert outcome.rcpt[1][1] is not None and "overage cap 0" in outcome.rcpt[1][1][2]
    assert recorded(stores, "4QCAP0") == ["a@c.example"]
