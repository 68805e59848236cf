"""A sandbox connection's message as the milter handles it (in-memory stores): the whole
path, then captured and discarded; no quota, the rate counted."""

from __future__ import annotations

from collections.abc import Callable

import dkim
import Milter

from tests.memory_store import MemoryStores
from tests.milter.conftest import Driver
from tests.store.builders import Tenant


def dns_of(tenant: Tenant) -> Callable[..., bytes]:
    """The tenant's DKIM record, as dkimpy's dnsfunc answers it."""
    wanted = f"{tenant.selector}._domainkey.{tenant.domain}."

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return tenant.keys.dns_record.encode() if name.decode() == wanted else b""
    return lookup


def test_sandbox_message_is_captured_signed_and_discarded_without_quota(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("sbx", sandbox=True, demo_quota=5)
    outcome = driver.send(tenant, recipients=("a@c.example", "b@c.example"), queue_id="4QSBX")
    assert outcome.eom == Milter.DISCARD
    assert stores.ledger.messages == {}  # not recorded, not billed
    assert stores.reservations.held_count(tenant.account_id) == 0
    assert stores.ledger.remaining_quota(tenant.account_id) == 5
    [captured] = stores.sandbox.messages.values()
    assert captured.recipients == ["a@c.example", "b@c.example"]
    assert captured.queue_id == "4QSBX"
    raw = captured.raw
    assert raw.startswith(b"DKIM-Signature: ")
    assert b"\r\nList-Help: <" in raw and b"\r\nMessage-ID: <" in raw
    assert raw.endswith(b"\r\n\r\nHello,\r\n\r\nyour order 42 has shipped.\r\n-- \r\nThe shop\r\n")
    assert dkim.verify(raw, dnsfunc=dns_of(tenant))


def test_sandbox_recipients_count_toward_the_hourly_rate(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("sbxr", sandbox=True, rate_limit=2)
    first = driver.send(tenant, recipients=("a@c.example", "b@c.example"), queue_id="4QR1")
    assert first.eom == Milter.DISCARD
    second = driver.send(tenant, recipients=("c@c.example",), queue_id="4QR2")
    assert second.rcpt[0][0] == Milter.TEMPFAIL
    assert second.rcpt[0][1] is not None and second.rcpt[0][1][:2] == ("451", "4.7.1")


def test_pending_domain_sends_sandbox_mail_but_not_live_mail(
        driver: Driver, stores: MemoryStores) -> None:
    sandbox = stores.add_tenant("sbxp", sandbox=True, published=False)
    assert driver.send(sandbox, queue_id="4QP1").eom == Milter.DISCARD
    live = stores.add_tenant("livep", published=False)
    refused = driver.send(live, queue_id="4QP2")
    assert refused.mail == Milter.REJECT
    assert refused.mail_reply is not None and refused.mail_reply[1] == "5.7.26"


def test_sandbox_capture_failure_is_a_451_and_nothing_is_kept(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("sbxf", sandbox=True)
    stores.sandbox.unavailable = True
    outcome = driver.send(tenant, queue_id="4QF1")
    assert outcome.eom == Milter.TEMPFAIL
    assert stores.sandbox.messages == {} and stores.ledger.messages == {}


def test_only_a_sandbox_transaction_keeps_the_body_in_memory(
        driver: Driver, stores: MemoryStores) -> None:
    for tenant, kept in ((stores.add_tenant("livb"), None), (
            stores.add_tenant("sbxb", sandbox=True), [])):
        driver.ctx._setsymval("{auth_authen}", tenant.username)
        assert driver.ctx._envfrom(f"<orders@{tenant.domain}>") == Milter.CONTINUE
        assert driver.milter.txn is not None and driver.milter.txn.body_chunks == kept
