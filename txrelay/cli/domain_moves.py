"""`txrelay domain remove|move`: offboard a sending domain, or give it to another account."""

from __future__ import annotations

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.cli.domain import domain
from txrelay.provisioning import domain_moves
from txrelay.provisioning.views import domain_view


@domain.command("remove")
@click.argument("domain_name", metavar="DOMAIN")
@json_option
@pass_cli
def remove(cli: CliContext, domain_name: str) -> None:
    """Remove DOMAIN: its connections may no longer send from it (refused at MAIL within
    [milter] policy_refresh_seconds) and its DKIM keys are destroyed (private halves
    included) unless another domain of the account shares them. Its messages stay in the
    ledger. Remove its DKIM TXT records from DNS a few days later, once no mail signed with
    them can still be in transit.

    \b
    Example:
      txrelay domain remove old-shop.example
    """
    removed = domain_moves.remove_domain(cli.db, domain_name)
    data = {
        "domain": removed.domain.domain,
        "account": removed.domain.account_name,
        "removed": True,
        "connections": removed.connections,
        "keys_destroyed": removed.keys_destroyed,
    }

    def human() -> None:
        click.echo(
            f"Removed domain {removed.domain.domain} of account "
            f"{removed.domain.account_name!r}; {removed.keys_destroyed} DKIM key(s) destroyed."
        )
        if removed.connections:
            click.echo(f"  no longer sending from it: {', '.join(removed.connections)}")

    cli.emit(data, human)


@domain.command("move")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--to", "to_account", required=True, metavar="ACCOUNT", help="The new owner.")
@click.option(
    "--connection",
    "connections",
    multiple=True,
    metavar="NAME",
    help="A connection of the new account that may send from DOMAIN (repeatable).",
)
@json_option
@pass_cli
def move(cli: CliContext, domain_name: str, to_account: str, connections: tuple[str, ...]) -> None:
    """Give DOMAIN, its DKIM keys (the published records stay valid) and its key rotation
    to account ACCOUNT. The old account's connections lose it at once (refused at MAIL
    within [milter] policy_refresh_seconds); mail already accepted was billed to the old
    account and stays in its history. Name the new account's connections with --connection,
    or add it later with 'connection set NAME --add-domain DOMAIN'.

    \b
    Example:
      txrelay domain move shop.example --to "Acme Retail" --connection "Web shop"
    """
    moved = domain_moves.move_domain(cli.db, domain_name, to_account, connections)
    data = {
        **domain_view(moved.domain),
        "moved_from": moved.from_account,
        "connections_lost": moved.connections_lost,
        "connections_added": moved.connections_added,
    }

    def human() -> None:
        click.echo(
            f"Moved domain {moved.domain.domain} from account {moved.from_account!r} to "
            f"{moved.domain.account_name!r}, with its DKIM key(s); the DNS records stay as "
            "they are."
        )
        if moved.connections_lost:
            click.echo(f"  no longer sending from it: {', '.join(moved.connections_lost)}")
        if moved.connections_added:
            click.echo(f"  may send from it now: {', '.join(moved.connections_added)}")
        else:
            click.echo(
                "  no connection of the new account sends from it yet: "
                f"txrelay connection set NAME --account {moved.domain.account_name!r} "
                f"--add-domain {moved.domain.domain}"
            )

    cli.emit(data, human)
