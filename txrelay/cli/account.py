"""`txrelay account`: create, inspect, change, disable and delete customers (accounts)."""

from __future__ import annotations

import shlex

import click
import redis

from txrelay.cli.connection import update_login_file
from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.provisioning import accounts
from txrelay.provisioning.views import account_view, short_time, table
from txrelay.store.accounts import UNCHANGED, Account, AccountSummary, Unchanged
from txrelay.store.keys import AccountKeys


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
@click.option(
    "--overage-cap",
    type=click.IntRange(min=0),
    metavar="N",
    help="At most N mails per billing month beyond the quota (0 = refuse at quota, "
    "like a demo account).",
)
@click.option(
    "--no-overage-cap", is_flag=True, help="Remove the cap: overage is unlimited (the default)."
)
@json_option
@pass_cli
def set_(
    cli: CliContext,
    name: str,
    low_quota_threshold: int | None,
    admin_email: str | None,
    overage_cap: int | None,
    no_overage_cap: bool,
) -> None:
    """Change an account's reminder threshold, admin e-mail address or overage cap.

    The overage cap limits what a paid account may send beyond its quota in one billing
    month (UTC): the first recipient over it is refused with 550 5.7.1 and nothing beyond
    it is billed.

    \b
    Example:
      txrelay account set "Acme GmbH" --low-quota-threshold 5000
      txrelay account set "Acme GmbH" --overage-cap 10000
    """
    if overage_cap is not None and no_overage_cap:
        raise click.UsageError("give either --overage-cap N or --no-overage-cap, not both")
    cap: int | Unchanged | None = UNCHANGED
    if no_overage_cap:
        cap = None
    elif overage_cap is not None:
        cap = overage_cap
    summary = accounts.change_account(
        cli.db,
        cli.clock.now(),
        name,
        low_quota_threshold=low_quota_threshold,
        admin_email=admin_email,
        overage_cap=cap,
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
        + _unusual_lines(account_)
        + f"  connections:      {summary.connections}\n"
        f"  domains:          {summary.domains}"
    )
    if created:
        click.echo(
            f"Next: txrelay domain add {shlex.quote(account_.name)} DOMAIN "
            "--list-help https://DOMAIN/help"
        )


def _unusual_lines(account_: Account) -> str:
    """Lines shown only when they differ from a new account's (no cap, enabled)."""
    lines = ""
    if account_.overage_cap is not None:
        lines += f"  overage cap:      {_cap_text(account_.overage_cap)}\n"
    if account_.disabled_at is not None:
        lines += f"  status:           {_status_text(account_)}\n"
    return lines


def _cap_text(cap: int) -> str:
    if cap == 0:
        return "0 (refused at quota)"
    return f"{cap:,} mails per month"


def _status_text(account_: Account) -> str:
    assert account_.disabled_at is not None
    return f"DISABLED since {short_time(account_.disabled_at)} UTC (its mail is refused)"


@account.command("disable")
@click.argument("name")
@json_option
@pass_cli
def disable(cli: CliContext, name: str) -> None:
    """Stop all mail of account NAME: every connection of it is refused at MAIL with
    "550 5.7.1 account NAME is disabled; contact the relay administrator". Messages already
    past MAIL finish and are billed. Nothing is deleted; 'account enable' undoes it. The
    relay nodes apply it within [milter] policy_refresh_seconds.

    \b
    Example:
      txrelay account disable "Acme GmbH"
    """
    summary = accounts.set_disabled(cli.db, cli.clock.now(), name, True)
    cli.emit(
        account_view(summary),
        lambda: click.echo(
            f"Disabled account {name!r}: its connections are refused at MAIL from now on."
        ),
    )


@account.command("enable")
@click.argument("name")
@json_option
@pass_cli
def enable(cli: CliContext, name: str) -> None:
    """Let a disabled account NAME send again.

    \b
    Example:
      txrelay account enable "Acme GmbH"
    """
    summary = accounts.set_disabled(cli.db, cli.clock.now(), name, False)
    cli.emit(
        account_view(summary),
        lambda: click.echo(f"Enabled account {name!r}: its connections may send again."),
    )


@account.command("delete")
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Delete even though the open billing month has overage not invoiced yet.",
)
@json_option
@pass_cli
def delete(cli: CliContext, name: str, force: bool) -> None:
    """Offboard account NAME for good: its SMTP credentials, domains and DKIM keys (private
    halves included) are destroyed, its plan stops renewing, its name is free again. Its
    messages and ledger are kept for billing ('billing export' still lists it). Refused
    (exit 1) while this month has overage mails not invoiced yet, unless --force. Messages
    already accepted finish and are billed.

    \b
    Example:
      txrelay account delete "Acme GmbH"
    """
    gone = accounts.delete_account(cli.db, cli.clock.now(), name, force=force)
    update_login_file(cli)
    _forget_live_state(cli, gone.account.id)
    data = {
        "account": gone.account.name,
        "id": gone.account.id,
        "deleted": True,
        "period": gone.period.label,
        "overage_not_invoiced": gone.overage,
        "recipients_in_flight": gone.in_flight,
    }

    def human() -> None:
        click.echo(
            f"Deleted account {name!r}: credentials, domains and DKIM keys destroyed; its "
            "ledger is kept for billing."
        )
        if gone.overage:
            click.echo(
                f"  {gone.overage:,} overage mails of {gone.period.label} are still to be "
                f"invoiced: txrelay billing export --period {gone.period.label} --csv"
            )
        if gone.in_flight:
            click.echo(f"  {gone.in_flight:,} recipients still in flight finish and are billed.")

    cli.emit(data, human)


def _forget_live_state(cli: CliContext, account_id: int) -> None:
    """Drop the deleted account's live balance and overage count from Redis (its held and
    rate sets expire by themselves). A failure is a note: the delete is committed, and the
    keys only take a little memory."""
    keys = AccountKeys(cli.config.redis.key_prefix, account_id)
    try:
        cli.redis.delete(keys.balance, keys.overage)
    except redis.RedisError as exc:
        click.echo(
            f"note: Redis did not answer ({exc}); delete {keys.balance} and {keys.overage} "
            "once it is back to free their memory",
            err=True,
        )
