"""The relay path end to end: a shop submits over STARTTLS + AUTH, Postfix asks Dovecot and
the milter, the capture sink receives what Postfix relays."""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
import uuid

import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.provision import Provisioned, dkim_tags, verify_dkim
from tests.harness.return_path import shop_senders
from tests.harness.smtp import build_message, smtp_session, submit, transact

pytestmark = pytest.mark.e2e

def unique_rcpt(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"
LIST_HELP = "https://help.example.com/lists"


@pytest.fixture(scope="module")
def shops(relay: RelayStack) -> list[Provisioned]:
    """Three accounts with one domain and one connection each, made once for this module."""
    return relay.provision_many(3, list_help=LIST_HELP)


@pytest.fixture(scope="module")
def shop(shops: list[Provisioned]) -> Provisioned:
    return shops[0]


def test_authenticated_mail_is_delivered_signed_with_list_help(relay: RelayStack,
                                                               shop: Provisioned) -> None:
    rcpt = unique_rcpt("signed")
    raw = build_message(shop.address(), [rcpt], subject="Order 1001 confirmed")
    result = submit(shop.username, shop.password, shop.address(), [rcpt], raw, port=relay.port)
    assert result.delivered_to == [rcpt], result
    captured = relay.sink.wait_for_recipient(rcpt)
    assert captured.rcpt_tos == (rcpt,)
    # The relay's return path names the message; the shop's sender stays in the ledger.
    assert captured.mail_from.endswith(f"@{relay.config.bounce.domain}")
    assert shop_senders([captured], relay.config) == [shop.address()]
    message = email.message_from_bytes(captured.raw, policy=email.policy.default)
    assert message["List-Help"] == "<https://help.example.com/lists>"
    assert message["Subject"] == "Order 1001 confirmed"
    tags = dkim_tags(captured.raw)
    assert tags["d"] == shop.domain
    assert "list-help" in tags["h"].lower().split(":")
    assert "from" in tags["h"].lower().split(":")
    assert verify_dkim(captured.raw, relay.database_url)


def test_swaks_submission_is_delivered_and_verifies(relay: RelayStack,
                                                    shop: Provisioned) -> None:
    rcpt = unique_rcpt("swaks")
    done = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{relay.port}", "--tls", "--auth", "LOGIN",
         "--auth-user", shop.username, "--auth-password", shop.password,
         "--from", shop.address("news"), "--to", rcpt,
         "--header", f"From: Shop <{shop.address('news')}>", "--header", "Subject: via swaks"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-2000:]
    captured = relay.sink.wait_for_recipient(rcpt)
    assert b"Subject: via swaks" in captured.raw
    assert verify_dkim(captured.raw, relay.database_url)


def test_without_starttls_auth_is_not_offered_and_relaying_is_refused(
        relay: RelayStack, shop: Provisioned) -> None:
    rcpt = unique_rcpt("plain")
    raw = build_message(shop.address(), [rcpt])
    with smtp_session(None, None, port=relay.port, starttls=False) as client:
        assert not client.has_extn("auth")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login(shop.username, shop.password)
        result = transact(client, shop.address(), [rcpt], raw)
    refusal = result.first_refusal()
    assert refusal is not None and refusal.code == 530, result
    assert not result.accepted
    relay.postfix.flush()
    assert not relay.sink.for_recipient(rcpt)


def test_without_auth_relaying_is_refused(relay: RelayStack, shop: Provisioned) -> None:
    rcpt = unique_rcpt("noauth")
    raw = build_message(shop.address(), [rcpt])
    with smtp_session(None, None, port=relay.port) as client:
        assert client.has_extn("auth")
        result = transact(client, shop.address(), [rcpt], raw)
    refusal = result.first_refusal()
    assert refusal is not None and refusal.code // 100 == 5, result
    assert not result.accepted
    relay.postfix.flush()
    assert not relay.sink.for_recipient(rcpt)


def test_wrong_password_is_refused_at_auth(relay: RelayStack, shop: Provisioned) -> None:
    with smtp_session(None, None, port=relay.port) as client:
        client.user, client.password = shop.username, shop.password + "x"
        # One mechanism only: smtplib's login() would try PLAIN and then LOGIN, each failure
        # costing Dovecot's auth_failure_delay.
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("PLAIN", client.auth_plain)
    assert refused.value.smtp_code == 535


@pytest.mark.parametrize("case", ["envelope", "header_from", "two_from_headers",
                                  "from_with_two_mailboxes"])
def test_connection_cannot_send_with_another_accounts_domain(relay: RelayStack,
                                                             shops: list[Provisioned],
                                                             case: str) -> None:
    shop_a, shop_b = shops[1], shops[2]
    own, foreign = shop_a.address(), shop_b.address()
    envelope, headers = own, [("From", own)]
    if case == "envelope":
        envelope = foreign
    elif case == "header_from":
        headers = [("From", foreign)]
    elif case == "two_from_headers":
        headers = [("From", own), ("From", foreign)]
    else:
        headers = [("From", f"{own}, {foreign}")]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    rcpt = unique_rcpt(case)
    body = build_message(own, [rcpt]).split(b"\r\n", 1)[1]  # drop the built From: line
    raw = head.encode() + body
    result = submit(shop_a.username, shop_a.password, envelope, [rcpt], raw, port=relay.port)
    refusal = result.first_refusal()
    assert refusal is not None and refusal.code == 550, result
    assert refusal.enhanced == "5.7.1", result
    assert not result.accepted
    relay.postfix.flush()
    assert not relay.sink.for_recipient(rcpt)
