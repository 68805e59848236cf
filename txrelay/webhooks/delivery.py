"""One signed POST to a webhook receiver, connected to an address checked just before.

The host name is resolved through [dns] resolver, every address is checked
(txrelay/policy/webhooks.py), and the connection goes to a checked address itself: the name
is never resolved a second time by the HTTP client, so DNS that changes between the check
and the connection (DNS rebinding) cannot point a tenant's URL at the relay's network.
HTTPS still verifies the certificate against the URL's host name (SNI too).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from txrelay import __version__
from txrelay.errors import InvalidInput
from txrelay.policy import webhooks as policy
from txrelay.provisioning.dns_lookup import LookupFailed

MAX_RESPONSE_BYTES = 64 * 1024  # the receiver's body is only kept for the error text
ERROR_TEXT_CHARS = 300


class Resolver(Protocol):
    """What resolves a webhook's host: a name and a record type ("A", "AAAA") give its
    addresses, [] when it has none; LookupFailed when DNS did not answer."""

    def addresses(self, name: str, rtype: str) -> list[str]: ...


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: the HTTP status (None when none came) and, unless 2xx, why."""

    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        """The URL was not even tried (its address is not allowed, or did not resolve)."""
        return self.status is None and (self.error or "").startswith("refused: ")


def resolve(target: policy.Target, resolver: Resolver, allow_private: bool) -> list[str]:
    """The checked addresses to connect to; InvalidInput when the host may not be called
    (LookupFailed from the resolver when DNS did not answer)."""
    if target.literal_address is not None:
        found = [target.host]
    else:
        found = resolver.addresses(target.host, "A") + resolver.addresses(target.host, "AAAA")
    return policy.check_addresses(target.host, found, allow_private)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """http.client that connects to a given address; Host stays the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, address, timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


def post(
    url: str,
    payload: Mapping[str, Any],
    event_id: str,
    secret: str,
    *,
    resolver: Resolver,
    allow_private: bool,
    timeout: float,
    context: ssl.SSLContext | None = None,
    now: float | None = None,
) -> Outcome:
    """POST the event; never raises for what the receiver or the network does."""
    content = policy.body(payload)
    stamp = int(now if now is not None else time.time())
    headers = {
        "Content-Type": "application/json",
        policy.SIGNATURE_HEADER: policy.signature(secret, stamp, content),
        policy.EVENT_ID_HEADER: event_id,
        "User-Agent": f"txrelay-webhooks/{__version__}",
    }
    try:
        target = policy.parse_url(url)
        addresses = resolve(target, resolver, allow_private)
    except InvalidInput as exc:
        return Outcome(None, f"refused: {exc}")
    except LookupFailed as exc:
        return Outcome(None, _short(str(exc)))
    last_error = "no address"
    for address in addresses:
        connection = _connection(target, address, timeout, context)
        # The socket timeout bounds each read; this bounds the whole attempt, so a receiver
        # that trickles its answer a byte at a time still frees the slot after `timeout`.
        expired = threading.Event()
        deadline = threading.Timer(timeout, _abort, [connection, expired])
        deadline.daemon = True
        deadline.start()
        try:
            connection.request("POST", target.path, body=content, headers=headers)
            response = connection.getresponse()
            text = response.read(MAX_RESPONSE_BYTES)
            if 200 <= response.status < 300:
                return Outcome(response.status, None)
            reply = text.decode("utf-8", "replace").strip()
            return Outcome(response.status, _short(f"HTTP {response.status} {reply}".strip()))
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                return Outcome(None, f"{address}: no complete answer within {timeout:g} s")
            last_error = _short(f"{address}: {exc.__class__.__name__}: {exc}")
        finally:
            deadline.cancel()
            connection.close()
    return Outcome(None, last_error)


def _abort(connection: http.client.HTTPConnection, expired: threading.Event) -> None:
    """Past the attempt's deadline: end the blocked read (shutdown wakes it, close may not)."""
    expired.set()
    if connection.sock is not None:
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)


def _connection(
    target: policy.Target, address: str, timeout: float, context: ssl.SSLContext | None
) -> _PinnedHTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(
            target.host, target.port, address, timeout, context or ssl.create_default_context()
        )
    return _PinnedHTTPConnection(target.host, target.port, address, timeout)


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ERROR_TEXT_CHARS else line[: ERROR_TEXT_CHARS - 1] + "…"
