"""Every DNS record a sending domain must publish: DKIM, SPF, DMARC and its return path's.

This is what `txrelay domain dns` prints and what `txrelay domain check` compares DNS with.
Each kind of record has one builder here; the commands print and check them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from txrelay.config import DnsConfig
from txrelay.policy.mail_back import cfbl_aligned
from txrelay.provisioning import dmarc_policy, spf_policy
from txrelay.provisioning.dkim_keys import DnsRecord, dns_record
from txrelay.store.domains import DkimKey, SendingDomain

DKIM, SPF, DMARC, RETURN_PATH = "dkim", "spf", "dmarc", "return-path"


@dataclass(frozen=True)
class ExpectedRecord:
    """One record to publish. record is None when txrelay cannot say what it must hold
    (SPF while the relay's addresses are not configured); note says why then."""

    kind: str
    name: str
    record: DnsRecord | None
    purpose: str
    note: str = ""
    key: DkimKey | None = None  # DKIM: the key it publishes
    state: str = ""  # DKIM: signing | pending | retiring
    published: tuple[str, ...] | None = None  # SPF, DMARC: what DNS holds now (None: unknown)

    @property
    def label(self) -> str:
        return "return path" if self.kind == RETURN_PATH else self.kind.upper()


@dataclass(frozen=True)
class Published:
    """The SPF and DMARC records DNS holds now at their names; None where not looked up."""

    spf: tuple[str, ...] | None = None
    dmarc: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BounceDns:
    """What the return-path records depend on: the relay-wide [bounce] domain and the host
    a return-path domain's MX names ([bounce] mx_host, else [smtp] host)."""

    relay_domain: str = ""
    mx_host: str = ""


NO_BOUNCE = BounceDns()  # a relay without a bounce domain


def required_records(
    domain: SendingDomain,
    config: DnsConfig,
    published: Published = Published(),
    bounce: BounceDns = NO_BOUNCE,
) -> list[ExpectedRecord]:
    """With `published`, SPF and DMARC take the domain's current records into account (one
    of each per name): an SPF record to extend, a DMARC record to keep."""
    return [
        *dkim_records(domain),
        spf_record(domain.domain, config, published.spf),
        dmarc_record(domain.domain, config, published.dmarc),
        *return_path_records(domain, config, bounce),
    ]


def dkim_records(domain: SendingDomain) -> list[ExpectedRecord]:
    """The signing key's record, then those of keys being rotated in or out."""
    keys = [
        *((key, "signing") for key in domain.signing_keys),
        *((r.key, r.state) for r in domain.rotating),
    ]
    records = []
    for key, state in keys:
        record = dns_record(key.selector, domain.domain, key.algorithm, key.public_key_b64)
        records.append(
            ExpectedRecord(
                DKIM,
                record.name,
                record,
                "the public key receivers verify txrelay's signatures "
                f"with (selector {key.selector}, {key.algorithm})",
                key=key,
                state=state,
            )
        )
    return records


def relay_spf_terms(config: DnsConfig) -> list[str]:
    return spf_policy.relay_terms(config.spf_include, config.relay_networks())


def spf_record(
    domain: str, config: DnsConfig, published: tuple[str, ...] | None = None
) -> ExpectedRecord:
    purpose = f"authorises the relay to send mail with envelope senders @{domain}"
    terms = relay_spf_terms(config)
    if not terms:
        return ExpectedRecord(
            SPF,
            domain,
            None,
            purpose,
            published=published,
            note=(
                "the relay's sending addresses are not configured ([dns] relay_addresses or "
                "spf_include in txrelay.toml); ask the relay administrator what to authorise"
            ),
        )
    if published:
        merged = spf_policy.merged_record(list(published), terms)
        note = (
            f"{domain} publishes this record already; nothing to change"
            if list(published) == [merged]
            else f"{domain} already publishes {' and '.join(map(repr, published))}; there "
            "must be one SPF record per name, so replace "
            f"{'it' if len(published) == 1 else 'them'} with the record above (the "
            "same mechanisms plus the relay's)"
        )
        return ExpectedRecord(
            SPF, domain, DnsRecord(domain, merged), purpose, note, published=published
        )
    note = (
        f"one SPF record per name: if {domain} already has a TXT record starting with "
        f'"v=spf1", do not add a second one (receivers then ignore both); add '
        f'"{" ".join(terms)}" to it, before its "all" term (-all, ~all)'
    )
    if published is not None:
        note = f"{domain} has no SPF record yet"
    return ExpectedRecord(
        SPF,
        domain,
        DnsRecord(domain, spf_policy.suggested_record(terms)),
        purpose,
        note,
        published=published,
    )


def dmarc_record(
    domain: str, config: DnsConfig, published: tuple[str, ...] | None = None
) -> ExpectedRecord:
    name = dmarc_policy.record_name(domain)
    purpose = (
        "tells receivers what to do with mail that fails DKIM and SPF, and where to send reports"
    )
    if published and len(published) == 1:
        return ExpectedRecord(
            DMARC,
            name,
            DnsRecord(name, published[0]),
            purpose,
            note=(
                f"{name} publishes this record already: keep it ('txrelay domain check' checks it)"
            ),
            published=published,
        )
    notes = [
        f"if {name} already has a DMARC record, keep it and do not add a second one"
        if published is None
        else f"{name} has {len(published)} DMARC records, which receivers ignore: keep one"
        if published
        else f"{name} has no DMARC record yet"
    ]
    notes += [
        f"reports go to {host}: its zone must publish {domain}._report._dmarc.{host} "
        'TXT "v=DMARC1" to accept them (the relay administrator does that)'
        for host in dmarc_policy.foreign_report_domains(domain, config.dmarc_rua)
    ]
    return ExpectedRecord(
        DMARC,
        name,
        DnsRecord(name, dmarc_policy.starting_record(domain, config.dmarc_rua)),
        f"{purpose}; this starting record only asks for reports (p=none)",
        note="; ".join(notes),
        published=published,
    )


def return_path_records(
    domain: SendingDomain, config: DnsConfig, bounce: BounceDns
) -> list[ExpectedRecord]:
    """A return path of the domain's own (domain set --return-path HOST): HOST's MX names
    the relay (bounces and complaints come back to it) and HOST's SPF authorises the relay
    (HOST is the envelope sender's domain). Without one, mail uses the relay-wide [bounce]
    domain, whose records are the relay's (`txrelay bounce dns`): nothing to publish, but
    when that domain is not DOMAIN or a subdomain of it, SPF cannot align and CFBL aligns
    only with the relay's own signature: an advisory entry says what to do."""
    host = domain.return_path
    if host:
        mx_host = bounce.mx_host.rstrip(".")
        return [
            ExpectedRecord(
                RETURN_PATH,
                host,
                DnsRecord(host, f"10 {mx_host}.", "MX"),
                f"bounces to b-…@{host} and complaints to fbl@{host} reach the relay",
            ),
            spf_record(host, config),
        ]
    if bounce.relay_domain and not cfbl_aligned(bounce.relay_domain, domain.domain):
        return [
            ExpectedRecord(
                RETURN_PATH,
                domain.domain,
                None,
                f"{domain.domain}'s mail gets the relay-wide return path @{bounce.relay_domain}",
                note=(
                    f"{bounce.relay_domain} is not {domain.domain} nor a subdomain of it, so "
                    "SPF does not align with the From domain, and the mail's CFBL-Address "
                    "aligns only with the relay's own second DKIM signature (with no relay "
                    "key, [bounce] dkim_key_file, the mail has no CFBL headers; the relay's "
                    "records are printed by txrelay bounce dns); give the domain its own: "
                    f"txrelay domain set {domain.domain} --return-path bounces.{domain.domain}"
                ),
            )
        ]
    return []
