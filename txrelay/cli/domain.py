"""`txrelay domain`: sending domains, their DKIM keys, List-Help and DNS records."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.errors import CheckFailed, ServiceUnavailable
from txrelay.provisioning import dns_check, dns_records, domains
from txrelay.provisioning.dns_check import PublicationCheck, RecordCheck
from txrelay.provisioning.dns_lookup import DnsLookup, LookupFailed
from txrelay.provisioning.dns_records import BounceDns, ExpectedRecord, Published
from txrelay.provisioning.domains import RETIRE_AFTER, KeyChoice
from txrelay.provisioning.views import (
    dkim_publication_view,
    domain_check_view,
    domain_record,
    domain_view,
    expected_record_view,
    publication_state,
    short_time,
    table,
)
from txrelay.store.domains import DkimKey, SendingDomain

# `domain dns` looks the current SPF and DMARC records up only to advise: it does not wait
# long for them.
PUBLISHED_LOOKUP_SECONDS = 3.0


@click.group()
def domain() -> None:
    """Sending domains: each needs a DKIM key, its DNS records and a List-Help URL.

    \b
    Example:
      txrelay domain add "Acme GmbH" acme.example --list-help https://acme.example/help
      txrelay domain dns acme.example      # the DKIM, SPF and DMARC records to publish
      txrelay domain check acme.example    # once they are published

    \b
    Replacing a DKIM key without breaking verification:
      txrelay domain rotate-key acme.example    # new key, not used yet; publish its record
      txrelay domain switch-key acme.example    # once DNS has it: sign with the new key
      txrelay domain retire-key acme.example OLD_SELECTOR   # 7 days later: drop the old one
    """


@domain.command("add")
@click.argument("account")
@click.argument("domain_name", metavar="DOMAIN")
@click.option(
    "--list-help",
    required=True,
    metavar="URL_OR_MAILTO",
    help="List-Help target: an https:// URL or a mailto: address (RFC 2369).",
)
@click.option("--selector", metavar="S", help="DKIM selector (default txr<yyyymm>).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PEM",
    help="Use this existing unencrypted PEM private key (RSA ≥1024 bits or Ed25519).",
)
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    help="Key type to generate (default rsa, 2048 bits).",
)
@click.option(
    "--algorithms",
    metavar="rsa,ed25519",
    help="Generate a key of each type and sign every message twice (RFC 8463): the RSA key "
    "under the selector, the Ed25519 key under SELECTOR-ed25519. Two DNS records.",
)
@click.option(
    "--reuse-key-of",
    metavar="OTHER_DOMAIN",
    help="Share the selector and key of another domain of the same account.",
)
@json_option
@pass_cli
def add(
    cli: CliContext,
    account: str,
    domain_name: str,
    list_help: str,
    selector: str | None,
    key_file: Path | None,
    algorithm: str | None,
    algorithms: str | None,
    reuse_key_of: str | None,
) -> None:
    """Add DOMAIN to ACCOUNT with a DKIM key, and print the DNS record to publish.

    The domain is pending until 'txrelay domain check DOMAIN' finds its DKIM record in DNS:
    until then its live mail is refused ([dkim] require_published).
    Unicode domain names are stored in punycode (bücher.example → xn--bcher-kva.example).

    \b
    Examples:
      txrelay domain add "Acme GmbH" acme.example --list-help https://acme.example/help
      txrelay domain add "Acme GmbH" acme.example --list-help mailto:help@acme.example \\
          --algorithm ed25519 --selector mail2026
      txrelay domain add "Acme GmbH" shop.acme.example --list-help https://acme.example/help \\
          --reuse-key-of acme.example
      txrelay domain add "Acme GmbH" acme.example --list-help https://acme.example/help \\
          --algorithms rsa,ed25519
    """
    choice = KeyChoice(
        selector,
        algorithm,
        key_file,
        reuse_key_of,
        domains.parse_algorithms(algorithms) if algorithms is not None else (),
    )
    added = domains.add_domain(
        cli.db, cli.clock.now(), account, domain_name, list_help, choice, keys=cli.keys
    )
    cli.emit(domain_view(added), lambda: _print_added(added))


def _print_added(added: SendingDomain) -> None:
    keys = " and ".join(f"{k.selector}, {k.algorithm}" for k in added.signing_keys)
    selectors = "selectors" if added.second_key else "selector"
    click.echo(f"Added {added.domain} to account {added.account_name!r} (DKIM {selectors} {keys}).")
    _print_record(added)


def _print_record(found: SendingDomain) -> None:
    """Every record the domain must publish: the signing keys', then pending/retiring ones."""
    record = domain_record(found)
    if found.second_key is None:
        click.echo("Publish this DNS record (BIND zone-file form):\n")
        click.echo(record.zone_line() + "\n")
    else:
        click.echo("Publish these two DNS records (BIND zone-file form), one per key:\n")
        for key in found.signing_keys:
            click.echo(domain_record(found, key).zone_line() + "\n")
    for rotating in found.rotating:
        click.echo(f"And, {_state_text(rotating.state, rotating.since)}:\n")
        click.echo(domain_record(found, rotating.key).zone_line() + "\n")
    click.echo(
        f"Hint: one TXT record named {record.name}; if your DNS provider asks for a "
        "single value, paste the quoted parts joined without quotes or spaces. "
        f"'txrelay domain dns {found.domain}' prints the DKIM, SPF and DMARC records to "
        f"publish; then run 'txrelay domain check {found.domain}'."
    )


def _state_text(state: str, since: dt.datetime) -> str:
    if state == "pending":
        return f"for the new key (pending since {short_time(since)}, not signing yet)"
    return (
        f"for the old key (retiring: stopped signing {short_time(since)}; keep it "
        f"published until {short_time(since + RETIRE_AFTER)})"
    )


@domain.command("dns")
@click.argument("domain_name", metavar="DOMAIN")
@json_option
@pass_cli
def dns(cli: CliContext, domain_name: str) -> None:
    """Print every DNS record DOMAIN must publish: DKIM, SPF and DMARC, ready for the zone.

    \b
    DKIM   the public key of each key DOMAIN publishes (two during a key rotation);
    SPF    authorises the relay's addresses ([dns] spf_include or relay_addresses);
    DMARC  a starting record that only asks for reports (p=none);
    return path  with 'domain set DOMAIN --return-path HOST': HOST's MX (the relay,
           [bounce] mx_host or [smtp] host) and HOST's SPF record.
    There is one SPF and one DMARC record per name: DOMAIN's current ones are looked
    up ([dns] resolver), and the output gives the SPF record extended with the relay's
    mechanisms, and keeps a DMARC record DOMAIN has. docs/dns.md explains each record.

    \b
    Example:
      txrelay domain dns acme.example
      txrelay domain check acme.example    # once published
    """
    found = domains.get_domain(cli.db, domain_name)
    published, lookup_error = _published_now(cli, found.domain)
    records = dns_records.required_records(found, cli.config.dns, published, bounce_dns(cli))
    view = {
        **domain_view(found),
        "records": [expected_record_view(r) for r in records],
        "lookup_error": lookup_error or None,
    }
    cli.emit(view, lambda: _print_records(found, records, lookup_error))


def bounce_dns(cli: CliContext) -> BounceDns:
    bounce = cli.config.bounce
    return BounceDns(bounce.domain, bounce.mx_host or cli.config.smtp.host)


def _published_now(cli: CliContext, domain: str) -> tuple[Published, str]:
    """The domain's current SPF and DMARC records, so the output can say to extend or keep
    them; without an answer from DNS, the output falls back to saying how."""
    try:
        lookup = DnsLookup(cli.config.dns, lifetime=PUBLISHED_LOOKUP_SECONDS)
        return dns_check.published_now(lookup, domain), ""
    except (LookupFailed, ServiceUnavailable) as exc:
        return Published(), str(exc)


def _print_records(found: SendingDomain, records: list[ExpectedRecord], lookup_error: str) -> None:
    click.echo(f"Publish these DNS records for {found.domain} (BIND zone-file form):\n")
    if lookup_error:
        click.echo(
            f"Note: txrelay could not look up the records {found.domain} has now "
            f"({lookup_error}); the notes say what to do if it has some.\n"
        )
    for expected in records:
        state = ""
        if expected.state in ("pending", "retiring"):
            state = f" {_state_text(expected.state, _since(found, expected))}"
        click.echo(f"{expected.label}{state}: {expected.purpose}.")
        if expected.record is not None:
            click.echo(expected.record.zone_line())
        if expected.note:
            click.echo(f"Note: {expected.note}.")
        click.echo()
    click.echo(
        "Hint: one TXT record per line above; if your DNS provider asks for a single "
        "value, paste the quoted parts joined without quotes or spaces. Then run "
        f"'txrelay domain check {found.domain}'."
    )


def _since(found: SendingDomain, expected: ExpectedRecord) -> dt.datetime:
    return next(r.since for r in found.rotating if r.key == expected.key)


@domain.command("check")
@click.argument("domain_name", metavar="DOMAIN")
@json_option
@pass_cli
def check(cli: CliContext, domain_name: str) -> None:
    """Look DOMAIN's DKIM, SPF and DMARC records up in DNS; a verdict and the fix for each.

    \b
    Verdicts: ok, missing, mismatch (published but wrong), dns-error (no answer: try
    again), warning (works, or cannot be decided, but read the note). Exit status 1
    when any record is missing, wrong or could not be looked up.
    \b
    DKIM   each key's record publishes the stored key; during a rotation the new
           (pending) and old (retiring) keys too;
    SPF    exactly one SPF record, and it authorises the relay's addresses;
    DMARC  one valid record applies (DOMAIN's own or its parent domain's) and txrelay's
           signature is aligned with it;
    return path  HOST's MX names the relay and HOST's SPF authorises it; without a
           return path of its own, a warning when the relay-wide [bounce] domain is not
           DOMAIN or a subdomain of it (no CFBL-Address then: RFC 9477 alignment).
    Lookups go to [dns] resolver (default: the system's resolvers).

    \b
    Example:
      txrelay domain check acme.example && echo ready to send
    """
    found = domains.get_domain(cli.db, domain_name)
    checks = dns_check.check_domain(
        DnsLookup(cli.config.dns), found, cli.config.dns, bounce_dns(cli)
    )
    published, detail = dns_check.dkim_publication(checks)
    found, became = domains.record_dkim_publication(
        cli.db, cli.clock.now(), found, published, detail
    )
    view = {**domain_check_view(found, checks), "dkim_publication": dkim_publication_view(found)}
    cli.emit(view, lambda: _print_checks(checks, _publication_text(found, became)))
    failed = [c for c in checks if c.failed]
    if failed:
        # main.py turns this into one line on stderr and exit status 1.
        raise CheckFailed(
            f"{found.domain} is not ready: "
            + "; ".join(f"{_check_label(c)} {c.verdict}: {c.detail}" for c in failed)
        )


def _check_label(check: RecordCheck) -> str:
    key = check.expected.key
    if key is not None and check.expected.state != "signing":
        return f"DKIM ({check.expected.state} key {key.selector})"
    return check.expected.label


def _print_checks(checks: list[RecordCheck], publication: str) -> None:
    for check in checks:
        click.echo(f"{_check_label(check)} {check.verdict}: {check.detail}")
        if check.fix:
            click.echo(f"  fix: {check.fix}")
    if publication:
        click.echo(publication)


def _publication_text(found: SendingDomain, became: bool) -> str:
    """A line when the domain is pending, or just stopped being: live mail waits for DKIM."""
    if became:
        return f"{found.domain} is published now: its live mail is signed and sent."
    if found.published_at is None:
        return (
            f"{found.domain} is pending: its live mail is refused until every DKIM record "
            "above is published; run this check again then."
        )
    return ""


def _check_key(cli: CliContext, found: SendingDomain, key: DkimKey) -> PublicationCheck:
    return dns_check.check_publication(
        DnsLookup(cli.config.dns), domain_record(found, key), key.algorithm, key.public_key_b64
    )


@domain.command("list")
@click.option("--account", metavar="ACCOUNT", help="Only this account's domains.")
@json_option
@pass_cli
def list_(cli: CliContext, account: str | None) -> None:
    """List sending domains with account, signing selector, algorithm, DKIM state, List-Help
    and return path ('relay': the relay-wide [bounce] domain).

    ROTATING names keys in the middle of a rotation: pending (published, not signing yet)
    and retiring (no longer signing, still published). DKIM is published (live mail may
    leave) or pending ('txrelay domain check DOMAIN' has not found its records yet).

    \b
    Example:
      txrelay domain list --account "Acme GmbH"
    """
    found = domains.list_domains(cli.db, account)
    rows = [
        (
            d.domain,
            d.account_name,
            ", ".join(k.selector for k in d.signing_keys),
            ", ".join(k.algorithm for k in d.signing_keys),
            publication_state(d),
            _rotating_text(d),
            d.list_help,
            d.return_path or "relay",
        )
        for d in found
    ]
    headings = ("DOMAIN", "ACCOUNT", "SIGNING SELECTOR", "ALGORITHM", "DKIM", "ROTATING")
    cli.emit(
        [domain_view(d) for d in found],
        lambda: click.echo(table((*headings, "LIST-HELP", "RETURN PATH"), rows)),
    )


def _rotating_text(found: SendingDomain) -> str:
    return ", ".join(f"{r.key.selector} ({r.state})" for r in found.rotating) or "-"


@domain.command("set")
@click.argument("domain_name", metavar="DOMAIN")
@click.option(
    "--list-help",
    metavar="URL_OR_MAILTO",
    help="New List-Help target: an https:// URL or a mailto: address.",
)
@click.option(
    "--return-path",
    metavar="HOST",
    help="DOMAIN's own bounce domain: DOMAIN or a subdomain of it (e.g. bounces.DOMAIN). "
    "Its mail then gets envelope senders b-TOKEN@HOST and CFBL-Address fbl@HOST, aligned "
    "with DOMAIN for SPF and CFBL. 'relay': back to the relay-wide [bounce] domain.",
)
@json_option
@pass_cli
def set_(cli: CliContext, domain_name: str, list_help: str | None, return_path: str | None) -> None:
    """Change DOMAIN's List-Help target or its return path (from the next message on).

    A return path of its own needs DNS records: 'txrelay domain dns DOMAIN' prints them
    (an MX pointing at the relay and an SPF record for HOST), 'txrelay domain check DOMAIN'
    checks them.

    \b
    Examples:
      txrelay domain set acme.example --list-help https://acme.example/support
      txrelay domain set acme.example --return-path bounces.acme.example
      txrelay domain set acme.example --return-path relay
    """
    changed = domains.change_domain(
        cli.db, domain_name, list_help=list_help, return_path=return_path
    )
    cli.emit(domain_view(changed), lambda: _print_changed(cli, changed, list_help, return_path))


def _print_changed(
    cli: CliContext, changed: SendingDomain, list_help: str | None, return_path: str | None
) -> None:
    if list_help is not None:
        click.echo(f"{changed.domain}: List-Help is now {changed.list_help}")
    if return_path is not None:
        click.echo(f"{changed.domain}: return path is now {_return_path_text(cli, changed)}")
        if changed.return_path:
            click.echo(
                f"Publish its MX and SPF records ('txrelay domain dns {changed.domain}'), "
                f"then run 'txrelay domain check {changed.domain}'. On every relay node, run "
                "'txrelay postfix configure' and 'postfix reload' so that Postfix takes the "
                f"bounces for {changed.return_path}."
            )


def _return_path_text(cli: CliContext, found: SendingDomain) -> str:
    if found.return_path:
        return found.return_path
    relay = cli.config.bounce.domain
    return f"the relay's ({relay})" if relay else "none (the relay has no [bounce] domain)"


@domain.command("show")
@click.argument("domain_name", metavar="DOMAIN")
@json_option
@pass_cli
def show(cli: CliContext, domain_name: str) -> None:
    """Show DOMAIN: account, List-Help, return path, and each DKIM key with its state.

    States: signing (mail is signed with it), pending (new key; publish its record, then
    'switch-key'), retiring (replaced; keep its record published until the date shown, then
    'retire-key').

    \b
    Example:
      txrelay domain show acme.example
    """
    found = domains.get_domain(cli.db, domain_name)
    cli.emit(domain_view(found), lambda: _print_domain(cli, found))


def _print_domain(cli: CliContext, found: SendingDomain) -> None:
    click.echo(
        f"Domain:      {found.domain}\nAccount:     {found.account_name}\n"
        f"List-Help:   {found.list_help}\nReturn path: {_return_path_text(cli, found)}\n"
        f"Added:       {short_time(found.created_at)}\n"
        f"DKIM:        {_publication_summary(found)}\n"
    )
    rows = [(k.selector, k.algorithm, "signing", "-", "-") for k in found.signing_keys]
    rows += [
        (
            r.key.selector,
            r.key.algorithm,
            r.state,
            short_time(r.since),
            short_time(r.since + RETIRE_AFTER) if r.state == "retiring" else "-",
        )
        for r in found.rotating
    ]
    click.echo(table(("SELECTOR", "ALGORITHM", "STATE", "SINCE", "KEEP PUBLISHED UNTIL"), rows))


def _publication_summary(found: SendingDomain) -> str:
    check = found.last_check
    checked = (
        "never checked"
        if check is None
        else f"last checked {short_time(check.checked_at)} UTC: {check.detail or '-'}"
    )
    if found.published_at is None:
        return (
            f"pending (live mail refused until 'txrelay domain check {found.domain}' finds "
            f"its records); {checked}"
        )
    return f"published since {short_time(found.published_at)} UTC; {checked}"


@domain.command("rotate-key")
@click.argument("domain_name", metavar="DOMAIN")
@click.option(
    "--selector",
    metavar="S",
    help="Selector of the new key (default txr<yyyymm>, or txr<yyyymm>-2… if taken).",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PEM",
    help="Use this existing unencrypted PEM private key instead of generating one.",
)
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    help="Key type to generate (default: the type of the current key). A domain that signs "
    "with both replaces the key of this type, and needs this option.",
)
@json_option
@pass_cli
def rotate_key(
    cli: CliContext,
    domain_name: str,
    selector: str | None,
    key_file: Path | None,
    algorithm: str | None,
) -> None:
    """Step 1 of a key rotation: add a new DKIM key for DOMAIN under a new selector.

    Nothing is signed with the new key yet: publish the DNS record printed here, then run
    'txrelay domain switch-key DOMAIN'. The current key keeps signing until then. A domain
    signing with an RSA and an Ed25519 key rotates one of them at a time: --algorithm says
    which.

    \b
    Example:
      txrelay domain rotate-key acme.example
      txrelay domain rotate-key acme.example --selector mail2027 --algorithm ed25519
      txrelay domain rotate-key dual.example --algorithm ed25519   # signs with both
    """
    choice = KeyChoice(selector, algorithm, key_file)
    rotated = domains.start_rotation(cli.db, cli.clock.now(), domain_name, choice, keys=cli.keys)
    pending = domains.pending_key(rotated)
    cli.emit(domain_view(rotated), lambda: _print_pending(rotated, pending.key))


def _print_pending(found: SendingDomain, key: DkimKey) -> None:
    record = domain_record(found, key)
    click.echo(
        f"New DKIM key for {found.domain}: selector {key.selector}, {key.algorithm} "
        f"(pending; {found.domain} still signs with selector "
        f"{domains.replaced_key(found, key).selector})."
    )
    click.echo("Publish this DNS record (BIND zone-file form) next to the current one:\n")
    click.echo(record.zone_line() + "\n")
    click.echo(
        f"Then run 'txrelay domain switch-key {found.domain}': it checks that the record "
        "is visible in DNS and starts signing with the new key."
    )


@domain.command("switch-key")
@click.argument("domain_name", metavar="DOMAIN")
@click.option(
    "--force",
    is_flag=True,
    help="Switch without looking the new record up in DNS. Receivers cannot verify "
    "mail signed with the new key until its record is published, so use this "
    "only when you checked DNS yourself (e.g. a split-horizon resolver).",
)
@json_option
@pass_cli
def switch_key(cli: CliContext, domain_name: str, force: bool) -> None:
    """Step 2 of a key rotation: sign DOMAIN's mail with its new (pending) key.

    First checks in DNS that the new key's record is published (refuses otherwise). The old
    key becomes 'retiring': keep its DNS record for 7 more days, since mail already signed
    with it is still in queues and is verified on arrival; then run 'txrelay domain
    retire-key DOMAIN OLD_SELECTOR'. Every milter picks the new key up with its next policy
    refresh (seconds).

    \b
    Example:
      txrelay domain switch-key acme.example
    """
    found = domains.get_domain(cli.db, domain_name)
    pending = domains.pending_key(found)
    if not force:
        result = _check_key(cli, found, pending.key)
        if not result.ok:
            raise CheckFailed(
                f"not switching: the new key (selector {pending.key.selector}) is not "
                f"published yet: {result.detail}. Run again once DNS shows it, or give --force"
            )
    switched, old = domains.switch_key(cli.db, cli.clock.now(), found.domain, pending.key.id)
    keep_until = short_time(cli.clock.now() + RETIRE_AFTER)
    cli.emit(
        domain_view(switched),
        lambda: click.echo(
            f"{switched.domain} now signs with selector {pending.key.selector}. Keep the record "
            f"of selector {old.selector} ({old.selector}._domainkey.{switched.domain}) published "
            f"until {keep_until} UTC, then run 'txrelay domain retire-key {switched.domain} "
            f"{old.selector}'."
        ),
    )


@domain.command("retire-key")
@click.argument("domain_name", metavar="DOMAIN")
@click.argument("selector", metavar="SELECTOR")
@click.option(
    "--force",
    is_flag=True,
    help="Retire a replaced key before its 7 days are over. Mail signed with it that "
    "is still queued somewhere will fail DKIM once its record is removed.",
)
@json_option
@pass_cli
def retire_key(cli: CliContext, domain_name: str, selector: str, force: bool) -> None:
    """Step 3 of a key rotation: forget DOMAIN's old key SELECTOR.

    Allowed 7 days after 'switch-key' replaced it. Also drops a pending key that never
    signed (a rotation given up). Afterwards remove its DNS record.

    \b
    Example:
      txrelay domain retire-key acme.example txr202611
    """
    retired_from, retired = domains.retire_key(
        cli.db, cli.clock.now(), domain_name, selector, force
    )
    name = f"{retired.key.selector}._domainkey.{retired_from.domain}"
    cli.emit(
        domain_view(retired_from),
        lambda: click.echo(
            f"Retired the {retired.state} key of {retired_from.domain} (selector "
            f"{retired.key.selector}); remove the DNS record {name} now. "
            f"{retired_from.domain} signs with selector {retired_from.key.selector}."
        ),
    )
