"""Offboarding and the overage cap through the real relay path: Postfix, Dovecot, the milter,
the capture sink (issue 14: a disabled account cannot send; a moved domain signs for its new
account only; the first mail over the overage cap gets a clear 5xx and is not billed)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, run
from tests.harness.provision import dkim_tags, txrelay_json, verify_dkim
from tests.harness.smtp import build_message, smtp_session, submit, transact

pytestmark = pytest.mark.e2e


def rcpt(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"


def txrelay(relay: RelayStack, *args: str) -> None:
    run([TXRELAY, "--config", str(relay.config_file), *args])


def message_accounts(relay: RelayStack, recipient: str) -> list[int]:
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT account_id FROM ledger WHERE recipient = %s",
                            (recipient,)).fetchall()
    return [int(r[0]) for r in rows]


def test_disabled_account_cannot_send_but_its_message_in_flight_finishes(
        relay: RelayStack) -> None:
    shop = relay.provision()
    in_flight, refused, again = rcpt("inflight"), rcpt("disabled"), rcpt("enabled")
    with smtp_session(shop.username, shop.password, port=relay.port) as session:
        assert session.mail(shop.address())[0] == 250
        assert session.rcpt(in_flight)[0] == 250
        txrelay(relay, "account", "disable", shop.account)
        relay.settle_policy()
        code, _ = session.data(build_message(shop.address(), [in_flight]))
        assert code == 250  # past MAIL before the disable: it finishes, and is billed
        after = transact(session, shop.address(), [refused],
                         build_message(shop.address(), [refused]))
    assert (after.mail.code, after.mail.enhanced) == (550, "5.7.1"), after
    assert f"account {shop.account} is disabled" in after.mail.text
    assert "contact the relay administrator" in after.mail.text
    relay.sink.wait_for_recipient(in_flight)
    assert message_accounts(relay, in_flight) == [shop.account_id]
    new_session = submit(shop.username, shop.password, shop.address(), [refused],
                         build_message(shop.address(), [refused]), port=relay.port)
    assert new_session.mail.code == 550 and not new_session.accepted, new_session
    assert message_accounts(relay, refused) == []

    txrelay(relay, "account", "enable", shop.account)
    relay.settle_policy()
    result = submit(shop.username, shop.password, shop.address(), [again],
                    build_message(shop.address(), [again]), port=relay.port)
    assert result.delivered_to == [again], result
    relay.sink.wait_for_recipient(again)


def test_moved_domain_signs_for_its_new_account_only(relay: RelayStack) -> None:
    old, new = relay.provision(), relay.provision()
    moved = txrelay_json(relay.config_file, "domain", "move", old.domain, "--to", new.account,
                         "--connection", new.connection)
    assert moved["connections_added"] == [new.connection]
    relay.settle_policy()

    lost = rcpt("old-owner")
    refused = submit(old.username, old.password, old.address(), [lost],
                     build_message(old.address(), [lost]), port=relay.port)
    assert (refused.mail.code, refused.mail.enhanced) == (550, "5.7.1"), refused
    assert f"sender domain {old.domain} is not enabled" in refused.mail.text

    taken = rcpt("new-owner")
    sent = submit(new.username, new.password, old.address(), [taken],
                  build_message(old.address(), [taken]), port=relay.port)
    assert sent.delivered_to == [taken], sent
    captured = relay.sink.wait_for_recipient(taken)
    assert dkim_tags(captured.raw)["d"] == old.domain
    assert verify_dkim(captured.raw, relay.database_url)  # the same key, now the new account's
    assert message_accounts(relay, taken) == [new.account_id]


def test_first_mail_over_the_overage_cap_gets_550_and_nothing_beyond_is_billed(
        relay: RelayStack) -> None:
    shop = relay.provision()
    txrelay(relay, "quota", "book", shop.account, "--amount", "25000")
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        conn.execute("UPDATE quota_blocks SET used = amount WHERE account_id = %s",
                     (shop.account_id,))
    txrelay(relay, "account", "set", shop.account, "--overage-cap", "2")
    relay.settle_policy()
    relay.redis().delete(relay.account_keys(shop.account_id).balance)  # reload from PostgreSQL

    first = [rcpt("cap-a"), rcpt("cap-b")]
    within = submit(shop.username, shop.password, shop.address(), first,
                    build_message(shop.address(), first), port=relay.port)
    assert within.delivered_to == first, within
    over = rcpt("cap-over")
    refused = submit(shop.username, shop.password, shop.address(), [over],
                     build_message(shop.address(), [over]), port=relay.port)
    reply = refused.rcpts[over]
    assert (reply.code, reply.enhanced) == (550, "5.7.1"), refused
    assert "overage cap of 2 mails this billing month" in reply.text
    assert not refused.accepted
    relay.sink.wait_for_recipient(first[0])
    usage = relay.usage(shop.account_id)
    assert (usage.ledger_rows, usage.overage_rows) == (2, 2)
    period = relay_period(relay)
    report = txrelay_json(relay.config_file, "billing", "report", shop.account,
                          "--period", period)
    assert (report["overage_mails"], report["overage_cap"]) == (2, 2)


def relay_period(relay: RelayStack) -> str:
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')").fetchone()
    assert row is not None
    return str(row[0])
