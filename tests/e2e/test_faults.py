"""A backing service down: the client gets a 4xx, and nothing is relayed unaccounted.

These run on a second stack (tests/harness/stack.py) with a private Redis and a private
PostgreSQL cluster; the machine's shared instances are never stopped. Each test brings the
service back in a finally block and proves the relay works again afterwards.
"""

from __future__ import annotations

import smtplib
import time
import uuid

import pytest

from tests.harness.processes import wait_until
from tests.harness.provision import Provisioned, account_usage, provision
from tests.harness.smtp import (
    Reply,
    Submission,
    build_message,
    smtp_session,
    submit,
    transact,
)
from tests.harness.stack import FaultStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shop(faults: FaultStack) -> Provisioned:
    made = provision(faults.config_file, f"fault-{uuid.uuid4().hex[:8]}", rate_limit=0)
    # The milter learns of the new connection at its next policy poll.
    time.sleep(2 * faults.config.milter.policy_refresh_seconds + 0.3)
    return made


def attempt(faults: FaultStack, shop: Provisioned, tag: str) -> Submission:
    """Submit one message; a refusal before MAIL (e.g. at STARTTLS) is recorded as the MAIL
    reply so that every outcome can be checked the same way."""
    to = [f"{tag}@rcpt.example.net"]
    try:
        return submit(shop.username, shop.password, shop.address(), to,
                      build_message(shop.address(), to, subject=tag), port=faults.port)
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        return Submission(mail=Reply(exc.smtp_code, text))


def relayed_recipients(faults: FaultStack, shop: Provisioned) -> int:
    return sum(len(c.rcpt_tos) for c in faults.sink.captures()
               if c.mail_from == shop.address())


def assert_all_relayed_mail_accounted(faults: FaultStack, shop: Provisioned) -> None:
    """Every recipient the sink got has its ledger row, and no ledger row lacks mail."""
    def balanced() -> bool:
        return account_usage(faults.config.database.url,
                             shop.account_id).ledger_rows == relayed_recipients(faults, shop)

    wait_until(balanced, 30, "ledger rows == recipients relayed",
               lambda: f"ledger {account_usage(faults.config.database.url, shop.account_id)}"
                       f" sink {relayed_recipients(faults, shop)}\n{faults.milter.log(20)}")


def relayed(faults: FaultStack, tag: str) -> bool:
    return any(f"{tag}@rcpt.example.net" in c.rcpt_tos for c in faults.sink.captures())


def assert_refused_for_now_or_accounted(faults: FaultStack, result: Submission,
                                        tag: str) -> None:
    """A 4xx with nothing relayed; or (a journalling design) accepted and accounted later."""
    if result.accepted:
        wait_until(lambda: relayed(faults, tag), 20, f"{tag} at the sink")
        return
    refusal = result.first_refusal()
    assert refusal is not None and refusal.code // 100 == 4, result
    faults.postfix.flush()
    assert not relayed(faults, tag)


def assert_relay_works(faults: FaultStack, shop: Provisioned, tag: str) -> None:
    """Accepted and delivered to the sink (retrying while the service recovers)."""
    wait_until(lambda: attempt(faults, shop, tag).accepted, 30,
               "the relay accepting mail again", lambda: faults.milter.log(20))
    wait_until(lambda: relayed(faults, tag), 20, f"{tag} at the sink")


def test_milter_killed_means_4xx_and_nothing_relayed(faults: FaultStack,
                                                     shop: Provisioned) -> None:
    faults.milter.kill()
    try:
        result = attempt(faults, shop, "milter-down")
    finally:
        faults.milter.start()
    refusal = result.first_refusal()
    assert refusal is not None and refusal.code // 100 == 4, result
    assert not result.accepted
    faults.postfix.flush()
    assert not relayed(faults, "milter-down")
    assert_relay_works(faults, shop, "milter-back")
    assert_all_relayed_mail_accounted(faults, shop)


def test_redis_stopped_means_4xx_or_accounted_mail(faults: FaultStack,
                                                   shop: Provisioned) -> None:
    assert_relay_works(faults, shop, "redis-warm")
    faults.redis.stop()
    try:
        result = attempt(faults, shop, "redis-down")
    finally:
        faults.redis.start()
    assert_refused_for_now_or_accounted(faults, result, "redis-down")
    assert_relay_works(faults, shop, "redis-back")
    assert_all_relayed_mail_accounted(faults, shop)


def test_postgresql_stopped_mid_session_means_4xx_or_accounted_mail(
        faults: FaultStack, shop: Provisioned) -> None:
    assert_relay_works(faults, shop, "pg-warm")
    to = ["pg-down@rcpt.example.net"]
    # AUTH first: Dovecot reads credentials from the same PostgreSQL.
    with smtp_session(shop.username, shop.password, port=faults.port) as session:
        faults.postgres.stop()
        try:
            result = transact(session, shop.address(), to,
                              build_message(shop.address(), to, subject="pg-down"))
        finally:
            faults.postgres.start()
    assert_refused_for_now_or_accounted(faults, result, "pg-down")
    assert_relay_works(faults, shop, "pg-back")
    assert_all_relayed_mail_accounted(faults, shop)
