"""Webhook decisions: which URLs and addresses may be called, the signature, the retry plan.

Pure: no network, no database. The CLI (at `webhook add`) and the worker (before every
connection) ask the same questions here, so a tenant's URL cannot reach the relay's own
network whether its DNS changed since it was added or not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from txrelay.errors import InvalidInput

SIGNATURE_HEADER = "Txrelay-Signature"
EVENT_ID_HEADER = "Txrelay-Event-Id"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a marker of the secret's kind, not a secret
MAX_URL_LENGTH = 2000  # migration 0016's CHECK

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """Where a webhook URL points: scheme, host (a name or an IP literal), port, request path."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def literal_address(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_url(url: str) -> Target:
    """The target of a webhook URL; InvalidInput says what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput(f"{url!r} contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"{url!r} is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInput(f"{url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidInput(f"{url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            f"{url!r} carries a user name or password; the receiver checks the "
            "Txrelay-Signature header instead"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


def address_refusal(address: str | IPAddress) -> str | None:
    """Why a webhook may not connect to this address ("a private address"; also loopback,
    link-local, multicast, reserved, unspecified; an IPv4 address mapped or embedded in IPv6
    counts as itself), or None when it is a public address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return address_refusal(embedded)
    for kind, found in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally reachable", not ip.is_global),
    ):
        if found:
            return f"a {kind} address"
    return None


def check_addresses(host: str, addresses: list[str], allow_private: bool) -> list[str]:
    """The addresses a webhook may connect to for `host`: all of them when allow_private,
    else all when every one is public. InvalidInput when none, or any is not public (one
    private answer among public ones is refused as a whole: DNS could hand out either)."""
    if not addresses:
        raise InvalidInput(f"{host} has no A or AAAA record")
    if allow_private:
        return addresses
    for address in addresses:
        refusal = address_refusal(address)
        if refusal is not None:
            where = f"{address} is" if address == host else f"{host} resolves to {address},"
            raise InvalidInput(
                f"{where} {refusal}; webhooks go to public addresses only "
                "(--allow-private allows it for this webhook)"
            )
    return addresses


def body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed, and signed: compact JSON with sorted keys."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def signature(secret: str, timestamp: int, content: bytes) -> str:
    """The Txrelay-Signature header value: t=<unix seconds>,v1=<hex HMAC-SHA256 of
    "<t>.<body>" keyed with the webhook's secret>."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + content, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(frozen=True)
class RetryPlan:
    """Exponential backoff with jitter: first wait `first`, doubling to at most `longest`;
    an event still undelivered `give_up_after` after it happened is failed."""

    first: dt.timedelta
    longest: dt.timedelta
    give_up_after: dt.timedelta

    def wait(self, attempts: int, draw: Callable[[], float] = random.random) -> dt.timedelta:
        """The wait after the attempts-th failed attempt (1 = the first), jitter included:
        up to a quarter more, so that receivers back from an outage are not hit by every
        event at the same second."""
        doublings = min(max(attempts - 1, 0), 30)
        base: dt.timedelta = min(self.first * float(2**doublings), self.longest)
        return base + base * (0.25 * draw())

    def next_attempt(
        self,
        created_at: dt.datetime,
        attempts: int,
        now: dt.datetime,
        draw: Callable[[], float] = random.random,
    ) -> dt.datetime | None:
        """When to try again after a failure, or None: give up (the next try would come
        after created_at + give_up_after)."""
        when = now + self.wait(attempts, draw)
        return None if when > created_at + self.give_up_after else when


def parse_events(text: str | None, allowed: tuple[str, ...]) -> list[str]:
    """--events "delivered,bounced" as a list in the given order (all of `allowed` when
    None); InvalidInput names an unknown event and lists the known ones."""
    if text is None:
        return list(allowed)
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise InvalidInput("--events names no event; known: " + ", ".join(allowed))
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise InvalidInput(
            f"unknown event {unknown[0]!r} in --events; known: " + ", ".join(allowed)
        )
    return list(dict.fromkeys(names))
