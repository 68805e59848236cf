"""A suppressed recipient is refused at RCPT with 550 5.1.1 saying why and since when,
before any reservation (not billed), and counted; the others of the message go on."""

from __future__ import annotations

import datetime as dt

import Milter

from tests.memory_store import MemoryStores
from tests.milter.conftest import Driver
from tests.store.builders import Tenant


def test_a_suppressed_recipient_gets_550_511_and_is_neither_reserved_nor_recorded(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    stores.suppressions.suppress(tenant.account_id, "gone@customer.example")
    outcome = driver.send(tenant, recipients=("alice@customer.example", "Gone@Customer.example"))
    assert outcome.rcpt[0][0] == Milter.CONTINUE
    code, reply = outcome.rcpt[1]
    assert code == Milter.REJECT
    assert reply is not None and reply[0] == "550" and reply[1] == "5.1.1"
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert reply[2] == (f"<gone@customer.example> is suppressed for this account since {today} "
                        "(hard bounce 5.1.1); the relay does not send to it; ask your relay "
                        "admin to remove it")
    assert outcome.eom == Milter.ACCEPT
    [message] = stores.ledger.messages.values()
    assert list(message.recipients) == ["alice@customer.example"]
    assert stores.reservations.balance[tenant.account_id] == 999  # one billed, not two
    assert sum(stores.suppressions.counts.values()) == 1
    assert list(stores.suppressions.counts) == [
        (tenant.connection_id, next(iter(stores.suppressions.counts))[1])]


def test_only_suppressed_recipients_refuse_the_whole_message(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    stores.suppressions.suppress(tenant.account_id, "gone@customer.example", "complaint",
                                 dsn=None)
    outcome = driver.send(tenant, recipients=("gone@customer.example",))
    [(code, reply)] = outcome.rcpt
    assert code == Milter.REJECT and reply is not None
    assert "(spam complaint)" in reply[2]
    assert outcome.eom is None and not stores.ledger.messages
    assert stores.reservations.held_count(tenant.account_id) == 0


def test_another_accounts_suppression_expired_or_removed_ones_do_not_refuse(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    other = stores.add_tenant("other")
    stores.suppressions.suppress(other.account_id, "a@customer.example")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    stores.suppressions.suppress(tenant.account_id, "b@customer.example", "soft_bounces",
                                 expires_at=past)
    stores.suppressions.suppress(tenant.account_id, "c@customer.example")
    stores.suppressions.remove(tenant.account_id, "c@customer.example")
    outcome = driver.send(tenant, recipients=("a@customer.example", "b@customer.example",
                                              "c@customer.example"))
    assert [code for code, _ in outcome.rcpt] == [Milter.CONTINUE] * 3
    assert outcome.eom == Milter.ACCEPT


def test_a_manual_suppression_with_expiry_says_until_when(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    until = dt.datetime(2099, 1, 31, tzinfo=dt.UTC)
    stores.suppressions.suppress(tenant.account_id, "x@customer.example", "manual", dsn=None,
                                 expires_at=until)
    outcome = driver.send(tenant, recipients=("x@customer.example",))
    [(_, reply)] = outcome.rcpt
    assert reply is not None
    assert "(added by the relay admin) until 2099-01-31;" in reply[2]
