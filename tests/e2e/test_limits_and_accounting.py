"""Rate, quota, overage, size and exact accounting, through the real relay path."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, run, wait_until
from tests.harness.provision import Provisioned
from tests.harness.return_path import sent_by
from tests.harness.smtp import Submission, build_message, smtp_session, submit, transact

pytestmark = pytest.mark.e2e

SET_DEMO_USED = "UPDATE quota_blocks SET used = amount - %s WHERE account_id = %s"
SET_ALL_USED = "UPDATE quota_blocks SET used = amount WHERE account_id = %s"


def rcpts(count: int, tag: str) -> list[str]:
    return [f"{tag}-{i}@rcpt.example.net" for i in range(count)]


def forget_live_balance(relay: RelayStack, account_id: int) -> None:
    """Between sends only: the milter reloads the balance from PostgreSQL."""
    relay.redis().delete(relay.account_keys(account_id).balance)


def test_hourly_rate_refuses_the_fourth_recipient_with_451(relay: RelayStack) -> None:
    shop = relay.provision(rate_limit=3)
    to = rcpts(4, f"rate-{shop.account}")
    result = submit(shop.username, shop.password, shop.address(), to,
                    build_message(shop.address(), to), port=relay.port)
    assert result.delivered_to == to[:3], result
    assert (result.rcpts[to[3]].code, result.rcpts[to[3]].enhanced) == (451, "4.7.1"), result
    later = rcpts(1, f"later-{shop.account}")
    next_hour = submit(shop.username, shop.password, shop.address(), later,
                       build_message(shop.address(), later), port=relay.port)
    assert next_hour.rcpts[later[0]].code == 451, next_hour
    captured = relay.sink.wait_for_recipient(to[0])
    assert set(captured.rcpt_tos) == set(to[:3])
    assert relay.usage(shop.account_id).ledger_rows == 3


def test_demo_account_out_of_quota_is_refused_with_550(relay: RelayStack) -> None:
    shop = relay.provision()
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        conn.execute(SET_DEMO_USED, (1, shop.account_id))
    forget_live_balance(relay, shop.account_id)
    to = rcpts(2, "demo")
    result = submit(shop.username, shop.password, shop.address(), to,
                    build_message(shop.address(), to), port=relay.port)
    assert result.delivered_to == to[:1], result
    assert (result.rcpts[to[1]].code, result.rcpts[to[1]].enhanced) == (550, "5.7.1"), result
    usage = relay.usage(shop.account_id)
    assert (usage.ledger_rows, usage.overage_rows) == (1, 0)


def test_paid_account_out_of_quota_sends_on_as_overage(relay: RelayStack) -> None:
    shop = relay.provision()
    run([TXRELAY, "--config", str(relay.config_file), "quota", "book", shop.account,
         "--amount", "25000"])
    relay.settle_policy()
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        conn.execute(SET_ALL_USED, (shop.account_id,))
    forget_live_balance(relay, shop.account_id)
    to = rcpts(2, f"overage-{shop.account}")
    result = submit(shop.username, shop.password, shop.address(), to,
                    build_message(shop.address(), to), port=relay.port)
    assert result.delivered_to == to, result
    relay.sink.wait_for_recipient(to[0])
    usage = relay.usage(shop.account_id)
    assert (usage.ledger_rows, usage.overage_rows) == (2, 2)


def test_two_hundred_messages_from_ten_clients_are_accounted_exactly(
        relay: RelayStack) -> None:
    shop = relay.provision(rate_limit=0)
    clients, per_client = 10, 20
    results: list[Submission] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_run(number: int) -> None:
        try:
            with smtp_session(shop.username, shop.password, port=relay.port) as session:
                for i in range(per_client):
                    to = [f"bulk-{number}-{i}@rcpt.example.net"]
                    outcome = transact(session, shop.address(), to,
                                       build_message(shop.address(), to))
                    with lock:
                        results.append(outcome)
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=client_run, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    accepted = sum(len(r.delivered_to) for r in results)
    assert accepted == clients * per_client, [r for r in results if not r.accepted][:3]

    def delivered_count() -> int:
        return sum(1 for c in sent_by(relay.sink.captures(), relay.config, shop.address())
                   if c.rcpt_tos[0].startswith("bulk-"))

    wait_until(lambda: delivered_count() == accepted, 60, "all bulk messages at the sink")
    usage = relay.usage(shop.account_id)
    assert usage.ledger_rows == accepted
    assert usage.messages == accepted
    wait_until(lambda: relay.usage(shop.account_id).used == accepted, 20,
               f"quota used == {accepted}")
    assert delivered_count() == accepted
    assert time.monotonic() - started < 120


def test_quota_show_right_after_sending_counts_every_recipient(relay: RelayStack) -> None:
    """The milter records recipients as pending and bills them to blocks in the background;
    an admin asking at once still sees them used (the command settles the account first)."""
    shop = relay.provision()
    to = rcpts(3, f"show-{shop.account}")
    result = submit(shop.username, shop.password, shop.address(), to,
                    build_message(shop.address(), to), port=relay.port)
    assert result.delivered_to == to, result
    shown = json.loads(run([TXRELAY, "--config", str(relay.config_file), "quota", "show",
                            shop.account, "--json"]).stdout)
    assert shown["quota_remaining"] == relay.config.quota.demo_quota - 3, shown
    assert [b["used"] for b in shown["blocks"]] == [3], shown


def test_aborted_transactions_consume_no_quota(relay: RelayStack) -> None:
    shop = relay.provision()
    keys = relay.account_keys(shop.account_id)
    with smtp_session(shop.username, shop.password, port=relay.port) as session:
        assert session.mail(shop.address())[0] == 250
        for to in rcpts(3, "abort-rset"):
            assert session.rcpt(to)[0] == 250
        assert session.rset()[0] == 250
    with smtp_session(shop.username, shop.password, port=relay.port) as session:
        assert session.mail(shop.address())[0] == 250
        for to in rcpts(2, "abort-quit"):
            assert session.rcpt(to)[0] == 250
    # QUIT right after RCPT (smtp_session's exit): Postfix aborts the milter transaction.
    client = relay.redis()
    wait_until(lambda: client.zcard(keys.held) == 0, 10, "reservations released")
    usage = relay.usage(shop.account_id)
    assert (usage.ledger_rows, usage.messages, usage.used) == (0, 0, 0)
    balance = client.get(keys.balance)
    assert balance is None or int(balance) == relay.config.quota.demo_quota


def test_message_over_the_size_limit_is_refused_with_552(relay: RelayStack,
                                                        shop_for_size: Provisioned) -> None:
    shop = shop_for_size
    limit = relay.config.milter.max_message_size
    to = rcpts(1, f"big-{shop.account}")
    head = build_message(shop.address(), to, body="")
    line = b"x" * 998 + b"\r\n"
    body = line * ((limit - len(head)) // len(line) + 2)
    raw = head + body
    assert limit < len(raw) < limit + 4096
    result = submit(shop.username, shop.password, shop.address(), to, raw, port=relay.port)
    refusal = result.first_refusal()
    assert refusal is not None and (refusal.code, refusal.enhanced) == (552, "5.3.4"), result
    assert relay.usage(shop.account_id).ledger_rows == 0
    relay.postfix.flush()
    assert not relay.sink.for_recipient(to[0])


@pytest.fixture()
def shop_for_size(relay: RelayStack) -> Provisioned:
    return relay.provision()
