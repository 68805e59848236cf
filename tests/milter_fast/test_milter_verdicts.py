"""Every verdict, header action and abort/close path of RelayMilter, with in-memory stores."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import dkim
import Milter
import pytest

from tests.memory_store import MemoryRefusals, MemoryStores, memory_runtime
from tests.milter.conftest import Driver, default_headers
from tests.store.builders import Tenant
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.milter.runtime import Runtime


def dns_for(tenant: Tenant) -> Callable[..., bytes]:
    def get_txt(name: bytes, timeout: float = 5) -> bytes:
        assert name == f"{tenant.selector}._domainkey.{tenant.domain}.".encode()
        return tenant.keys.dns_record.encode()

    return get_txt


def recorded(stores: MemoryStores, queue_id: str) -> list[str]:
    return [r for m in stores.ledger.messages.values() if m.queue_id == queue_id
            for r in m.recipients]


def test_accepted_message_is_signed_decorated_recorded_and_committed(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    outcome = driver.send(tenant, recipients=("alice@customer.example", "bob@customer.example"),
                          queue_id="4QOK1")
    assert outcome.eom == Milter.ACCEPT
    assert outcome.added("List-Help") == [f"<{tenant.list_help}>"]
    [message_id] = outcome.added("Message-ID")
    assert message_id.endswith(f"@{tenant.domain}>")
    [signature] = outcome.added("DKIM-Signature")
    assert ("add", "DKIM-Signature", 1, signature) in outcome.changes
    assert dkim.verify(outcome.queued, dnsfunc=dns_for(tenant))
    [message] = stores.ledger.messages.values()
    assert list(message.recipients) == ["alice@customer.example", "bob@customer.example"]
    assert message.message_id == message_id and message.node == "test-node"
    assert message.header_from == f"orders@{tenant.domain}" and message.queue_id == "4QOK1"
    assert stores.reservations.balance[tenant.account_id] == 998
    assert stores.reservations.held_count(tenant.account_id) == 0


def test_client_list_help_is_replaced_last_first_and_message_id_kept(
        driver: Driver, tenant: Tenant) -> None:
    headers = [*default_headers(tenant.domain), ("List-Help", b"<https://evil.example/a>"),
               ("Message-ID", b"<own-id@shop>"), ("List-Help", b"<https://evil.example/b>")]
    outcome = driver.send(tenant, headers=headers)
    assert outcome.eom == Milter.ACCEPT
    assert [c for c in outcome.changes if c[0] == "chg"] == [
        ("chg", "List-Help", 2, ""), ("chg", "List-Help", 1, "")]
    assert outcome.added("Message-ID") == []
    assert b"evil.example" not in outcome.queued
    assert dkim.verify(outcome.queued, dnsfunc=dns_for(tenant))


def test_no_login_gets_530(driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant, auth=None)
    assert outcome.mail == Milter.REJECT
    assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("530", "5.7.0")


def test_unknown_and_disabled_connections_get_550(
        driver: Driver, stores: MemoryStores) -> None:
    disabled = stores.add_tenant("off", enabled=False)
    for outcome in (driver.send(disabled), driver.send(disabled, auth="nobody-here")):
        assert outcome.mail == Milter.REJECT
        assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("550", "5.7.1")


def test_foreign_and_null_envelope_senders_are_refused(driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant, sender="someone@example.org")
    assert outcome.mail_reply == (
        "550", "5.7.1", 'sender domain example.org is not enabled for connection "Web shop"')
    outcome = driver.send(tenant, sender="")
    assert outcome.mail == Milter.REJECT and outcome.mail_reply is not None
    assert outcome.mail_reply[:2] == ("550", "5.7.1")


def test_from_header_refusals_give_the_reservations_back(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    base = [h for h in default_headers(tenant.domain) if h[0] != "From"]
    cases = {
        "no From:": base,
        "more than one From:": base + [("From", f"a@{tenant.domain}".encode())] * 2,
        "2 addresses": [*base, ("From", f"a@{tenant.domain}, b@{tenant.domain}".encode())],
        "cannot be parsed": [*base, ("From", b"a@b@c")],
        "bank.example is not enabled": [*base, ("From", b"CEO <ceo@bank.example>")],
    }
    for expected, headers in cases.items():
        outcome = driver.send(tenant, headers=headers)
        assert outcome.eom == Milter.REJECT, expected
        assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("550", "5.7.1")
        assert expected in outcome.eom_reply[2]
        assert outcome.added("DKIM-Signature") == []
    assert stores.ledger.messages == {}
    assert stores.reservations.held_count(tenant.account_id) == 0
    assert stores.reservations.balance[tenant.account_id] == 1000


def test_oversized_message_gets_552(memory_config: Config, stores: MemoryStores,
                                    tenant: Tenant) -> None:
    small = dataclasses.replace(memory_config, milter=dataclasses.replace(
        memory_config.milter, max_message_size=10_000))
    body = (b"x" * 998 + b"\r\n") * 11
    outcome = Driver(memory_runtime(small, SystemClock(), stores)).send(tenant, body=body)
    assert outcome.eom == Milter.REJECT
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("552", "5.3.4")
    assert stores.reservations.held_count(tenant.account_id) == 0


def test_demo_account_out_of_quota_is_refused_per_recipient(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("demo", demo_quota=1)
    outcome = driver.send(tenant, recipients=("a@customer.example", "b@customer.example"),
                          queue_id="4QDEMO")
    assert outcome.rcpt[0][0] == Milter.CONTINUE
    assert outcome.rcpt[1][0] == Milter.REJECT
    assert outcome.rcpt[1][1] is not None and outcome.rcpt[1][1][:2] == ("550", "5.7.1")
    assert "txrelay quota book" in outcome.rcpt[1][1][2]
    assert outcome.eom == Milter.ACCEPT
    assert recorded(stores, "4QDEMO") == ["a@customer.example"]


def test_paid_account_out_of_quota_is_accepted_as_overage(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("paid", demo_quota=1, paid=True)
    outcome = driver.send(tenant, recipients=("a@customer.example", "b@customer.example"),
                          queue_id="4QPAID")
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE, Milter.CONTINUE]
    assert outcome.eom == Milter.ACCEPT
    assert recorded(stores, "4QPAID") == ["a@customer.example", "b@customer.example"]
    assert stores.reservations.balance[tenant.account_id] == 0


def test_hourly_rate_limit_tempfails_the_extra_recipient(
        driver: Driver, stores: MemoryStores) -> None:
    tenant = stores.add_tenant("rate", rate_limit=2)
    outcome = driver.send(tenant, recipients=("a@c.example", "b@c.example", "c@c.example"))
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE, Milter.CONTINUE, Milter.TEMPFAIL]
    reply = outcome.rcpt[2][1]
    assert reply is not None and reply[:2] == ("451", "4.7.1") and "2 recipients" in reply[2]


def test_duplicate_recipient_is_recorded_once(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    outcome = driver.send(tenant, recipients=("a@c.example", "A@C.example"), queue_id="4QDUP")
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE, Milter.CONTINUE]
    assert outcome.eom == Milter.ACCEPT
    assert recorded(stores, "4QDUP") == ["a@c.example"]


def test_recipient_with_an_invalid_domain_is_refused_and_not_reserved(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    outcome = driver.send(tenant, recipients=("a@cust\u200bomer.example", "b@c.example"),
                          queue_id="4QBADDOM")
    (first, reply), (second, _) = outcome.rcpt
    assert first == Milter.REJECT and reply is not None and reply[:2] == ("550", "5.1.3")
    assert second == Milter.CONTINUE
    assert outcome.eom == Milter.ACCEPT
    assert recorded(stores, "4QBADDOM") == ["b@c.example"]


@pytest.mark.parametrize("end", ["abort", "close"])
def test_abandoned_transaction_gives_its_reservations_back(
        driver: Driver, tenant: Tenant, stores: MemoryStores, end: str) -> None:
    driver.send(tenant, recipients=("a@c.example", "b@c.example"))
    assert stores.reservations.balance[tenant.account_id] == 998
    driver.ctx._macros["{auth_authen}"] = tenant.username
    driver.ctx._envfrom(f"<orders@{tenant.domain}>")
    driver.ctx._envrcpt("<c@c.example>")
    assert stores.reservations.held_count(tenant.account_id) == 1
    assert getattr(driver.milter, end)() == Milter.CONTINUE
    assert stores.reservations.held_count(tenant.account_id) == 0
    assert stores.reservations.balance[tenant.account_id] == 998
    assert driver.milter.txn is None


def test_new_mail_from_ends_an_unclosed_transaction(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    driver.ctx._macros["{auth_authen}"] = tenant.username
    driver.ctx._envfrom(f"<orders@{tenant.domain}>")
    driver.ctx._envrcpt("<c@c.example>")
    assert stores.reservations.held_count(tenant.account_id) == 1
    assert driver.send(tenant).eom == Milter.ACCEPT
    assert stores.reservations.held_count(tenant.account_id) == 0


def test_no_policy_loaded_tempfails_mail_naming_postgresql(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    stores.policy.current = None
    outcome = driver.send(tenant)
    assert outcome.mail == Milter.TEMPFAIL
    assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("451", "4.3.0")
    assert "PostgreSQL" in outcome.mail_reply[2]


def test_redis_away_tempfails_the_recipient_naming_redis(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    stores.reservations.unavailable = True
    outcome = driver.send(tenant)
    assert outcome.rcpt[0][0] == Milter.TEMPFAIL
    reply = outcome.rcpt[0][1]
    assert reply is not None and reply[:2] == ("451", "4.3.0") and "Redis" in reply[2]
    assert outcome.eom is None and stores.ledger.messages == {}


def test_postgresql_away_when_the_balance_must_be_loaded_names_postgresql(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    stores.ledger.unavailable = True
    outcome = driver.send(tenant)
    reply = outcome.rcpt[0][1]
    assert outcome.rcpt[0][0] == Milter.TEMPFAIL
    assert reply is not None and "PostgreSQL" in reply[2]


def test_ledger_away_at_end_of_message_tempfails_and_releases(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    driver.send(tenant)  # loads the balance
    stores.ledger.unavailable = True
    outcome = driver.send(tenant, recipients=("a@c.example", "b@c.example"))
    assert outcome.eom == Milter.TEMPFAIL
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("451", "4.3.0")
    assert "PostgreSQL" in outcome.eom_reply[2]
    assert stores.reservations.held_count(tenant.account_id) == 0
    assert stores.reservations.balance[tenant.account_id] == 999


def test_balance_commit_failing_after_the_record_still_accepts(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    reservations = stores.reservations
    real_commit = reservations.commit

    def commit_fails(account_id: int, members: Sequence[str], units: int,
                     period: str = "") -> int:
        reservations.unavailable = True
        try:
            return real_commit(account_id, members, units, period)
        finally:
            reservations.unavailable = False

    reservations.commit = commit_fails  # type: ignore[method-assign]
    outcome = driver.send(tenant, queue_id="4QNOCOMMIT")
    assert outcome.eom == Milter.ACCEPT
    assert recorded(stores, "4QNOCOMMIT") == ["alice@customer.example"]
    assert reservations.held_count(tenant.account_id) == 1  # expires by itself


def test_a_bug_in_a_callback_tempfails_releases_and_the_next_message_is_served(
        driver: Driver, tenant: Tenant, stores: MemoryStores) -> None:
    reservations = stores.reservations
    real_reserve = reservations.reserve
    calls = iter([real_reserve, None])

    def reserve_once_then_break(request: object) -> object:
        step = next(calls, None)
        if step is None:
            raise RuntimeError("a bug")
        return step(request)  # type: ignore[arg-type]

    reservations.reserve = reserve_once_then_break  # type: ignore[assignment,method-assign]
    outcome = driver.send(tenant, recipients=("a@c.example", "b@c.example"))
    assert outcome.rcpt[0][0] == Milter.CONTINUE and outcome.rcpt[1][0] == Milter.TEMPFAIL
    reply = outcome.rcpt[1][1]
    assert reply is not None and reply[:2] == ("451", "4.3.0") and "internal error" in reply[2]
    assert reservations.held_count(tenant.account_id) == 0
    reservations.reserve = real_reserve  # type: ignore[method-assign]
    assert driver.send(tenant).eom == Milter.ACCEPT


def test_a_failing_header_callback_tempfails_at_end_of_message(
        driver: Driver, tenant: Tenant, stores: MemoryStores,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from txrelay.milter.transaction import Transaction

    def broken(self: Transaction, name: str, value: bytes) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Transaction, "add_header", broken)
    outcome = driver.send(tenant)
    assert outcome.eom == Milter.TEMPFAIL
    assert outcome.eom_reply is not None and "internal error" in outcome.eom_reply[2]
    assert stores.reservations.held_count(tenant.account_id) == 0 and not stores.ledger.messages


def test_end_of_message_without_a_transaction_tempfails(driver: Driver) -> None:
    assert driver.ctx._eom() == Milter.TEMPFAIL
    assert driver.ctx._reply is not None and driver.ctx._reply[:2] == ("451", "4.3.0")


def test_connection_past_its_refusal_budget_gets_421_at_mail(
        runtime: Runtime, tenant: Tenant, stores: MemoryStores) -> None:
    budget = dataclasses.replace(runtime, refusals=MemoryRefusals(2, SystemClock()))
    driver = Driver(budget)
    refused = [h for h in default_headers(tenant.domain) if h[0] != "From"]
    for _ in range(2):
        assert driver.send(tenant, headers=refused).eom == Milter.REJECT
    outcome = driver.send(tenant)
    assert outcome.mail == Milter.TEMPFAIL
    assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("421", "4.7.0")
    assert 'connection "Web shop" had 2 messages refused' in outcome.mail_reply[2]
