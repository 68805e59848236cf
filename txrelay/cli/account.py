"""`txrelay account`: create and inspect customers (accounts) and their settings."""

from __future__ import annotations

import shlex

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.provisioning import accounts
from txrelay.provisioning.views import account_view, table
from txrelay.store.accounts import AccountSummary


@click.group()
def account() -> None:
    """Accounts: the customers that own domains, connections and quota.

    \b
    Example:
      txrelay account create "Acme GmbH" --admin-email ops@acme.example
      txrelay account list
    """


@account.command("create")
@click.argument("name")
@click.option(
    "--admin-email",
    required=True,
    metavar="ADDRESS",
    help="Who gets quota reminders and reports for this account.",
)
@json_option
@pass_cli
def create(cli: CliContext, name: str, admin_email: str) -> None:
    """Create account NAME with a demo quota ([quota] demo_quota mails, 1,000 by default).

    \b
    Example:
      txrelay account create "Acme GmbH" --admin-email ops@acme.example
    """
    summary = accounts.create_account(cli.db, cli.config.quota, cli.clock.now(), name, admin_email)
    cli.emit(account_view(summary), lambda: _print_account(summary, created=True))


@account.command("list")
@json_option
@pass_cli
def list_(cli: CliContext) -> None:
    """List accounts with remaining quota, paid/demo, connections and domains.

    \b
    Example:
      txrelay account list --json
    """
    summaries = accounts.list_accounts(cli.db, cli.clock.now())
    rows = [
        (
            s.account.name,
            s.account.admin_email,
            f"{s.quota_remaining:,}",
            "paid" if s.paid else "demo",
            s.connections,
            s.domains,
        )
        for s in summaries
    ]
    cli.emit(
        [account_view(s) for s in summaries],
        lambda: click.echo(
            table(("ACCOUNT", "ADMIN E-MAIL", "QUOTA LEFT", "PLAN", "CONNECTIONS", "DOMAINS"), rows)
        ),
    )


@account.command("show")
@click.argument("name")
@json_option
@pass_cli
def show(cli: CliContext, name: str) -> None:
    """Show one account.

    \b
    Example:
      txrelay account show "Acme GmbH"
    """
    summary = accounts.account_summary(cli.db, name, cli.clock.now())
    cli.emit(account_view(summary), lambda: _print_account(summary))


@account.command("set")
@click.argument("name")
@click.option(
    "--low-quota-threshold",
    type=click.IntRange(min=0),
    metavar="N",
    help="E-mail the admin when the remaining quota falls below N (0 = never).",
)
@click.option("--admin-email", metavar="ADDRESS", help="New admin e-mail address.")
@json_option
@pass_cli
def set_(
    cli: CliContext, name: str, low_quota_threshold: int | None, admin_email: str | None
) -> None:
    """Change an account's reminder threshold or admin e-mail address.

    \b
    Example:
      txrelay account set "Acme GmbH" --low-quota-threshold 5000
    """
    summary = accounts.change_account(
        cli.db,
        cli.clock.now(),
        name,
        low_quota_threshold=low_quota_threshold,
        admin_email=admin_email,
    )
    cli.emit(account_view(summary), lambda: _print_account(summary, changed=True))


def _print_account(
    summary: AccountSummary, *, created: bool = False, changed: bool = False
) -> None:
    account_ = summary.account
    if created:
        click.echo(
            f"Created account {account_.name!r} with a demo quota of "
            f"{summary.quota_remaining:,} mails."
        )
    elif changed:
        click.echo(f"Updated account {account_.name!r}.")
    threshold = f"{account_.low_quota_threshold:,}" if account_.low_quota_threshold else "off"
    click.echo(
        f"  account:          {account_.name}\n"
        f"  admin e-mail:     {account_.admin_email}\n"
        f"  plan:             {'paid' if summary.paid else 'demo'}\n"
        f"  quota remaining:  {summary.quota_remaining:,}\n"
        f"  reminder below:   {threshold}\n"
        f"  connections:      {summary.connections}\n"
        f"  domains:          {summary.domains}"
    )
    if created:
        click.echo(
            f"Next: txrelay domain add {shlex.quote(account_.name)} DOMAIN "
            "--list-help https://DOMAIN/help"
        )
