"""`txrelay bounce dns|check`: the relay's own DNS records for its bounce domain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from txrelay.bounce_dkim import read_bounce_dkim_key
from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.cli.domain import bounce_dns
from txrelay.errors import CheckFailed, ConfigError, InvalidInput
from txrelay.provisioning.bounce_dns import bounce_records, check_bounce_records
from txrelay.provisioning.dkim_keys import KeyMaterial
from txrelay.provisioning.dns_check import RecordCheck
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.provisioning.dns_records import ExpectedRecord
from txrelay.provisioning.views import expected_record_view, record_check_view


@click.group()
def bounce() -> None:
    """The relay-wide bounce domain ([bounce] domain): the DNS records it needs.

    Messages whose sending domain has no return path of its own get their envelope sender
    and their CFBL-Address (RFC 9477 complaint address) on this domain, and a second DKIM
    signature by the relay's own key ([bounce] dkim_key_file) with d= this domain.

    \b
    Example:
      txrelay bounce dns           # the records to publish
      txrelay bounce check         # once published
    """


@bounce.command("dns")
@json_option
@pass_cli
def dns(cli: CliContext) -> None:
    """Print the DNS records the bounce domain must publish, ready for the zone.

    \b
    DKIM   the relay's own key at [bounce] dkim_selector._domainkey.DOMAIN: the
           signature the CFBL-Address aligns with (created by 'txrelay init');
    MX     bounces and complaints come back to the relay ([bounce] mx_host, else
           [smtp] host);
    SPF    authorises the relay's addresses for envelope senders @DOMAIN.
    Exit status 4 when [bounce] domain is not set.

    \b
    Example:
      txrelay bounce dns
      txrelay bounce check    # once published
    """
    domain, key, missing = _relay_key(cli)
    records = _records(cli, key)
    view = {
        "domain": domain,
        "selector": cli.config.bounce.dkim_selector,
        "dkim_key_file": cli.config.bounce.dkim_key_file,
        "dkim_key_error": missing or None,
        "records": [expected_record_view(r) for r in records],
    }
    cli.emit(view, lambda: _print_records(domain, records, missing))


@bounce.command("check")
@json_option
@pass_cli
def check(cli: CliContext) -> None:
    """Look the bounce domain's DKIM, MX and SPF records up in DNS; a verdict and fix each.

    \b
    Verdicts: ok, missing, mismatch (published but wrong), dns-error (no answer: try
    again), warning (works, but read the note). Exit status 1 when a record is missing,
    wrong or could not be looked up, or the relay's DKIM key file cannot be read; 4 when
    [bounce] domain is not set. Lookups go to [dns] resolver.

    \b
    Example:
      txrelay bounce check && echo complaints can come back
    """
    domain, key, missing = _relay_key(cli)
    records = _records(cli, key)
    checks = check_bounce_records(DnsLookup(cli.config.dns), records, key, cli.config.dns)
    view: dict[str, Any] = {
        "domain": domain,
        "dkim_key_error": missing or None,
        "records": [record_check_view(c) for c in checks],
        "ready": not missing and not any(c.failed for c in checks),
    }
    cli.emit(view, lambda: _print_checks(checks, missing))
    problems = [f"{c.expected.label} {c.verdict}: {c.detail}" for c in checks if c.failed]
    if missing:
        problems.insert(0, missing)
    if problems:
        raise CheckFailed(f"the bounce domain {domain} is not ready: " + "; ".join(problems))


def _relay_key(cli: CliContext) -> tuple[str, KeyMaterial | None, str]:
    """The bounce domain, the relay's key (None when its file cannot be read) and why not."""
    domain = cli.config.bounce.domain
    if not domain:
        raise InvalidInput(
            "no relay-wide bounce domain: set [bounce] domain (e.g. bounces.relay.example) "
            "in the configuration file"
        )
    try:
        return domain, read_bounce_dkim_key(Path(cli.config.bounce.dkim_key_file)), ""
    except ConfigError as exc:
        return domain, None, str(exc)


def _records(cli: CliContext, key: KeyMaterial | None) -> list[ExpectedRecord]:
    return bounce_records(bounce_dns(cli), cli.config.bounce.dkim_selector, key, cli.config.dns)


def _print_records(domain: str, records: list[ExpectedRecord], missing: str) -> None:
    click.echo(f"Publish these DNS records for the bounce domain {domain} (BIND zone-file form):\n")
    if missing:
        click.echo(f"Note: no DKIM record: {missing}.\n")
    for expected in records:
        click.echo(f"{expected.label}: {expected.purpose}.")
        if expected.record is not None:
            click.echo(expected.record.zone_line())
        if expected.note:
            click.echo(f"Note: {expected.note}.")
        click.echo()
    click.echo("Then run 'txrelay bounce check'.")


def _print_checks(checks: list[RecordCheck], missing: str) -> None:
    if missing:
        click.echo(f"DKIM missing: {missing}")
    for found in checks:
        click.echo(f"{found.expected.label} {found.verdict}: {found.detail}")
        if found.fix:
            click.echo(f"  fix: {found.fix}")
