"""Hostile input through the milter callbacks: bounded From, the domain rule, recipients
counted as Postfix queues them, and the per-connection refusal budget."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator

import Milter
import psycopg
import pytest
import redis

from tests.milter.conftest import Driver, default_headers
from tests.milter.test_relay_milter import ledger_rows
from tests.store.builders import Tenant
from txrelay.clock import FixedClock
from txrelay.milter.refusal_budget import RefusalBudget
from txrelay.milter.runtime import Runtime
from txrelay.policy.names import normalize_domain

HOSTILE_FROM = b",\n " * 20_000


def with_from(tenant: Tenant, value: bytes) -> list[tuple[str, bytes]]:
    return [("From", value), *default_headers(tenant.domain)[1:]]


def rcpt(driver: Driver, to: str, *params: str) -> tuple[int, tuple[str, ...] | None]:
    """RCPT with ESMTP parameters (TestCtx._envrcpt passes none)."""
    ctx = driver.ctx
    ctx._reply = None
    ctx._stage = Milter.M_ENVRCPT
    try:
        code = ctx._priv.envrcpt(to, *params)
    finally:
        ctx._stage = None
    return code, ctx._reply


def send_with_params(driver: Driver, tenant: Tenant, queue_id: str,
                     rcpts: list[tuple[str, tuple[str, ...]]]) -> int:
    ctx = driver.ctx
    ctx._macros.clear()
    ctx._setsymval("{auth_authen}", tenant.username)
    ctx._setsymval("{i}", queue_id)
    assert ctx._envfrom(f"<orders@{tenant.domain}>") == Milter.CONTINUE
    for to, params in rcpts:
        assert rcpt(driver, to, *params)[0] == Milter.CONTINUE
    for name, value in default_headers(tenant.domain):
        ctx._priv.header_bytes(name, value)
    ctx._priv.body(b"Hello\r\n")
    return int(ctx._eom())


def test_hostile_from_of_60_kb_gets_550_5_6_0_in_little_cpu(driver: Driver,
                                                             tenant: Tenant) -> None:
    start = time.process_time()
    outcome = driver.send(tenant, headers=with_from(tenant, HOSTILE_FROM))
    spent_ms = (time.process_time() - start) * 1000
    assert outcome.eom == Milter.REJECT and outcome.eom_reply is not None
    assert outcome.eom_reply[:2] == ("550", "5.6.0"), outcome.eom_reply
    assert spent_ms < 50, f"{spent_ms:.1f} ms of CPU for the whole message"


def test_nested_comments_get_550_not_451(driver: Driver, tenant: Tenant) -> None:
    nested = b"(" * 2000 + b")" * 2000 + f" orders@{tenant.domain}".encode()
    outcome = driver.send(tenant, headers=with_from(tenant, nested))
    assert outcome.eom_reply is not None and outcome.eom_reply[0] == "550", outcome.eom_reply
    shallow = b"(a (b (c)))" + f" orders@{tenant.domain}".encode()
    outcome = driver.send(tenant, headers=with_from(tenant, shallow))
    assert outcome.eom == Milter.ACCEPT, outcome.eom_reply


@pytest.mark.parametrize(("domain_of", "code"), [
    (lambda d: d.replace("shop", "sho\u200bp"), "5.1.7"),
    (lambda d: d.replace("shop", "sho\u00adp"), "5.1.7"),
    (lambda d: d + "\u200e", "5.1.7"),
    (lambda d: "=?utf-8?b?" + __import__("base64").b64encode(d.encode()).decode() + "?=",
     "5.1.7"),
])
def test_from_domain_that_hides_what_it_is_gets_a_specific_550(
        driver: Driver, tenant: Tenant, domain_of: object, code: str) -> None:
    assert callable(domain_of)
    value = f"Shop <orders@{domain_of(tenant.domain)}>".encode()
    outcome = driver.send(tenant, headers=with_from(tenant, value))
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("550", code), \
        outcome.eom_reply


def test_recipient_domain_with_an_invisible_character_gets_550_5_1_3(
        driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant, recipients=("alice@cust\u200bomer.example",
                                              "bob@customer.example"))
    assert outcome.mail == Milter.CONTINUE, outcome.mail_reply
    (first, reply), (second, _) = outcome.rcpt
    assert first == Milter.REJECT and reply is not None and reply[:2] == ("550", "5.1.3")
    assert "U+200B" in reply[2]
    assert second == Milter.CONTINUE and outcome.eom == Milter.ACCEPT


def rename_domain(db: psycopg.Connection, runtime: Runtime, tenant: Tenant,
                  typed: str) -> Tenant:
    db.execute("UPDATE sending_domains SET domain = %s WHERE account_id = %s",
               (normalize_domain(typed), tenant.account_id))
    runtime.policy.refresh()
    return dataclasses.replace(tenant, domain=normalize_domain(typed))


def test_owner_of_an_eszett_domain_sends_and_owner_of_fass_cannot_send_as_it(
        driver: Driver, tenant_factory: object, db: psycopg.Connection,
        runtime: Runtime, unique: str) -> None:
    assert callable(tenant_factory)
    eszett = rename_domain(db, runtime, tenant_factory(), f"faß{unique}.example")
    fass = rename_domain(db, runtime, tenant_factory(), f"fass{unique}.example")
    assert eszett.domain.startswith("xn--") and fass.domain == f"fass{unique}.example"
    written = f"Shop <orders@faß{unique}.example>".encode()
    outcome = driver.send(eszett, headers=with_from(eszett, written))
    assert outcome.eom == Milter.ACCEPT, outcome.eom_reply
    signature = outcome.added("DKIM-Signature")[0]
    assert f"d={eszett.domain}" in signature.replace("\n", "").replace("\t", "")
    outcome = driver.send(fass, headers=with_from(fass, written))
    assert outcome.eom == Milter.REJECT and outcome.eom_reply is not None
    assert outcome.eom_reply[:2] == ("550", "5.7.1") and eszett.domain in outcome.eom_reply[2]
    greek = rename_domain(db, runtime, tenant_factory(), f"ς{unique}.example")
    written = f"Shop <orders@ς{unique}.example>".encode()
    assert driver.send(greek, headers=with_from(greek, written)).eom == Milter.ACCEPT


def test_repeated_rcpt_with_other_orcpt_or_notify_is_billed_per_copy(
        driver: Driver, tenant: Tenant, db: psycopg.Connection) -> None:
    rcpts = [("<a@c.example>", ()), ("<A@c.example>", ()),  # one copy for Postfix
             ("<a@c.example>", ("ORCPT=rfc822;n1@c.example",)),
             ("<a@c.example>", ("ORCPT=rfc822;N1@c.example",)),  # the same, folded
             ("<a@c.example>", ("ORCPT=rfc822;n2@c.example",)),
             ("<a@c.example>", ("NOTIFY=SUCCESS",)),
             ("<b@c.example>", ())]
    assert send_with_params(driver, tenant, "4QCOPIES", rcpts) == Milter.ACCEPT
    rows = [r["recipient"] for r in ledger_rows(db, "4QCOPIES")]
    assert sorted(rows) == ["a@c.example"] * 4 + ["b@c.example"]


@pytest.fixture()
def budget_of_three(runtime: Runtime, redis_url: str) -> Iterator[FixedClock]:
    clock = FixedClock(dt.datetime(2026, 12, 4, 10, 59, 0, tzinfo=dt.UTC))
    kept = runtime.refusals
    runtime.refusals = RefusalBudget(redis.Redis.from_url(redis_url),
                                     runtime.config.redis.key_prefix, 3, clock)
    yield clock
    runtime.refusals = kept


def test_connection_past_its_refusal_budget_gets_421_at_mail_until_the_hour_moves_on(
        driver: Driver, tenant: Tenant, budget_of_three: FixedClock) -> None:
    foreign = with_from(tenant, b"orders@elsewhere.example")
    for _ in range(3):
        outcome = driver.send(tenant, headers=foreign)
        assert outcome.eom_reply is not None and outcome.eom_reply[0] == "550"
    outcome = driver.send(tenant)
    assert outcome.mail == Milter.TEMPFAIL and outcome.mail_reply is not None
    assert outcome.mail_reply[:2] == ("421", "4.7.0"), outcome.mail_reply
    assert "3 messages refused" in outcome.mail_reply[2]
    assert "11:00 UTC" in outcome.mail_reply[2]
    budget_of_three.advance(dt.timedelta(minutes=1))
    assert driver.send(tenant).eom == Milter.ACCEPT


def test_refused_recipients_do_not_spend_the_budget(
        driver: Driver, tenant: Tenant, budget_of_three: FixedClock) -> None:
    for _ in range(4):
        outcome = driver.send(tenant, recipients=("x@cust\u200bomer.example",
                                                  "alice@customer.example"))
        assert outcome.eom == Milter.ACCEPT, outcome.eom_reply


def budget(client: redis.Redis, prefix: str, clock: FixedClock) -> RefusalBudget:
    return RefusalBudget(client, prefix, 3, clock)


def test_refusal_budget_is_shared_by_nodes_through_redis(redis_url: str, unique: str) -> None:
    clock = FixedClock(dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC))
    client = redis.Redis.from_url(redis_url)
    node_a, node_b = budget(client, f"t{unique}", clock), budget(client, f"t{unique}", clock)
    for _ in range(3):
        assert node_b.spent(7) is None
        node_a.count(7)
    time.sleep(1.1)  # node B read the shared count less than a second ago
    assert node_b.spent(7) == 3 and node_a.spent(7) == 3
    assert node_b.spent(8) is None  # another connection
    clock.advance(dt.timedelta(hours=1))
    assert node_a.spent(7) is None and node_b.spent(7) is None


def test_refusal_budget_counts_on_the_node_while_redis_is_away(unique: str) -> None:
    clock = FixedClock(dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC))
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    node = budget(dead, f"t{unique}", clock)
    for _ in range(3):
        assert node.spent(7) is None
        node.count(7)
    assert node.spent(7) == 3
    degraded = RefusalBudget(dead, f"t{unique}", 3, clock, redis_degraded=lambda: True)
    for _ in range(3):
        degraded.count(7)
    assert degraded.spent(7) == 3


def test_message_id_with_a_nul_is_recorded_cut_at_the_nul(driver: Driver, tenant: Tenant,
                                                          db: psycopg.Connection) -> None:
    headers = [*default_headers(tenant.domain), ("Message-ID", b"<a\x00b@x.example>")]
    outcome = driver.send(tenant, headers=headers, queue_id="4QNUL")
    assert outcome.eom == Milter.ACCEPT, outcome.eom_reply
    assert [r["message_id"] for r in ledger_rows(db, "4QNUL")] == ["<a"]
