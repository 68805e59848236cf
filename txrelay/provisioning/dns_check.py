"""Compares a sending domain's records in DNS with what it must publish: a verdict and a fix
per record (DKIM key published and matching, SPF authorising the relay, DMARC usable)."""

from __future__ import annotations

from dataclasses import dataclass

from txrelay.config import DnsConfig
from txrelay.provisioning import dmarc_policy, spf_policy
from txrelay.provisioning.dkim_keys import DnsRecord, parse_txt_tags
from txrelay.provisioning.dns_lookup import Lookup, LookupFailed
from txrelay.provisioning.dns_records import (
    DKIM,
    DMARC,
    NO_BOUNCE,
    SPF,
    BounceDns,
    ExpectedRecord,
    Published,
    dkim_records,
    relay_spf_terms,
    required_records,
)
from txrelay.store.domains import SendingDomain

OK, MISSING, MISMATCH, DNS_ERROR, WARNING = "ok", "missing", "mismatch", "dns-error", "warning"
FAILURES = (MISSING, MISMATCH, DNS_ERROR)
RETRY = "try again later; if it persists, check the domain's DNS servers (or [dns] resolver)"


@dataclass(frozen=True)
class PublicationCheck:
    """A DKIM key record; status: published | missing | mismatch | dns-error."""

    status: str
    record_name: str
    found: tuple[str, ...]
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "published"


@dataclass(frozen=True)
class RecordCheck:
    """verdict: ok | missing | mismatch | dns-error | warning; fix says what to publish."""

    expected: ExpectedRecord
    verdict: str
    detail: str
    fix: str = ""
    found: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.verdict in FAILURES


def check_publication(
    lookup: Lookup, expected: DnsRecord, algorithm: str, public_key_b64: str
) -> PublicationCheck:
    name = expected.name
    try:
        found = lookup.txt(name)
    except LookupFailed as exc:
        return PublicationCheck("dns-error", name, (), f"{exc}; try again later")
    if not found:
        return PublicationCheck(
            "missing",
            name,
            (),
            f"no TXT record at {name}; publish the record shown by 'txrelay domain dns'",
        )
    keys = [tags for tags in map(parse_txt_tags, found) if "p" in tags]
    if not keys:
        return PublicationCheck(
            "missing",
            name,
            tuple(found),
            f"TXT at {name} holds no DKIM "
            "key (no p= tag); publish the record shown by 'txrelay domain "
            "dns'",
        )
    for tags in keys:
        if tags["p"] == public_key_b64 and tags.get("k", "rsa") == algorithm:
            return PublicationCheck(
                "published", name, tuple(found), f"{name} publishes the stored {algorithm} key"
            )
    return PublicationCheck(
        "mismatch",
        name,
        tuple(found),
        f"{name} publishes a different key "
        "than the one txrelay signs with; replace it with the record shown "
        "by 'txrelay domain dns'",
    )


def published_now(lookup: Lookup, domain: str) -> Published:
    """DOMAIN's SPF records and _dmarc.DOMAIN's DMARC records as DNS holds them (LookupFailed
    when DNS does not answer)."""
    return Published(
        spf=tuple(spf_policy.spf_records(lookup.txt(domain))),
        dmarc=tuple(dmarc_policy.dmarc_records(lookup.txt(dmarc_policy.record_name(domain)))),
    )


def check_domain(
    lookup: Lookup, domain: SendingDomain, config: DnsConfig, bounce: BounceDns = NO_BOUNCE
) -> list[RecordCheck]:
    """Each required record, in the order `domain dns` prints them."""
    checks = []
    for expected in required_records(domain, config, bounce=bounce):
        if expected.kind == DKIM:
            checks.append(check_dkim(lookup, expected))
        elif expected.kind == SPF:
            checks.append(check_spf(lookup, expected, config))
        elif expected.kind == DMARC:
            checks.append(check_dmarc(lookup, expected, domain.domain))
        elif expected.record is None:
            checks.append(RecordCheck(expected, WARNING, expected.note, _advice_fix(expected)))
        elif expected.record.rtype == "MX":
            checks.append(check_mx(lookup, expected))
        else:
            checks.append(check_present(lookup, expected))
    return checks


def dkim_publication(checks: list[RecordCheck]) -> tuple[bool, str]:
    """Whether every signing key's DKIM record is published (what live mail waits for), and
    one line saying so per key. Pending and retiring keys do not count: a rotation's new
    record is checked by switch-key, an old one may already be gone."""
    signing = [c for c in checks if c.expected.kind == DKIM and c.expected.state == "signing"]
    published = bool(signing) and all(c.verdict == OK for c in signing)
    return published, "; ".join(f"{c.expected.name}: {c.verdict}" for c in signing)


def check_signing_dkim(lookup: Lookup, domain: SendingDomain) -> list[RecordCheck]:
    """Only the DKIM records of the keys DOMAIN signs with (the tracker's periodic check)."""
    return [
        check_dkim(lookup, expected)
        for expected in dkim_records(domain)
        if expected.state == "signing"
    ]


def _advice_fix(expected: ExpectedRecord) -> str:
    """The command an advisory note ends with (after its last colon)."""
    return expected.note.rpartition(": ")[2]


def check_mx(lookup: Lookup, expected: ExpectedRecord) -> RecordCheck:
    """The return-path domain's MX must name the relay (other MX hosts too: a warning, as
    bounces sent to those do not reach txrelay)."""
    assert expected.record is not None
    wanted = expected.record.value.split()[-1].rstrip(".").lower()
    name = expected.name
    try:
        found = [host.lower() for host in lookup.mx(name)]
    except LookupFailed as exc:
        return RecordCheck(expected, DNS_ERROR, str(exc), RETRY)
    fix = f"publish: {expected.record.zone_line()}"
    if not found:
        return RecordCheck(expected, MISSING, f"{name} has no MX record", fix)
    if wanted not in found:
        return RecordCheck(
            expected,
            MISMATCH,
            f"{name}'s MX names {', '.join(found)}, not the relay ({wanted}): bounces and "
            "complaints would not reach txrelay",
            f"replace them with: {expected.record.zone_line()}",
            tuple(found),
        )
    if found != [wanted]:
        return RecordCheck(
            expected,
            WARNING,
            f"{name}'s MX names {', '.join(found)}: only what reaches {wanted} is read",
            f"keep only: {expected.record.zone_line()}",
            tuple(found),
        )
    return RecordCheck(expected, OK, f"{name}'s MX names the relay ({wanted})", found=tuple(found))


def check_dkim(lookup: Lookup, expected: ExpectedRecord) -> RecordCheck:
    assert expected.key is not None and expected.record is not None
    result = check_publication(
        lookup, expected.record, expected.key.algorithm, expected.key.public_key_b64
    )
    verdict = OK if result.ok else result.status
    fix = (
        RETRY
        if verdict == DNS_ERROR
        else ""
        if verdict == OK
        else f"publish: {expected.record.zone_line()}"
    )
    return RecordCheck(expected, verdict, result.detail, fix, result.found)


def check_present(lookup: Lookup, expected: ExpectedRecord) -> RecordCheck:
    """A TXT record that must be there exactly as printed."""
    assert expected.record is not None
    try:
        found = lookup.txt(expected.name)
    except LookupFailed as exc:
        return RecordCheck(expected, DNS_ERROR, str(exc), RETRY)
    if expected.record.value in found:
        return RecordCheck(expected, OK, f"{expected.name} publishes it", found=tuple(found))
    verdict = MISMATCH if found else MISSING
    return RecordCheck(
        expected,
        verdict,
        f"{expected.name} does not publish {expected.record.value!r}",
        f"publish: {expected.record.zone_line()}",
        tuple(found),
    )


def check_spf(lookup: Lookup, expected: ExpectedRecord, config: DnsConfig) -> RecordCheck:
    domain = expected.name
    try:
        found = spf_policy.spf_records(lookup.txt(domain))
    except LookupFailed as exc:
        return RecordCheck(expected, DNS_ERROR, str(exc), RETRY)
    terms = relay_spf_terms(config)
    if not found:
        fix = f"publish: {expected.record.zone_line()}" if expected.record else expected.note
        return RecordCheck(expected, MISSING, f'{domain} has no SPF record (TXT "v=spf1 …")', fix)
    merged = DnsRecord(domain, spf_policy.merged_record(found, terms)).zone_line()
    if len(found) > 1:
        return RecordCheck(
            expected,
            MISMATCH,
            f"{domain} has {len(found)} SPF records; receivers then ignore all of them (permerror)",
            f"replace them with one record: {merged}",
            tuple(found),
        )
    targets: list[spf_policy.Target] = [*config.relay_networks()]
    if not targets and config.spf_include:
        targets = [config.spf_include]
    if not targets:
        return RecordCheck(
            expected,
            WARNING,
            f"{domain} publishes {found[0]!r}; txrelay cannot tell whether it authorises the relay",
            expected.note,
            tuple(found),
        )
    return _judge_spf(
        expected,
        found[0],
        merged,
        [(target, spf_policy.evaluate(lookup, domain, target)) for target in targets],
    )


def _judge_spf(
    expected: ExpectedRecord,
    published: str,
    merged: str,
    results: list[tuple[spf_policy.Target, spf_policy.Evaluation]],
) -> RecordCheck:
    found = (published,)
    shown = ", ".join(spf_policy.target_text(target) for target, _ in results)
    failing = [(target, e) for target, e in results if e.result != "pass"]
    if not failing:
        return RecordCheck(
            expected,
            OK,
            f"{expected.name} publishes {published!r}, which authorises the relay ({shown})",
            found=found,
        )
    target, evaluation = failing[0]
    who = spf_policy.target_text(target)
    if evaluation.result == "temperror":
        return RecordCheck(
            expected, DNS_ERROR, f"evaluating SPF for {who}: {evaluation.reason}", RETRY, found
        )
    if evaluation.result == "unknown":
        return RecordCheck(
            expected,
            WARNING,
            f"cannot tell whether {published!r} authorises {who}: {evaluation.reason}",
            f"make sure it does, e.g. with: {merged}",
            found,
        )
    if evaluation.result == "permerror":
        return RecordCheck(
            expected,
            MISMATCH,
            f"{expected.name}'s SPF record is broken "
            f"({evaluation.reason}); receivers treat it as an error",
            f"correct it so that it holds the relay's mechanisms: {merged}",
            found,
        )
    return RecordCheck(
        expected,
        MISMATCH,
        f"{published!r} does not authorise the relay: {who} "
        f"gets {evaluation.result} ({evaluation.reason})",
        f"replace it with: {merged}",
        found,
    )


def check_dmarc(lookup: Lookup, expected: ExpectedRecord, domain: str) -> RecordCheck:
    assert expected.record is not None
    publish = f"publish: {expected.record.zone_line()}"
    try:
        source, found = _applicable_dmarc(lookup, domain)
        misplaced = not found and any(map(dmarc_policy.is_dmarc, lookup.txt(domain)))
    except LookupFailed as exc:
        return RecordCheck(expected, DNS_ERROR, str(exc), RETRY)
    if misplaced:
        return RecordCheck(
            expected,
            MISSING,
            f"a DMARC record is published at {domain} itself; "
            f"receivers look for it only at {expected.name}",
            f"move it: {expected.record.zone_line()}",
        )
    if not found:
        return RecordCheck(expected, MISSING, f"no DMARC record at {expected.name}", publish)
    if len(found) > 1:
        return RecordCheck(
            expected,
            MISMATCH,
            f"{source} has {len(found)} DMARC records; receivers then apply none",
            f"keep one, e.g.: {expected.record.zone_line()}",
            tuple(found),
        )
    try:
        record = dmarc_policy.parse(found[0])
    except dmarc_policy.DmarcSyntaxError as exc:
        return RecordCheck(
            expected,
            MISMATCH,
            f"{source}: {exc}; receivers ignore the record",
            f"replace it with: {expected.record.zone_line()}",
            tuple(found),
        )
    return _judge_dmarc(expected, domain, source, record, tuple(found), expected.record.zone_line())


def _applicable_dmarc(lookup: Lookup, domain: str) -> tuple[str, list[str]]:
    """The DMARC records that apply to DOMAIN's mail: its own, else its nearest parent's."""
    for name in [domain, *dmarc_policy.parents(domain)]:
        found = dmarc_policy.dmarc_records(lookup.txt(dmarc_policy.record_name(name)))
        if found:
            return dmarc_policy.record_name(name), found
    return dmarc_policy.record_name(domain), []


def _judge_dmarc(
    expected: ExpectedRecord,
    domain: str,
    source: str,
    record: dmarc_policy.DmarcRecord,
    found: tuple[str, ...],
    starting_line: str,
) -> RecordCheck:
    inherited = source != expected.name
    policy = record.subdomain_policy if inherited else record.policy
    # txrelay signs with d= the From: domain, and the envelope sender is the shop's own
    # address in it (until a return-path domain changes that).
    dkim_aligned = dmarc_policy.aligned(record.adkim, domain, domain)
    spf_aligned = dmarc_policy.aligned(record.aspf, domain, domain)
    modes = f"adkim={record.adkim}, aspf={record.aspf}"
    where = f"{source} (inherited by {domain})" if inherited else source
    if not (dkim_aligned or spf_aligned):
        return RecordCheck(
            expected,
            MISMATCH,
            f"{where}: neither txrelay's DKIM signature nor "
            f"its envelope sender is aligned with {domain} ({modes})",
            f"relax the alignment: {starting_line}",
            found,
        )
    detail = (
        f"{where} applies policy p={policy}; txrelay's DKIM signature (d={domain}) is "
        f"aligned ({modes})"
    )
    if policy == "none":
        detail += "; reports only: once they show only your own mail, move to p=quarantine"
    return RecordCheck(expected, OK, detail, found=found)
