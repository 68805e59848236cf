"""The harness's own services behave: Dovecot authenticates CLI-made credentials, the sink
stores and refuses by rule, Postfix relays what it accepts."""

from __future__ import annotations

import smtplib

import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.services import CaptureSink
from tests.harness.smtp import build_message

pytestmark = pytest.mark.e2e


def test_dovecot_accepts_cli_password_and_refuses_a_wrong_one(relay: RelayStack) -> None:
    shop = relay.provision()
    assert relay.dovecot.auth_test(shop.username, shop.password)
    assert not relay.dovecot.auth_test(shop.username, shop.password + "x")
    assert not relay.dovecot.auth_test("nobody-here", shop.password)


def test_sink_stores_bytes_unchanged_and_refuses_defer_and_bounce(
        capture_sink: CaptureSink) -> None:
    raw = build_message("a@sender.example.com", ["x@rcpt.example.net"])
    with smtplib.SMTP("127.0.0.1", capture_sink.port) as client:
        refused = client.sendmail("a@sender.example.com",
                                  ["x@rcpt.example.net", "defer-1@rcpt.example.net",
                                   "bounce-1@rcpt.example.net"], raw)
    assert refused["defer-1@rcpt.example.net"][0] == 451
    assert refused["bounce-1@rcpt.example.net"][0] == 550
    captured = capture_sink.wait_for_recipient("x@rcpt.example.net")
    assert captured.raw == raw
    assert captured.rcpt_tos == ("x@rcpt.example.net",)
    assert captured.mail_from == "a@sender.example.com"
