"""The return path and CFBL through real Postfix: the sink sees MAIL FROM b-TOKEN@bounce
domain naming the message, the ledger keeps the shop's sender, a domain's own return path
brings CFBL-Address and CFBL-Feedback-ID inside the DKIM h= (verified by dkimpy and Perl's
Mail::DKIM), and a connection with `--bounces keep` keeps the shop's envelope sender."""

from __future__ import annotations

import email
import email.policy
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.provision import Provisioned, dkim_tags, txrelay_json, verify_dkim
from tests.harness.second_verifier import mail_dkim_results, passes_for
from tests.harness.smtp import build_message, submit
from txrelay.bounce_secret import read_bounce_secret
from txrelay.policy.return_path import read_feedback_id, read_return_path
from txrelay.sink import Capture

pytestmark = pytest.mark.e2e

SELECT_MESSAGE = """
SELECT m.txn_id, m.envelope_sender FROM messages m JOIN ledger l ON l.message_id = m.id
 WHERE l.recipient = %s"""


def rcpt(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"


def send(relay: RelayStack, shop: Provisioned, to: str,
         extra: tuple[tuple[str, str], ...] = ()) -> Capture:
    raw = build_message(shop.address(), [to], extra_headers=extra)
    result = submit(shop.username, shop.password, shop.address(), [to], raw, port=relay.port)
    assert result.delivered_to == [to], result
    return relay.sink.wait_for_recipient(to)


def recorded(relay: RelayStack, to: str) -> tuple[uuid.UUID, str]:
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        row = conn.execute(SELECT_MESSAGE, (to,)).fetchone()
    assert row is not None, to
    return row[0], row[1]


def secret(relay: RelayStack) -> bytes:
    return read_bounce_secret(Path(relay.config.bounce.secret_file))


def signed(raw: bytes) -> list[str]:
    return dkim_tags(raw)["h"].lower().split(":")


def test_the_sink_sees_the_relay_s_return_path_and_the_ledger_the_shop_s_sender(
        relay: RelayStack, provisioned: Provisioned) -> None:
    to = rcpt("rp")
    captured = send(relay, provisioned, to)
    assert captured.mail_from.startswith("b-")
    assert captured.mail_from.endswith(f"@{relay.config.bounce.domain}")
    txn_id, sender = recorded(relay, to)
    assert read_return_path(secret(relay), captured.mail_from) == txn_id
    assert sender == provisioned.address()
    [found] = txrelay_json(relay.config_file, "messages", "search", "--to", to)
    assert found["envelope_sender"] == provisioned.address()
    assert verify_dkim(captured.raw, relay.database_url)
    # bounces.relay.test is not under the shop's domain and this stack has no relay DKIM key
    # ([bounce] dkim_key_file): no CFBL (tests/e2e/test_cfbl_relay.py has one)
    message = email.message_from_bytes(captured.raw)
    assert message["CFBL-Address"] is None and "cfbl-address" not in signed(captured.raw)


def test_a_domain_s_own_return_path_brings_signed_cfbl_headers(
        relay: RelayStack, provisioned: Provisioned) -> None:
    shop = provisioned
    own = f"bounces.{shop.domain}"
    txrelay_json(relay.config_file, "domain", "set", shop.domain, "--return-path", own)
    relay.settle_policy()
    to = rcpt("cfbl")
    captured = send(relay, shop, to, (("CFBL-Address", "fbl@elsewhere.example; report=arf"),
                                      ("CFBL-Feedback-ID", "the-shop-s-own")))
    assert captured.mail_from.endswith(f"@{own}")
    txn_id, _ = recorded(relay, to)
    assert read_return_path(secret(relay), captured.mail_from) == txn_id
    message = email.message_from_bytes(captured.raw, policy=email.policy.default)
    assert message.get_all("CFBL-Address") == [f"fbl@{own}; report=arf"]
    [feedback] = message.get_all("CFBL-Feedback-ID")
    found = read_feedback_id(secret(relay), str(feedback))
    assert found is not None
    assert (found.account_id, found.txn_id) == (shop.account_id, txn_id)
    assert signed(captured.raw).count("cfbl-address") == 2
    assert signed(captured.raw).count("cfbl-feedback-id") == 2
    assert dkim_tags(captured.raw)["d"] == shop.domain
    assert verify_dkim(captured.raw, relay.database_url)
    results = mail_dkim_results(relay.database_url, {"cfbl": captured.raw})
    assert passes_for(results["cfbl"], shop.domain), results


def test_a_connection_that_keeps_its_bounces_keeps_the_shop_s_envelope_sender(
        relay: RelayStack, provisioned: Provisioned) -> None:
    shop = provisioned
    txrelay_json(relay.config_file, "domain", "set", shop.domain,
                 "--return-path", f"bounces.{shop.domain}")
    txrelay_json(relay.config_file, "connection", "set", shop.connection, "--account",
                 shop.account, "--bounces", "keep")
    relay.settle_policy()
    to = rcpt("keep")
    captured = send(relay, shop, to)
    assert captured.mail_from == shop.address()
    message = email.message_from_bytes(captured.raw)
    assert message["CFBL-Address"] == f"fbl@bounces.{shop.domain}; report=arf"
    assert verify_dkim(captured.raw, relay.database_url)
