"""RelayMilter's callbacks through TestCtx, with the run's real PostgreSQL and Redis."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import dkim
import Milter
import psycopg
import redis

from tests.harness.processes import wait_until
from tests.milter.conftest import Driver, default_headers
from tests.store.builders import Tenant, make_tenant
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.milter.runtime import Runtime, open_runtime
from txrelay.store.keys import AccountKeys


def dns_for(tenant: Tenant) -> Callable[..., bytes]:
    def get_txt(name: bytes, timeout: float = 5) -> bytes:
        assert name == f"{tenant.selector}._domainkey.{tenant.domain}.".encode()
        return tenant.keys.dns_record.encode()

    return get_txt


def ledger_rows(db: psycopg.Connection, queue_id: str) -> list[dict[str, Any]]:
    """The message's ledger rows once the milter's settler has billed them to blocks."""
    def read() -> list[dict[str, Any]]:
        return db.execute(  # type: ignore[return-value]
            "SELECT l.recipient, l.billing, m.message_id, m.node, m.header_from, m.size "
            "FROM ledger l JOIN messages m ON m.id = l.message_id WHERE m.queue_id = %s "
            "ORDER BY l.id", (queue_id,)).fetchall()

    wait_until(lambda: all(r["billing"] != "pending" for r in read()), 10,
               f"the settler billing message {queue_id}")
    return read()


def test_accepted_message_is_signed_decorated_and_recorded(
        driver: Driver, tenant: Tenant, db: psycopg.Connection) -> None:
    outcome = driver.send(tenant, recipients=("alice@customer.example", "bob@customer.example"),
                          queue_id="4QOK1")
    assert outcome.eom == Milter.ACCEPT
    assert outcome.added("List-Help") == [f"<{tenant.list_help}>"]
    [message_id] = outcome.added("Message-ID")
    assert message_id.endswith(f"@{tenant.domain}>")
    [signature] = outcome.added("DKIM-Signature")
    assert ("add", "DKIM-Signature", 1, signature) in outcome.changes
    assert "c=relaxed/relaxed" in signature and "a=rsa-sha256" in signature
    tags = dkim.util.parse_tag_value(signature.replace("\n", "").encode())
    signed = [h.strip() for h in tags[b"h"].decode().split(":")]
    assert signed.count("from") == 2
    assert {"list-help", "message-id", "to", "subject", "date"} <= set(signed)
    assert dkim.verify(outcome.queued, dnsfunc=dns_for(tenant))
    rows = ledger_rows(db, "4QOK1")
    assert [(r["recipient"], r["billing"]) for r in rows] == [
        ("alice@customer.example", "quota"), ("bob@customer.example", "quota")]
    assert rows[0]["message_id"] == message_id and rows[0]["node"] == "test-node"
    assert rows[0]["header_from"] == f"orders@{tenant.domain}"


def test_client_list_help_is_replaced_and_message_id_kept(
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


def test_signature_survives_odd_but_legal_header_spacing(driver: Driver, tenant: Tenant) -> None:
    headers = [*default_headers(tenant.domain), ("X-Long", b"one\n two\n\tthree"),
               ("Cc", b"  carol@customer.example  ")]
    outcome = driver.send(tenant, headers=headers, body=b"line one\r\n\r\n\r\n")
    assert dkim.verify(outcome.queued, dnsfunc=dns_for(tenant))


def test_tampered_body_fails_verification(driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant)
    assert not dkim.verify(outcome.queued.replace(b"order 42", b"order 43"),
                           dnsfunc=dns_for(tenant))


def test_no_login_gets_530(driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant, auth=None)
    assert outcome.mail == Milter.REJECT
    assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("530", "5.7.0")


def test_unknown_and_disabled_connections_get_550(
        driver: Driver, tenant_factory: Callable[..., Tenant]) -> None:
    disabled = tenant_factory(enabled=False)
    for outcome in (driver.send(disabled), driver.send(disabled, auth="nobody-here")):
        assert outcome.mail == Milter.REJECT
        assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("550", "5.7.1")


def test_foreign_envelope_sender_is_refused_naming_domain_and_connection(
        driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant, sender="someone@example.org")
    assert outcome.mail_reply == (
        "550", "5.7.1", 'sender domain example.org is not enabled for connection "Web shop"')


def test_null_sender_is_refused(driver: Driver, tenant: Tenant) -> None:
    outcome = driver.send(tenant, sender="")
    assert outcome.mail == Milter.REJECT and outcome.mail_reply is not None
    assert outcome.mail_reply[:2] == ("550", "5.7.1")


def test_from_header_refusals(driver: Driver, tenant: Tenant) -> None:
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


def test_oversized_message_gets_552(driver: Driver, tenant: Tenant, runtime: Runtime) -> None:
    big = b"x" * 998 + b"\r\n"
    body = big * (runtime.config.milter.max_message_size // len(big) + 1)
    outcome = driver.send(tenant, body=body)
    assert outcome.eom == Milter.REJECT
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("552", "5.3.4")


def test_demo_account_out_of_quota_is_refused_per_recipient(
        driver: Driver, tenant_factory: Callable[..., Tenant], db: psycopg.Connection) -> None:
    tenant = tenant_factory(demo_quota=1)
    outcome = driver.send(tenant, recipients=("a@customer.example", "b@customer.example"),
                          queue_id="4QDEMO")
    assert outcome.rcpt[0][0] == Milter.CONTINUE
    assert outcome.rcpt[1][0] == Milter.REJECT
    assert outcome.rcpt[1][1] is not None and outcome.rcpt[1][1][:2] == ("550", "5.7.1")
    assert "txrelay quota book" in outcome.rcpt[1][1][2]
    assert outcome.eom == Milter.ACCEPT
    assert [r["recipient"] for r in ledger_rows(db, "4QDEMO")] == ["a@customer.example"]


def test_paid_account_out_of_quota_is_accepted_as_overage(
        driver: Driver, tenant_factory: Callable[..., Tenant], db: psycopg.Connection) -> None:
    tenant = tenant_factory(demo_quota=1, paid=True)
    outcome = driver.send(tenant, recipients=("a@customer.example", "b@customer.example"),
                          queue_id="4QPAID")
    assert outcome.eom == Milter.ACCEPT
    assert [r["billing"] for r in ledger_rows(db, "4QPAID")] == ["quota", "overage"]


def test_hourly_rate_limit_tempfails_the_extra_recipient(
        driver: Driver, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(rate_limit=2)
    outcome = driver.send(tenant, recipients=("a@c.example", "b@c.example", "c@c.example"))
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE, Milter.CONTINUE, Milter.TEMPFAIL]
    reply = outcome.rcpt[2][1]
    assert reply is not None and reply[:2] == ("451", "4.7.1") and "2 recipients" in reply[2]


def test_duplicate_recipient_is_recorded_once(
        driver: Driver, tenant: Tenant, db: psycopg.Connection) -> None:
    outcome = driver.send(tenant, recipients=("a@c.example", "A@C.example"), queue_id="4QDUP")
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE, Milter.CONTINUE]
    assert outcome.eom == Milter.ACCEPT
    assert [r["recipient"] for r in ledger_rows(db, "4QDUP")] == ["a@c.example"]


def test_committed_message_consumes_balance_and_aborted_one_does_not(
        driver: Driver, tenant: Tenant, runtime: Runtime, redis_url: str) -> None:
    keys = AccountKeys(runtime.config.redis.key_prefix, tenant.account_id)
    client = redis.Redis.from_url(redis_url)
    driver.send(tenant, recipients=("a@c.example", "b@c.example"))
    assert client.get(keys.balance) == b"998" and client.zcard(keys.held) == 0
    milter = driver.milter
    driver.ctx._macros["{auth_authen}"] = tenant.username
    driver.ctx._envfrom(f"<orders@{tenant.domain}>")
    driver.ctx._envrcpt("<c@c.example>")
    assert client.zcard(keys.held) == 1
    milter.abort()
    assert client.zcard(keys.held) == 0 and client.get(keys.balance) == b"998"


def test_garbage_headers_do_not_crash_and_next_message_is_served(
        driver: Driver, tenant: Tenant) -> None:
    headers = [*default_headers(tenant.domain), ("X-Bin", b"\xff\xfe\x00\x01"),
               ("Subject", b"=?bogus?q?=ZZ?=")]
    first = driver.send(tenant, headers=headers)
    assert first.eom == Milter.ACCEPT
    assert driver.send(tenant).eom == Milter.ACCEPT


def test_connection_created_a_moment_ago_is_served_before_the_next_policy_poll(
        config: Config, db: psycopg.Connection, unique: str) -> None:
    """Dovecot accepts a new login at once; the milter must not refuse it until its poll."""
    never_polls = dataclasses.replace(config, milter=dataclasses.replace(
        config.milter, policy_refresh_seconds=3600, node_name="test-node"))
    runtime = open_runtime(never_polls, SystemClock())
    try:
        tenant = make_tenant(db, unique)
        outcome = Driver(runtime).send(tenant, queue_id="4QFRESH")
        assert outcome.eom == Milter.ACCEPT
    finally:
        runtime.close()
