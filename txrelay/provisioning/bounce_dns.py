"""The relay's own DNS records for its relay-wide bounce domain ([bounce] domain): the DKIM
key of the relay's second signature (the one the CFBL-Address aligns with when the bounce
domain is not the author's), the MX that brings bounces and complaints back, and the SPF
record that authorises the relay for envelope senders there. `txrelay bounce dns` prints
them, `txrelay bounce check` compares DNS with them."""

from __future__ import annotations

from txrelay.config import DnsConfig
from txrelay.provisioning.dkim_keys import DnsRecord, KeyMaterial, dns_record
from txrelay.provisioning.dns_check import (
    DNS_ERROR,
    OK,
    RETRY,
    RecordCheck,
    check_mx,
    check_publication,
    check_spf,
)
from txrelay.provisioning.dns_lookup import Lookup
from txrelay.provisioning.dns_records import (
    DKIM,
    RETURN_PATH,
    SPF,
    BounceDns,
    ExpectedRecord,
    spf_record,
)


def bounce_records(
    bounce: BounceDns, selector: str, key: KeyMaterial | None, config: DnsConfig
) -> list[ExpectedRecord]:
    """DKIM (when the relay has its key), MX and SPF of the relay-wide bounce domain."""
    domain = bounce.relay_domain
    records = []
    if key is not None:
        records.append(
            ExpectedRecord(
                DKIM,
                f"{selector}._domainkey.{domain}",
                dns_record(selector, domain, key.algorithm, key.public_key_b64),
                f"the relay's own signature (d={domain}) that the CFBL-Address "
                f"fbl@{domain} aligns with",
            )
        )
    mx_host = bounce.mx_host.rstrip(".")
    records.append(
        ExpectedRecord(
            RETURN_PATH,
            domain,
            DnsRecord(domain, f"10 {mx_host}.", "MX"),
            f"bounces to b-…@{domain} and complaints to fbl@{domain} reach the relay",
        )
    )
    records.append(spf_record(domain, config))
    return records


def check_bounce_records(
    lookup: Lookup, records: list[ExpectedRecord], key: KeyMaterial | None, config: DnsConfig
) -> list[RecordCheck]:
    checks = []
    for expected in records:
        if expected.kind == DKIM and expected.record is not None and key is not None:
            checks.append(_check_relay_dkim(lookup, expected, key))
        elif expected.kind == SPF:
            checks.append(check_spf(lookup, expected, config))
        else:
            checks.append(check_mx(lookup, expected))
    return checks


def _check_relay_dkim(lookup: Lookup, expected: ExpectedRecord, key: KeyMaterial) -> RecordCheck:
    assert expected.record is not None
    result = check_publication(lookup, expected.record, key.algorithm, key.public_key_b64)
    if result.ok:
        return RecordCheck(
            expected, OK, f"{expected.name} publishes the relay's key", "", result.found
        )
    if result.status == DNS_ERROR:
        return RecordCheck(expected, DNS_ERROR, result.detail, RETRY, result.found)
    detail = (
        f"no DKIM key of the relay at {expected.name}"
        if result.status == "missing"
        else f"{expected.name} publishes a different key than [bounce] dkim_key_file"
    )
    return RecordCheck(
        expected, result.status, detail, f"publish: {expected.record.zone_line()}", result.found
    )
