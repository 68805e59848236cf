"""Malformed and generated messages straight into the milter (pymilter's TestCtx, no
Postfix): it never fails internally, refuses with a specific code, and every message it
accepts verifies with the tenant's key exactly as Postfix would queue it."""

from __future__ import annotations

from collections.abc import Callable

import dkim
import Milter
import pytest
from hypothesis import HealthCheck, given, settings

from tests.corpus.generated import message_strategy
from tests.corpus.malformed import ACCEPT, REFUSE, Case, Domains, corpus
from tests.corpus.postfix_view import postfix_view
from tests.milter.conftest import Driver, Outcome
from tests.milter.test_relay_milter import dns_for
from tests.store.builders import Tenant
from txrelay.milter.transaction import Transaction
from txrelay.policy.message import MAX_LINE_BYTES

FOREIGN = "foreign-shop.example"


@pytest.fixture()
def shop(tenant_factory: Callable[..., Tenant]) -> Tenant:
    """A tenant no rate limit or quota stops within a few hundred messages."""
    return tenant_factory(rate_limit=0, demo_quota=1_000_000)


def judge(outcome: Outcome, tenant: Tenant, expect: str = "either", code: str = "") -> str:
    """'' when the outcome keeps the contract, else what went wrong."""
    if outcome.eom == Milter.ACCEPT:
        if expect == REFUSE:
            return f"accepted, expected {code}"
        if not dkim.verify(outcome.queued, dnsfunc=dns_for(tenant)):
            return "accepted but the queued message does not verify"
        return ""
    rcpt_replies = [reply for _, reply in outcome.rcpt if reply]
    reply = outcome.eom_reply or outcome.mail_reply or (rcpt_replies[0] if rcpt_replies
                                                        else None)
    if reply is None:
        return f"no reply (eom={outcome.eom})"
    if expect == ACCEPT:
        return f"refused: {reply}"
    if expect == REFUSE and " ".join(reply[:2]) != code:
        return f"refused with {reply}, expected {code}"
    if not str(reply[0]).startswith("5"):
        return f"refused without a specific reason: {reply}"
    return ""


def send(driver: Driver, tenant: Tenant, raw: bytes, index: int = 0) -> Outcome:
    headers, body = postfix_view(raw)
    return driver.send(tenant, headers=headers, body=body, queue_id=f"4QMAL{index}")


def postfix_independent(case: Case) -> bool:
    """Cases whose outcome does not depend on what cleanup adds (From:, Date:) or rewrites."""
    return case.name not in {"from-missing", "only-separator", "only-text"}


def corpus_cases(tenant: Tenant) -> list[Case]:
    """The corpus cases sent with the default envelope sender, for this tenant's domain."""
    return [c for c in corpus(Domains(tenant.domain, FOREIGN)) if c.mail_from is None]


def corpus_problems(driver: Driver, tenant: Tenant) -> list[str]:
    """Each corpus case through the driver's milter, judged; what broke the contract."""
    problems = []
    for index, case in enumerate(corpus_cases(tenant)):
        outcome = send(driver, tenant, case.data, index)
        expect = case.expect if postfix_independent(case) else "either"
        problem = judge(outcome, tenant, expect, case.code)
        if problem:
            problems.append(f"{case.name}: {problem}")
    return problems


def test_corpus_through_the_milter_keeps_the_contract(driver: Driver, shop: Tenant) -> None:
    problems = corpus_problems(driver, shop)
    assert not problems, "\n".join(problems)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=message_strategy(Domains("shop-hypothesis.example", FOREIGN)))
def test_generated_messages_keep_the_contract(driver: Driver, shop: Tenant,
                                              data: bytes) -> None:
    tenant = shop
    raw = data.replace(b"shop-hypothesis.example", tenant.domain.encode())
    outcome = send(driver, tenant, raw)
    assert judge(outcome, tenant) == ""


@pytest.mark.parametrize("chunks", [
    [b"a" * 998 + b"\r\n"],
    [b"a" * 500, b"a" * 498 + b"\r", b"\n"],
    [b"a" * 998 + b"\r", b"\nnext\r\n"],
    [b"x\r\n", b"a" * 998],
])
def test_lines_of_998_bytes_split_over_chunks_are_not_too_long(chunks: list[bytes]) -> None:
    txn = _transaction()
    for chunk in chunks:
        txn.add_body(chunk, 10**9)
    assert txn.lines_too_long == (False, False)


@pytest.mark.parametrize("chunks", [
    [b"a" * 999 + b"\r\n"],
    [b"a" * 500, b"a" * 499, b"\r\n"],
    [b"a" * 998 + b"\rb\r\n"],  # a bare CR is part of the line for Postfix
    [b"a" * 999, b"\nnext\r\n"],  # 999 bytes, then a bare LF in the next chunk
    [b"x\r\n", b"a" * 999],
])
def test_lines_over_998_bytes_are_measured_across_chunks(chunks: list[bytes]) -> None:
    txn = _transaction()
    for chunk in chunks:
        txn.add_body(chunk, 10**9)
    assert txn.lines_too_long == (False, True)


def test_folded_header_is_measured_per_line() -> None:
    txn = _transaction()
    txn.add_header("Subject", b"s" * 989 + b"\n " + b"t" * 997)  # "Subject: " + 989 = 998
    assert txn.longest_header_line == MAX_LINE_BYTES
    assert txn.lines_too_long == (False, False)
    txn.add_header("X", b"short\n " + b"u" * 999)
    assert txn.longest_header_line == 1000
    assert txn.lines_too_long == (True, False)


def _transaction() -> Transaction:
    return Transaction(None, None, None, "", "")  # type: ignore[arg-type]
