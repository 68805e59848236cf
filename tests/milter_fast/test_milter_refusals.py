"""The refusals the rest of the fast ring did not reach, with in-memory stores: the malformed
corpus (long lines, Sender:, client DKIM-Signatures, oversized address headers) judged as
tests/milter/test_malformed.py judges it against the real stores, and the verdicts no corpus
message can give (no DKIM key loaded, a credential changed mid-session, a sender without a
domain, end of message without recipients, a sandbox message with no sandbox store)."""

from __future__ import annotations

import dataclasses

import Milter
import pytest

from tests.corpus.malformed import LONG_LINE, REFUSE, TOO_LARGE
from tests.memory_store import MemoryStores
from tests.milter.conftest import Driver, Outcome, default_headers
from tests.milter.test_malformed import corpus_cases, corpus_problems, postfix_independent
from tests.store.builders import Tenant
from txrelay.milter.runtime import Runtime
from txrelay.policy.addresses import (
    MAX_ADDRESS_HEADER_LENGTH,
    MAX_ADDRESS_HEADER_MAILBOXES,
    MAX_ADDRESS_HEADER_TOKENS,
)


@pytest.fixture()
def shop(stores: MemoryStores) -> Tenant:
    """A tenant no rate limit or quota stops within a few hundred messages (as the real
    ring's `shop`)."""
    return stores.add_tenant("corpus", rate_limit=0, demo_quota=1_000_000)


def eom_refusal(outcome: Outcome) -> tuple[str, str, str]:
    assert outcome.eom == Milter.REJECT, outcome
    assert outcome.eom_reply is not None
    return outcome.eom_reply


def with_headers(tenant: Tenant, *extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    return [*default_headers(tenant.domain), *extra]


def test_corpus_through_the_memory_milter_keeps_the_contract(
    driver: Driver, shop: Tenant, stores: MemoryStores
) -> None:
    refusing = {c.code for c in corpus_cases(shop) if c.expect == REFUSE and postfix_independent(c)}
    assert {LONG_LINE, TOO_LARGE} <= refusing  # the corpus holds those refusals
    problems = corpus_problems(driver, shop)
    assert not problems, "\n".join(problems)
    assert stores.reservations.held_count(shop.account_id) == 0


def test_long_header_and_body_lines_are_refused_with_550_5_6_0(
    driver: Driver, tenant: Tenant
) -> None:
    header = eom_refusal(driver.send(tenant, headers=with_headers(tenant, ("X-Long", b"h" * 1200))))
    assert header[:2] == ("550", "5.6.0") and "a header line is longer than 998" in header[2]
    body = eom_refusal(driver.send(tenant, body=b"b" * 999 + b"\r\n"))
    assert body[:2] == ("550", "5.6.0") and "a body line is longer than 998" in body[2]


def test_sender_header_twice_or_of_a_foreign_domain_is_refused(
    driver: Driver, tenant: Tenant
) -> None:
    own = f"ops@{tenant.domain}".encode()
    twice = eom_refusal(
        driver.send(tenant, headers=with_headers(tenant, ("Sender", own), ("Sender", own)))
    )
    assert twice[:2] == ("550", "5.7.1")
    assert "the Sender: header must appear at most once" in twice[2]
    foreign = eom_refusal(
        driver.send(tenant, headers=with_headers(tenant, ("Sender", b"ops@bank.example")))
    )
    assert foreign == (
        "550",
        "5.7.1",
        'Sender: header domain bank.example is not enabled for connection "Web shop"',
    )
    assert driver.send(tenant, headers=with_headers(tenant, ("Sender", own))).eom == Milter.ACCEPT


def test_client_dkim_signature_of_another_domain_or_none_is_refused(
    driver: Driver, tenant: Tenant, stores: MemoryStores
) -> None:
    for value, shown in ((b"v=1; a=rsa-sha256; d=bank.example; s=x; b=", "bank.example"),
                         (b"v=1; a=rsa-sha256; s=x; b=", "no d= domain")):
        reply = eom_refusal(driver.send(tenant, headers=with_headers(tenant, ("DKIM-Signature",
                                                                              value))))
        assert reply[:2] == ("550", "5.7.1")
        assert f"carries a DKIM-Signature ({shown}) of a domain not enabled" in reply[2]
    assert stores.ledger.messages == {}
    assert stores.reservations.held_count(tenant.account_id) == 0


@pytest.mark.parametrize(
    ("from_value", "says"),
    [
        # folded, so that no line is over 998 bytes: the length bound itself refuses
        ("A" * 600 + "\n " + "A" * (MAX_ADDRESS_HEADER_LENGTH - 600) + " <orders@{domain}>",
         "characters long"),
        (", ".join(["a@{domain}"] * (MAX_ADDRESS_HEADER_MAILBOXES + 1)), "addresses"),
        ("." * (MAX_ADDRESS_HEADER_TOKENS + 1) + " <orders@{domain}>", "separators"),
    ],
)
def test_an_address_header_past_the_bounds_is_refused_unparsed(
    driver: Driver, tenant: Tenant, from_value: str, says: str
) -> None:
    headers = [h for h in default_headers(tenant.domain) if h[0] != "From"]
    value = from_value.format(domain=tenant.domain).encode()
    reply = eom_refusal(driver.send(tenant, headers=[("From", value), *headers]))
    assert reply[:2] == ("550", "5.6.0") and says in reply[2]
    assert reply[2].startswith("the From: header ")


def test_a_domain_without_a_loaded_key_tempfails_with_451(
    driver: Driver, tenant: Tenant, stores: MemoryStores
) -> None:
    """A domain the connection may use whose key the node has not loaded yet (added since
    the last policy refresh)."""
    snapshot = stores.policy.current
    assert snapshot is not None
    connection = snapshot.connections[tenant.username]
    newer = dataclasses.replace(connection, domains=connection.domains | {"new-shop.example"})
    stores.policy.current = dataclasses.replace(
        snapshot, connections={**snapshot.connections, tenant.username: newer}
    )
    headers = [h for h in default_headers(tenant.domain) if h[0] != "From"]
    outcome = driver.send(tenant, headers=[("From", b"Shop <orders@new-shop.example>"), *headers])
    assert outcome.eom == Milter.TEMPFAIL
    assert outcome.eom_reply == (
        "451",
        "4.7.0",
        "sending domain new-shop.example has no DKIM key loaded yet; try again in a minute",
    )
    assert stores.reservations.held_count(tenant.account_id) == 0


def test_a_credential_changed_mid_session_gets_421_at_the_next_mail(
    driver: Driver, tenant: Tenant, stores: MemoryStores
) -> None:
    assert driver.send(tenant).eom == Milter.ACCEPT
    snapshot = stores.policy.current
    assert snapshot is not None
    rotated = dataclasses.replace(snapshot.connections[tenant.username], credential="rotated")
    stores.policy.current = dataclasses.replace(
        snapshot, connections={**snapshot.connections, tenant.username: rotated}
    )
    for _ in range(2):  # a client that ignores the 421 gets it again
        outcome = driver.send(tenant)
        assert outcome.mail == Milter.TEMPFAIL
        assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("421", "4.7.0")
        assert "log in again" in outcome.mail_reply[2]


def test_an_envelope_sender_without_a_domain_is_refused(driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant, sender="orders")
    assert outcome.mail == Milter.REJECT
    assert outcome.mail_reply == (
        "550",
        "5.7.1",
        "sender 'orders' has no domain; use an address such as shop@example.com",
    )


def test_end_of_message_with_no_recipient_tempfails_without_a_record(
    driver: Driver, tenant: Tenant, stores: MemoryStores
) -> None:
    ctx = driver.ctx
    ctx._setsymval("{auth_authen}", tenant.username)
    assert ctx._envfrom(f"<orders@{tenant.domain}>") == Milter.CONTINUE
    ctx._reply = None
    assert ctx._eom() == Milter.TEMPFAIL
    assert ctx._reply == (
        "451",
        "4.3.0",
        "the relay lost track of this transaction; please send the message again",
    )
    assert stores.ledger.messages == {}


def test_sandbox_message_without_a_sandbox_store_tempfails_naming_postgresql(
    runtime: Runtime, stores: MemoryStores
) -> None:
    tenant = stores.add_tenant("nosbx", sandbox=True)
    outcome = Driver(dataclasses.replace(runtime, sandbox=None)).send(tenant)
    assert outcome.eom == Milter.TEMPFAIL
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("451", "4.3.0")
    assert "relay database (PostgreSQL) temporarily unavailable" in outcome.eom_reply[2]
    assert stores.sandbox.messages == {} and stores.ledger.messages == {}
    assert stores.reservations.held_count(tenant.account_id) == 0
