"""Asks DNS whether a domain's DKIM key record is published and matches the stored key."""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.resolver

from txrelay.provisioning.dkim_keys import DnsRecord, parse_txt_tags

LOOKUP_SECONDS = 5.0


@dataclass(frozen=True)
class PublicationCheck:
    """status: published | missing | mismatch | dns-error."""

    status: str
    record_name: str
    found: tuple[str, ...]
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "published"


def resolve_txt(name: str) -> list[str]:
    """Every TXT record at name, each with its character-strings joined (RFC 6376 3.6.2.2)."""
    answer = dns.resolver.Resolver().resolve(name, "TXT", lifetime=LOOKUP_SECONDS)
    return [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]


def check_publication(expected: DnsRecord, algorithm: str,
                      public_key_b64: str) -> PublicationCheck:
    name = expected.name
    try:
        found = resolve_txt(name)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return PublicationCheck("missing", name, (), f"no TXT record at {name}; publish the "
                                "record shown by 'txrelay domain dns'")
    except dns.exception.DNSException as exc:
        return PublicationCheck("dns-error", name, (), f"DNS lookup of {name} failed ({exc}); "
                                "try again later")
    keys = [parse_txt_tags(value) for value in found]
    keys = [tags for tags in keys if "p" in tags]
    if not keys:
        return PublicationCheck("missing", name, tuple(found), f"TXT at {name} holds no DKIM "
                                "key (no p= tag); publish the record shown by 'txrelay domain "
                                "dns'")
    for tags in keys:
        if tags["p"] == public_key_b64 and tags.get("k", "rsa") == algorithm:
            return PublicationCheck("published", name, tuple(found),
                                    f"{name} publishes the stored {algorithm} key")
    return PublicationCheck("mismatch", name, tuple(found), f"{name} publishes a different key "
                            "than the one txrelay signs with; replace it with the record shown "
                            "by 'txrelay domain dns'")
