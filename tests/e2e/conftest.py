"""Fixtures more than one e2e module uses."""

from __future__ import annotations

import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.processes import free_port, port_open, wait_until


@pytest.fixture()
def plain_smtpd(relay: RelayStack) -> int:
    """A loopback smtpd without milter or AUTH on the tests' Postfix: [notify] sends there
    (mynetworks relays it to the sink), as a local MTA would take the reminder."""
    port = free_port()
    relay.postfix.postconf("-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - "
                                 "smtpd")
    relay.postfix.reload()
    wait_until(lambda: port_open(port), 15, "the plain smtpd", lambda: relay.postfix.log(20))
    return port
