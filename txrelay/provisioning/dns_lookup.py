"""Every DNS lookup txrelay makes, through the resolvers of [dns] resolver (dnspython)."""

from __future__ import annotations

from typing import Protocol

import dns.exception
import dns.nameserver
import dns.resolver

from txrelay.config import DnsConfig
from txrelay.errors import ServiceUnavailable

LOOKUP_SECONDS = 5.0
SYSTEM_RESOLVERS = "/etc/resolv.conf"


class LookupFailed(Exception):
    """DNS gave no answer (timeout, SERVFAIL, REFUSED): the record may exist or not."""


class Lookup(Protocol):
    """What the checks ask DNS; a name that does not exist or has no such record gives []."""

    def txt(self, name: str) -> list[str]: ...

    def addresses(self, name: str, rtype: str) -> list[str]: ...

    def mx(self, name: str) -> list[str]: ...


class DnsLookup:
    """Lookups through one dnspython resolver made from [dns]: the configured servers, or
    the system's when `resolver` is empty."""

    def __init__(
        self,
        config: DnsConfig,
        lifetime: float = LOOKUP_SECONDS,
        system_resolvers: str = SYSTEM_RESOLVERS,
    ) -> None:
        servers = config.resolver_addresses()
        if servers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in servers
            ]
        else:
            try:
                self.resolver = dns.resolver.Resolver(filename=system_resolvers)
            except dns.resolver.NoResolverConfiguration:
                raise ServiceUnavailable(
                    f"no DNS resolver to ask: {system_resolvers} names none; set [dns] "
                    'resolver in txrelay.toml (e.g. "127.0.0.1:53")'
                ) from None
        self.lifetime = lifetime

    def txt(self, name: str) -> list[str]:
        """Each TXT record at name, its character-strings joined (RFC 6376 3.6.2.2)."""
        return [
            b"".join(rdata.strings).decode("ascii", "replace")  # type: ignore[attr-defined]
            for rdata in self._resolve(name, "TXT")
        ]

    def addresses(self, name: str, rtype: str) -> list[str]:
        """The A or AAAA addresses of name."""
        return [rdata.address for rdata in self._resolve(name, rtype)]  # type: ignore[attr-defined]

    def mx(self, name: str) -> list[str]:
        """The exchange host names of name's MX records, most preferred first."""
        records = sorted(self._resolve(name, "MX"), key=lambda rdata: rdata.preference)  # type: ignore[attr-defined]
        return [
            rdata.exchange.to_text(omit_final_dot=True)  # type: ignore[attr-defined]
            for rdata in records
        ]

    def _resolve(self, name: str, rtype: str) -> list[object]:
        try:
            return list(self.resolver.resolve(name, rtype, lifetime=self.lifetime))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"DNS lookup of {name} {rtype} failed ({exc})") from exc
