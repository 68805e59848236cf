"""Sessions already logged in lose their login when its credential is rotated, disabled or
deleted (issue 12 item 5): their next MAIL gets 421 4.7.0 "log in again" and Postfix hangs
up, while a new session with the current password sends as usual."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Callable

import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, run
from tests.harness.provision import Provisioned, txrelay_json, verify_dkim
from tests.harness.smtp import Reply, build_message, smtp_session, submit

pytestmark = pytest.mark.e2e


def unique_rcpt(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"


def send_one(client: smtplib.SMTP, shop: Provisioned, tag: str) -> tuple[Reply, str]:
    """One message in the open session: the MAIL reply when refused (no RSET: after a 421
    the server has gone), else the last reply of the transaction."""
    rcpt = unique_rcpt(tag)
    code, text = client.mail(shop.address())
    if code >= 300:
        return Reply(code, text.decode(errors="replace")), rcpt
    result = transact_after_mail(client, rcpt, build_message(shop.address(), [rcpt]))
    return result, rcpt


def transact_after_mail(client: smtplib.SMTP, rcpt: str, message: bytes) -> Reply:
    code, text = client.rcpt(rcpt)
    if code < 300:
        code, text = client.data(message)
    return Reply(code, text.decode(errors="replace"))


def change_in_another_process(relay: RelayStack, *args: str) -> None:
    """The CLI as the admin runs it, then wait until the milter has loaded the change."""
    run([TXRELAY, "--config", str(relay.config_file), *args])
    relay.settle_policy()


def assert_told_to_log_in_again(reply: Reply, client: smtplib.SMTP) -> None:
    assert (reply.code, reply.enhanced) == (421, "4.7.0"), reply
    assert "log in again" in reply.text, reply
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()  # Postfix hung up after the 421


def assert_delivered_and_signed(relay: RelayStack, rcpt: str) -> None:
    assert verify_dkim(relay.sink.wait_for_recipient(rcpt).raw, relay.database_url)


def test_rotated_password_ends_the_session_that_logged_in_with_the_old_one(
        relay: RelayStack, provisioned: Provisioned) -> None:
    shop = provisioned
    with smtp_session(shop.username, shop.password, port=relay.port) as client:
        reply, rcpt = send_one(client, shop, "before-rotation")
        assert reply.code == 250, reply
        assert_delivered_and_signed(relay, rcpt)
        new_password = txrelay_json(relay.config_file, "connection", "rotate-password",
                                    shop.username)["password"]
        relay.settle_policy()
        reply, refused_rcpt = send_one(client, shop, "after-rotation")
        assert_told_to_log_in_again(reply, client)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(shop.username, shop.password, shop.address(), [refused_rcpt], b"", port=relay.port)
    # No wait: rotate-password returned once this node's Dovecot checks the new password, so
    # a session begun after it is never mistaken for one that logged in with the old one.
    rcpt = unique_rcpt("new-password")
    result = submit(shop.username, new_password, shop.address(), [rcpt],
                    build_message(shop.address(), [rcpt]), port=relay.port)
    assert result.delivered_to == [rcpt], result
    assert_delivered_and_signed(relay, rcpt)
    assert not relay.sink.for_recipient(refused_rcpt)


def test_rotation_between_auth_and_the_first_mail_is_refused_too(
        relay: RelayStack, provisioned: Provisioned) -> None:
    """Dovecot checked the old password at AUTH; the session's first MAIL comes after the
    rotation, so pinning the credential at the first MAIL alone would let it through."""
    shop = provisioned
    with smtp_session(shop.username, shop.password, port=relay.port) as client:
        change_in_another_process(relay, "connection", "rotate-password", shop.username)
        reply, rcpt = send_one(client, shop, "auth-then-rotation")
        assert_told_to_log_in_again(reply, client)
    assert not relay.sink.for_recipient(rcpt)


@pytest.mark.parametrize("change", ["disable", "delete"])
def test_disabled_or_deleted_connection_ends_its_logged_in_session(
        relay: RelayStack, make_provisioned: Callable[..., Provisioned], change: str) -> None:
    shop = make_provisioned()
    with smtp_session(shop.username, shop.password, port=relay.port) as client:
        reply, rcpt = send_one(client, shop, f"before-{change}")
        assert reply.code == 250, reply
        change_in_another_process(relay, "connection", change, shop.username)
        reply, refused_rcpt = send_one(client, shop, f"after-{change}")
        assert_told_to_log_in_again(reply, client)
    assert_delivered_and_signed(relay, rcpt)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(shop.username, shop.password, shop.address(), [refused_rcpt], b"", port=relay.port)
    assert not relay.sink.for_recipient(refused_rcpt)


def test_other_sessions_of_the_same_node_are_not_touched(
        relay: RelayStack, make_provisioned: Callable[..., Provisioned]) -> None:
    """Rotating one connection's password leaves another connection's open session alone."""
    rotated, other = make_provisioned(), make_provisioned()
    with smtp_session(other.username, other.password, port=relay.port) as client:
        reply, _ = send_one(client, other, "other-before")
        assert reply.code == 250, reply
        change_in_another_process(relay, "connection", "rotate-password", rotated.username)
        reply, rcpt = send_one(client, other, "other-after")
        assert reply.code == 250, reply
    assert_delivered_and_signed(relay, rcpt)
