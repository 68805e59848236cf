"""A shop that opens one session per mail resumes its TLS session (issue 15 item 1): the
second STARTTLS of a client that kept the first session's ticket is an abbreviated
handshake, no certificate and key exchange again. Then AUTH and a signed message go through
the resumed session as through a full one."""

from __future__ import annotations

import smtplib
import ssl
import uuid

import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, run
from tests.harness.provision import Provisioned, verify_dkim
from tests.harness.smtp import build_message, tls_context, transact

pytestmark = pytest.mark.e2e


def _starttls(port: int, context: ssl.SSLContext,
              session: ssl.SSLSession | None) -> smtplib.SMTP:
    """EHLO, STARTTLS offering `session` (smtplib.starttls cannot), EHLO again."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="shop.client.test", timeout=60)
    client.ehlo()
    code, text = client.docmd("STARTTLS")
    assert code == 220, text
    client.sock = context.wrap_socket(client.sock, session=session)
    client.file = None
    client.helo_resp = client.ehlo_resp = None
    client.esmtp_features = {}
    client.does_esmtp = False
    client.ehlo()  # reading its reply also takes in the TLS 1.3 session tickets
    return client


def test_a_second_starttls_session_resumes_the_first(relay: RelayStack,
                                                     provisioned: Provisioned) -> None:
    context = tls_context()
    first = _starttls(relay.port, context, None)
    assert isinstance(first.sock, ssl.SSLSocket)
    assert not first.sock.session_reused
    assert first.sock.version() in ("TLSv1.2", "TLSv1.3")
    session = first.sock.session
    assert session is not None and session.has_ticket
    first.quit()

    second = _starttls(relay.port, context, session)
    assert isinstance(second.sock, ssl.SSLSocket)
    assert second.sock.session_reused
    rcpt = f"resumed-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    second.login(provisioned.username, provisioned.password)
    result = transact(second, provisioned.address(), [rcpt],
                      build_message(provisioned.address(), [rcpt]))
    second.quit()
    assert result.accepted, result
    assert verify_dkim(relay.sink.wait_for_recipient(rcpt).raw, relay.database_url)




def test_main_cf_turning_tickets_off_reaches_txrelays_service_so_the_check_warns(
        relay: RelayStack) -> None:
    """smtpd_tls_session_cache_timeout is tlsmgr's: a master.cf -o on txrelay's service does
    not undo main.cf's 0 (tried: the session is still not resumed). So txrelay sets none and
    `txrelay postfix check` warns about the global value instead."""
    postfix = relay.postfix
    before = postfix.postconf("-h", "smtpd_tls_session_cache_timeout").strip()
    postfix.postconf("-e", "smtpd_tls_session_cache_timeout = 0")
    postfix.reload()
    try:
        context = tls_context()
        first = _starttls(relay.port, context, None)
        assert isinstance(first.sock, ssl.SSLSocket)
        session = first.sock.session
        first.quit()
        second = _starttls(relay.port, context, session)
        assert isinstance(second.sock, ssl.SSLSocket)
        assert not second.sock.session_reused
        second.quit()
        checked = run([TXRELAY, "--config", str(relay.config_file), "postfix", "check",
                       "--config-directory", str(postfix.config_directory)], check=False)
        assert "warning: main.cf: smtpd_tls_session_cache_timeout = '0'" in checked.stdout \
            + checked.stderr
    finally:
        postfix.postconf("-e", f"smtpd_tls_session_cache_timeout = {before}")
        postfix.reload()
