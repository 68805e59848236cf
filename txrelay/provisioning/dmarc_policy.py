"""DMARC (RFC 7489) as far as txrelay needs it: the starting record, and whether a published
record works for the mail txrelay sends (valid, and DKIM or SPF aligned under its modes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

POLICIES = ("none", "quarantine", "reject")
STARTING_POLICY = "none"
_VERSION = re.compile(r"v\s*=\s*DMARC1\s*(;|$)")


class DmarcSyntaxError(ValueError):
    """A record receivers would not apply."""


@dataclass(frozen=True)
class DmarcRecord:
    policy: str
    subdomain_policy: str
    adkim: str
    aspf: str
    pct: int


def is_dmarc(value: str) -> bool:
    return bool(_VERSION.match(value.strip()))


def dmarc_records(txt_values: list[str]) -> list[str]:
    return [value for value in txt_values if is_dmarc(value)]


def record_name(domain: str) -> str:
    return f"_dmarc.{domain}"


def parse(value: str) -> DmarcRecord:
    tags: dict[str, str] = {}
    for item in value.split(";"):
        tag, sep, tag_value = item.partition("=")
        if sep:
            tags.setdefault(tag.strip().lower(), tag_value.strip())
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        raise DmarcSyntaxError(
            "p= is missing"
            if "p" not in tags
            else f"p={tags['p']} is not none, quarantine or reject"
        )
    modes = {}
    for tag in ("adkim", "aspf"):
        modes[tag] = tags.get(tag, "r").lower()
        if modes[tag] not in ("r", "s"):
            raise DmarcSyntaxError(f"{tag}={tags[tag]} is not r (relaxed) or s (strict)")
    subdomain_policy = tags.get("sp", policy).lower()
    if subdomain_policy not in POLICIES:
        raise DmarcSyntaxError(f"sp={tags['sp']} is not none, quarantine or reject")
    pct = tags.get("pct", "100")
    if not pct.isdigit() or int(pct) > 100:
        raise DmarcSyntaxError(f"pct={pct} is not a number from 0 to 100")
    return DmarcRecord(policy, subdomain_policy, modes["adkim"], modes["aspf"], int(pct))


def starting_record(domain: str, rua_template: str) -> str:
    """v=DMARC1; p=none; rua=…: reports only, nothing refused, until the reports are read."""
    rua = ",".join(
        uri.strip().replace("{domain}", domain) for uri in rua_template.split(",") if uri.strip()
    )
    return f"v=DMARC1; p={STARTING_POLICY}" + (f"; rua={rua}" if rua else "")


def foreign_report_domains(domain: str, rua_template: str) -> list[str]:
    """Report domains of rua= outside DOMAIN: each must consent in DNS (RFC 7489 7.1)."""
    hosts = []
    for uri in rua_template.split(","):
        host = uri.strip().replace("{domain}", domain).rpartition("@")[2].partition("!")[0]
        host = host.lower().rstrip(".")
        if host and organisational_domain(host) != organisational_domain(domain):
            hosts.append(host)
    return hosts


def organisational_domain(name: str) -> str:
    """The last two labels: the public suffix list would be exact (co.uk…); txrelay's own
    identifiers are the domain itself, so this only matters for relaxed SPF alignment."""
    return ".".join(name.lower().rstrip(".").split(".")[-2:])


def aligned(mode: str, author_domain: str, identifier_domain: str) -> bool:
    """RFC 7489 3.1: strict = the same name; relaxed = the same organisational domain."""
    author, identifier = author_domain.lower().rstrip("."), identifier_domain.lower().rstrip(".")
    if mode == "s":
        return author == identifier
    return organisational_domain(author) == organisational_domain(identifier)


def parents(domain: str) -> list[str]:
    """The names whose DMARC record applies when DOMAIN has none (a tree walk that stops
    before the top-level domain): shop.acme.example → [acme.example]."""
    labels = domain.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 1)]
