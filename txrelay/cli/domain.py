"""`txrelay domain`: sending domains, their DKIM keys, List-Help and DNS records."""

from __future__ import annotations

from pathlib import Path

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.errors import Conflict, NotFound, ServiceUnavailable, TxRelayError
from txrelay.provisioning import dns_check, domains
from txrelay.provisioning.domains import KeyChoice
from txrelay.provisioning.views import domain_record, domain_view, table
from txrelay.store.domains import SendingDomain

_CHECK_FAILURES: dict[str, type[TxRelayError]] = {
    "missing": NotFound, "mismatch": Conflict, "dns-error": ServiceUnavailable,
}


@click.group()
def domain() -> None:
    """Sending domains: each needs a DKIM key (published in DNS) and a List-Help URL.

    \b
    Example:
      txrelay domain add "Acme GmbH" acme.example --list-help https://acme.example/help
      txrelay domain check acme.example
    """


@domain.command("add")
@click.argument("account")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--list-help", required=True, metavar="URL_OR_MAILTO",
              help="List-Help target: an https:// URL or a mailto: address (RFC 2369).")
@click.option("--selector", metavar="S", help="DKIM selector (default txr<yyyymm>).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              help="Use this existing unencrypted PEM private key (RSA ≥1024 bits or Ed25519).")
@click.option("--algorithm", type=click.Choice(["rsa", "ed25519"]),
              help="Key type to generate (default rsa, 2048 bits).")
@click.option("--reuse-key-of", metavar="OTHER_DOMAIN",
              help="Share the selector and key of another domain of the same account.")
@json_option
@pass_cli
def add(cli: CliContext, account: str, domain_name: str, list_help: str, selector: str | None,
        key_file: Path | None, algorithm: str | None, reuse_key_of: str | None) -> None:
    """Add DOMAIN to ACCOUNT with a DKIM key, and print the DNS record to publish.

    Unicode domain names are stored in punycode (bücher.example → xn--bcher-kva.example).

    \b
    Examples:
      txrelay domain add "Acme GmbH" acme.example --list-help https://acme.example/help
      txrelay domain add "Acme GmbH" acme.example --list-help mailto:help@acme.example \\
          --algorithm ed25519 --selector mail2026
      txrelay domain add "Acme GmbH" shop.acme.example --list-help https://acme.example/help \\
          --reuse-key-of acme.example
    """
    choice = KeyChoice(selector, algorithm, key_file, reuse_key_of)
    added = domains.add_domain(cli.db, cli.clock.now(), account, domain_name, list_help, choice)
    cli.emit(domain_view(added), lambda: _print_added(added))


def _print_added(added: SendingDomain) -> None:
    click.echo(f"Added {added.domain} to account {added.account_name!r} "
               f"(DKIM selector {added.key.selector}, {added.key.algorithm}).")
    _print_record(added)


def _print_record(found: SendingDomain) -> None:
    record = domain_record(found)
    click.echo("Publish this DNS record (BIND zone-file form):\n")
    click.echo(record.zone_line() + "\n")
    click.echo(f"Hint: one TXT record named {record.name}; if your DNS provider asks for a "
               "single value, paste the quoted parts joined without quotes or spaces. Then run "
               f"'txrelay domain check {found.domain}'.")


@domain.command("dns")
@click.argument("domain_name", metavar="DOMAIN")
@json_option
@pass_cli
def dns(cli: CliContext, domain_name: str) -> None:
    """Print the DKIM TXT record DOMAIN must publish.

    \b
    Example:
      txrelay domain dns acme.example
    """
    found = domains.get_domain(cli.db, domain_name)
    cli.emit(domain_view(found), lambda: _print_record(found))


@domain.command("check")
@click.argument("domain_name", metavar="DOMAIN")
@json_option
@pass_cli
def check(cli: CliContext, domain_name: str) -> None:
    """Look up DOMAIN's DKIM record in DNS; exit 1 unless it publishes the stored key.

    \b
    Example:
      txrelay domain check acme.example && echo ready to send
    """
    found = domains.get_domain(cli.db, domain_name)
    result = dns_check.check_publication(domain_record(found), found.key.algorithm,
                                         found.key.public_key_b64)
    data = {"domain": found.domain, "record": result.record_name, "status": result.status,
            "ok": result.ok, "found": list(result.found), "detail": result.detail}
    if cli.as_json:
        cli.emit(data, lambda: None)
    elif result.ok:
        click.echo(f"OK: {result.detail}")
    if not result.ok:
        # main.py turns these into one line on stderr and exit status 1.
        raise _CHECK_FAILURES[result.status](f"DKIM not ready: {result.detail}")


@domain.command("list")
@click.option("--account", metavar="ACCOUNT", help="Only this account's domains.")
@json_option
@pass_cli
def list_(cli: CliContext, account: str | None) -> None:
    """List sending domains with account, selector, algorithm and List-Help.

    \b
    Example:
      txrelay domain list --account "Acme GmbH"
    """
    found = domains.list_domains(cli.db, account)
    rows = [(d.domain, d.account_name, d.key.selector, d.key.algorithm, d.list_help)
            for d in found]
    cli.emit([domain_view(d) for d in found], lambda: click.echo(table(
        ("DOMAIN", "ACCOUNT", "SELECTOR", "ALGORITHM", "LIST-HELP"), rows)))


@domain.command("set")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--list-help", required=True, metavar="URL_OR_MAILTO",
              help="New List-Help target: an https:// URL or a mailto: address.")
@json_option
@pass_cli
def set_(cli: CliContext, domain_name: str, list_help: str) -> None:
    """Change DOMAIN's List-Help target (used from the next message on).

    \b
    Example:
      txrelay domain set acme.example --list-help https://acme.example/support
    """
    changed = domains.change_list_help(cli.db, domain_name, list_help)
    cli.emit(domain_view(changed), lambda: click.echo(
        f"{changed.domain}: List-Help is now {changed.list_help}"))
