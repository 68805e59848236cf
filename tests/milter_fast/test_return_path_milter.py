"""The milter's return path (smfi_chgfrom) and CFBL headers, through TestCtx with in-memory
stores: the envelope sender names the message, the CFBL headers are signed, the client's
own CFBL headers go, `--bounces keep` keeps the shop's sender."""

from __future__ import annotations

import dataclasses
import email
from collections.abc import Callable, Iterator

import dkim
import Milter
import pytest

from tests.memory_store import MemoryStores, memory_runtime
from tests.milter.conftest import Driver, Outcome, default_headers
from tests.store.builders import Tenant
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.milter.runtime import Runtime
from txrelay.policy.return_path import read_feedback_id, read_return_path
from txrelay.provisioning.dkim_keys import dns_record, generate_key
from txrelay.signing import load_signing_key

SECRET = bytes(range(32))
RELAY_BOUNCES = "bounces.relay.example"


@pytest.fixture()
def bounce_runtime(memory_config: Config, stores: MemoryStores) -> Iterator[Runtime]:
    config = dataclasses.replace(
        memory_config, bounce=dataclasses.replace(memory_config.bounce, domain=RELAY_BOUNCES))
    rt = dataclasses.replace(memory_runtime(config, SystemClock(), stores), bounce_secret=SECRET)
    yield rt
    rt.close()


@pytest.fixture()
def bounce_driver(bounce_runtime: Runtime) -> Driver:
    return Driver(bounce_runtime)


def dns_for(tenant: Tenant) -> Callable[..., bytes]:
    def get_txt(name: bytes, timeout: float = 5) -> bytes:
        assert name == f"{tenant.selector}._domainkey.{tenant.domain}.".encode()
        return tenant.keys.dns_record.encode()

    return get_txt


def signed_headers(outcome: Outcome) -> list[str]:
    [signature] = outcome.added("DKIM-Signature")
    tags = dkim.util.parse_tag_value(signature.replace("\n", "").encode())
    return [h.strip() for h in tags[b"h"].decode().split(":")]


def new_sender(driver: Driver) -> str:
    return str(driver.ctx._sender).strip("<>")


def test_the_relay_wide_return_path_names_the_message(
        bounce_driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("rw")
    outcome = bounce_driver.send(tenant, sender=f"orders@{tenant.domain}")
    assert outcome.eom == Milter.ACCEPT
    sender = new_sender(bounce_driver)
    assert sender.startswith("b-") and sender.endswith(f"@{RELAY_BOUNCES}")
    [recorded] = stores.ledger.messages.values()
    assert read_return_path(SECRET, sender) == recorded.txn_id
    assert recorded.envelope_sender == f"orders@{tenant.domain}"  # the shop's, kept
    # bounces.relay.example is not under the shop's domain and this runtime has no relay key:
    # no CFBL (RFC 9477 alignment)
    assert outcome.added("CFBL-Address") == [] and "cfbl-address" not in signed_headers(outcome)
    assert dkim.verify(outcome.queued, dnsfunc=dns_for(tenant))


def test_a_domain_with_its_own_return_path_gets_signed_cfbl_headers(
        bounce_driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("own", own_return_path=True)
    headers = [*default_headers(tenant.domain),
               ("CFBL-Address", b"fbl@elsewhere.example; report=arf"),
               ("CFBL-Feedback-ID", b"theirs")]
    outcome = bounce_driver.send(tenant, headers=headers)
    assert outcome.eom == Milter.ACCEPT
    own = f"bounces.{tenant.domain}"
    assert new_sender(bounce_driver).endswith(f"@{own}")
    assert outcome.added("CFBL-Address") == [f"fbl@{own}; report=arf"]
    [feedback] = outcome.added("CFBL-Feedback-ID")
    [recorded] = stores.ledger.messages.values()
    found = read_feedback_id(SECRET, feedback)
    assert found is not None and found.txn_id == recorded.txn_id
    assert (found.account_id, found.connection_id) == (tenant.account_id, tenant.connection_id)
    assert ("chg", "CFBL-Address", 1, "") in outcome.changes  # the client's removed
    assert ("chg", "CFBL-Feedback-ID", 1, "") in outcome.changes
    assert b"elsewhere.example" not in outcome.queued and b"theirs" not in outcome.queued
    signed = signed_headers(outcome)
    assert signed.count("cfbl-address") == 2 and signed.count("cfbl-feedback-id") == 2
    assert dkim.verify(outcome.queued, dnsfunc=dns_for(tenant))


def test_a_connection_that_keeps_its_bounces_keeps_the_shop_s_sender(
        bounce_driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("keep", own_return_path=True, bounces="keep")
    outcome = bounce_driver.send(tenant, sender=f"bounces@{tenant.domain}")
    assert outcome.eom == Milter.ACCEPT
    assert new_sender(bounce_driver) == f"bounces@{tenant.domain}"  # no chgfrom
    assert outcome.added("CFBL-Address") == [f"fbl@bounces.{tenant.domain}; report=arf"]


def test_without_a_bounce_domain_nothing_changes_but_client_cfbl_goes(
        driver: Driver, tenant: Tenant) -> None:
    headers = [*default_headers(tenant.domain), ("CFBL-Address", b"fbl@x.example")]
    outcome = driver.send(tenant, sender=f"orders@{tenant.domain}", headers=headers)
    assert outcome.eom == Milter.ACCEPT
    assert new_sender(driver) == f"orders@{tenant.domain}"
    assert outcome.added("CFBL-Address") == []
    assert b"CFBL-Address" not in outcome.queued


RELAY_KEY = generate_key("rsa")  # the relay's own key ([bounce] dkim_key_file)
RELAY_SELECTOR = "txrelay"


@pytest.fixture()
def relay_key_driver(bounce_runtime: Runtime) -> Driver:
    return Driver(dataclasses.replace(
        bounce_runtime, relay_dkim=load_signing_key("rsa", RELAY_KEY.private_key_pem)))


def dns_with_relay(tenant: Tenant) -> Callable[..., bytes]:
    author = dns_for(tenant)
    relay_name = f"{RELAY_SELECTOR}._domainkey.{RELAY_BOUNCES}.".encode()
    relay_record = dns_record(RELAY_SELECTOR, RELAY_BOUNCES, "rsa", RELAY_KEY.public_key_b64)

    def get_txt(name: bytes, timeout: float = 5) -> bytes:
        return relay_record.value.encode() if name == relay_name else author(name, timeout)

    return get_txt


def signatures_in_order(queued: bytes) -> list[dict[bytes, bytes]]:
    """The DKIM-Signature fields of the queued message, top first, as tag dicts."""
    message = email.message_from_bytes(queued)
    return [dkim.util.parse_tag_value(str(v).replace("\r\n", "").replace("\n", "").encode())
            for v in message.get_all("DKIM-Signature", [])]


def test_with_the_relay_key_mail_of_a_domain_without_its_own_return_path_gets_cfbl(
        relay_key_driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("rk")
    headers = [*default_headers(tenant.domain), ("CFBL-Address", b"fbl@elsewhere.example")]
    outcome = relay_key_driver.send(tenant, headers=headers)
    assert outcome.eom == Milter.ACCEPT
    assert outcome.added("CFBL-Address") == [f"fbl@{RELAY_BOUNCES}; report=arf"]
    [feedback] = outcome.added("CFBL-Feedback-ID")
    [recorded] = stores.ledger.messages.values()
    found = read_feedback_id(SECRET, feedback)
    assert found is not None and found.txn_id == recorded.txn_id
    assert b"elsewhere.example" not in outcome.queued
    author, relay = signatures_in_order(outcome.queued)  # the author's on top
    assert (author[b"d"], relay[b"d"]) == (tenant.domain.encode(), RELAY_BOUNCES.encode())
    assert relay[b"s"] == RELAY_SELECTOR.encode()
    for tags in (author, relay):
        signed = [h.strip() for h in tags[b"h"].decode().split(":")]
        assert signed.count("cfbl-address") == 2 and signed.count("cfbl-feedback-id") == 2
    dnsfunc = dns_with_relay(tenant)
    for index in (0, 1):
        assert dkim.DKIM(outcome.queued).verify(idx=index, dnsfunc=dnsfunc)


def test_with_the_relay_key_an_aligned_domain_is_signed_by_its_author_only(
        relay_key_driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("rko", own_return_path=True)
    outcome = relay_key_driver.send(tenant)
    assert outcome.eom == Milter.ACCEPT
    assert outcome.added("CFBL-Address") == [f"fbl@bounces.{tenant.domain}; report=arf"]
    [only] = signatures_in_order(outcome.queued)
    assert only[b"d"] == tenant.domain.encode()


def test_an_ed25519_author_signature_stays_on_top_of_the_relay_s_rsa_one(
        relay_key_driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("rke", algorithm="ed25519")
    outcome = relay_key_driver.send(tenant)
    assert outcome.eom == Milter.ACCEPT
    author, relay = signatures_in_order(outcome.queued)
    assert (author[b"a"], author[b"d"]) == (b"ed25519-sha256", tenant.domain.encode())
    assert (relay[b"a"], relay[b"d"]) == (b"rsa-sha256", RELAY_BOUNCES.encode())
    dnsfunc = dns_with_relay(tenant)
    for index in (0, 1):
        assert dkim.DKIM(outcome.queued).verify(idx=index, dnsfunc=dnsfunc)
