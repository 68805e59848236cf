"""`txrelay connection`: SMTP credentials for the systems (shops, CRMs) that send mail."""

from __future__ import annotations

from pathlib import Path

import click
import psycopg

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.config import Config
from txrelay.provisioning import connections
from txrelay.provisioning.connections import ConnectionChange, IssuedCredentials
from txrelay.provisioning.views import (
    access_view,
    connection_view,
    rate_limit_text,
    short_time,
    table,
)
from txrelay.store.connections import Connection
from txrelay.store.passdb_file import (
    PassdbFileError,
    sync_passdb_file,
    wait_until_dovecot_sees_it,
)

ACCOUNT_OPTION = click.option(
    "--account",
    metavar="ACCOUNT",
    help="The account the connection belongs to (needed when NAME is not unique).",
)


@click.group()
def connection() -> None:
    """Connections: one per sending system, each with its own SMTP login.

    A connection may send only from its domains. Creating, disabling, enabling, rotating
    or deleting it takes effect at the next SMTP login on this machine (the command updates
    its SMTP login file), and within [milter] policy_refresh_seconds on other relay nodes
    (their milter updates theirs). The login file lets logins work while PostgreSQL is down.

    \b
    Example:
      txrelay connection create "Acme GmbH" "Web shop" --domain acme.example
      txrelay connection disable "Web shop" --account "Acme GmbH"
    """


@connection.command("create")
@click.argument("account")
@click.argument("name")
@click.option(
    "--domain",
    "domains",
    multiple=True,
    required=True,
    metavar="D",
    help="A sending domain of ACCOUNT this system may send from (repeatable).",
)
@click.option(
    "--rate-limit",
    type=click.IntRange(min=0),
    metavar="N",
    help="Recipients per hour, counted over a sliding hour (0 = unlimited; default: 25 for "
    "demo accounts, unlimited for paid ones).",
)
@click.option(
    "--sandbox",
    is_flag=True,
    help="A test connection: its mail is checked, signed and rate limited like live mail, "
    "but kept by the relay instead of delivered (read it with 'txrelay messages show ID "
    "--raw'), never billed; it may send from a domain whose DKIM is not yet published.",
)
@json_option
@pass_cli
def create(
    cli: CliContext,
    account: str,
    name: str,
    domains: tuple[str, ...],
    rate_limit: int | None,
    sandbox: bool,
) -> None:
    """Create connection NAME for ACCOUNT and print its SMTP access data once.

    The password is shown only now; store it in the sending system right away.

    \b
    \b
    Examples:
      txrelay connection create "Acme GmbH" "Web shop" --domain acme.example
      txrelay connection create "Acme GmbH" "Shop staging" --domain acme.example --sandbox
    """
    issued = connections.create_connection(cli.db, account, name, domains, rate_limit, sandbox)
    update_login_file(cli)
    _emit_access(cli, issued, "Created connection")


def _emit_access(cli: CliContext, issued: IssuedCredentials, what: str) -> None:
    data = access_view(cli.config, issued.connection, issued.password)
    cli.emit(data, lambda: _print_access(cli.config, issued, what))


def _print_access(config: Config, issued: IssuedCredentials, what: str) -> None:
    found = issued.connection
    click.echo(
        f"{what} {found.name!r} for account {found.account_name!r}.\n"
        "SMTP access data (the password is shown only once):\n"
        f"  host:      {config.smtp.host}\n"
        f"  port:      {config.smtp.port}\n"
        "  security:  STARTTLS (required)\n"
        f"  username:  {found.username}\n"
        f"  password:  {issued.password}\n"
        f"  may send from: {', '.join(found.domains)}"
        + (
            "\n  sandbox:   yes: mail is kept by the relay, not delivered "
            "('txrelay messages search --state sandboxed')"
            if found.sandbox
            else ""
        )
    )


@connection.command("list")
@click.option("--account", metavar="ACCOUNT", help="Only this account's connections.")
@json_option
@pass_cli
def list_(cli: CliContext, account: str | None) -> None:
    """List connections: active or inactive, last use, domains, rate limit.

    \b
    Example:
      txrelay connection list --account "Acme GmbH"
    """
    found = connections.list_connections(cli.db, account)
    rows = [
        (
            c.account_name,
            c.name,
            c.username or "-",
            ("active" if c.enabled else "inactive") + (" sandbox" if c.sandbox else ""),
            short_time(c.last_used_at),
            rate_limit_text(c.rate_limit),
            ",".join(c.domains),
        )
        for c in found
    ]
    cli.emit(
        [connection_view(c) for c in found],
        lambda: click.echo(
            table(
                ("ACCOUNT", "CONNECTION", "USERNAME", "STATE", "LAST USED", "RATE", "DOMAINS"), rows
            )
        ),
    )


@connection.command("show")
@click.argument("name", metavar="NAME_OR_USERNAME")
@ACCOUNT_OPTION
@json_option
@pass_cli
def show(cli: CliContext, name: str, account: str | None) -> None:
    """Show one connection (by name with --account, or by its SMTP user name).

    \b
    Example:
      txrelay connection show "Web shop" --account "Acme GmbH"
    """
    found = connections.find_connection(cli.db, name, account)
    cli.emit(connection_view(found), lambda: _print_connection(found))


def _print_connection(found: Connection, headline: str | None = None) -> None:
    if headline:
        click.echo(headline)
    click.echo(
        f"  account:     {found.account_name}\n"
        f"  connection:  {found.name}\n"
        f"  username:    {found.username or '-'}\n"
        f"  state:       {'active' if found.enabled else 'inactive'}\n"
        f"  rate limit:  {rate_limit_text(found.rate_limit)}\n"
        f"  domains:     {', '.join(found.domains) or '-'}\n"
        f"  bounces:     {found.bounces}\n"
        f"  mode:        {'sandbox (captured, not delivered)' if found.sandbox else 'live'}\n"
        f"  last used:   {short_time(found.last_used_at)}\n"
        f"  created:     {short_time(found.created_at)}"
    )


@connection.command("disable")
@click.argument("name", metavar="NAME_OR_USERNAME")
@ACCOUNT_OPTION
@json_option
@pass_cli
def disable(cli: CliContext, name: str, account: str | None) -> None:
    """Stop a connection: its login and its mail are refused until enabled again. SMTP
    sessions already logged in get 421 "log in again" at their next MAIL.

    \b
    Example:
      txrelay connection disable "Web shop" --account "Acme GmbH"
    """
    _set_enabled(cli, name, account, enabled=False)


@connection.command("enable")
@click.argument("name", metavar="NAME_OR_USERNAME")
@ACCOUNT_OPTION
@json_option
@pass_cli
def enable(cli: CliContext, name: str, account: str | None) -> None:
    """Allow a disabled connection to log in and send again.

    \b
    Example:
      txrelay connection enable "Web shop" --account "Acme GmbH"
    """
    _set_enabled(cli, name, account, enabled=True)


def _set_enabled(cli: CliContext, name: str, account: str | None, *, enabled: bool) -> None:
    changed = connections.set_enabled(cli.db, name, account, enabled)
    update_login_file(cli)
    verb = "Enabled" if enabled else "Disabled"
    cli.emit(
        connection_view(changed),
        lambda: click.echo(
            f"{verb} connection {changed.name!r} of account {changed.account_name!r}."
        ),
    )


def update_login_file(cli: CliContext) -> None:
    """Write this machine's SMTP login file (Dovecot's passdb) from PostgreSQL now, and
    return once Dovecot will read it; other relay nodes' milters follow on their next policy
    refresh. A failure is a note: the change itself is committed."""
    path = Path(cli.config.dovecot.passdb_file)
    try:
        written = sync_passdb_file(cli.db, path)
    except (PassdbFileError, psycopg.Error) as exc:
        click.echo(
            f"note: the SMTP login file on this machine was not updated ({exc}); "
            "the relay nodes' milters apply the change within [milter] "
            "policy_refresh_seconds.",
            err=True,
        )
        return
    if written:
        wait_until_dovecot_sees_it(path)


@connection.command("rotate-password")
@click.argument("name", metavar="NAME_OR_USERNAME")
@ACCOUNT_OPTION
@json_option
@pass_cli
def rotate_password(cli: CliContext, name: str, account: str | None) -> None:
    """Issue a new password (shown once); the old one stops working at once on this
    machine, within [milter] policy_refresh_seconds on other relay nodes. SMTP sessions
    already logged in with the old one get 421 "log in again" at their next MAIL.

    \b
    Example:
      txrelay connection rotate-password "Web shop" --account "Acme GmbH"
    """
    issued = connections.rotate_password(cli.db, name, account, cli.clock.now())
    update_login_file(cli)
    _emit_access(cli, issued, "New password for connection")


@connection.command("delete")
@click.argument("name", metavar="NAME_OR_USERNAME")
@ACCOUNT_OPTION
@json_option
@pass_cli
def delete(cli: CliContext, name: str, account: str | None) -> None:
    """Delete a connection: its login is removed for good, its statistics stay. SMTP
    sessions already logged in get 421 "log in again" at their next MAIL.

    \b
    Example:
      txrelay connection delete "Old shop" --account "Acme GmbH"
    """
    gone = connections.delete_connection(cli.db, name, account, cli.clock.now())
    update_login_file(cli)
    data = {
        "account": gone.account_name,
        "connection": gone.name,
        "id": gone.id,
        "username": gone.username,
        "deleted": True,
    }
    cli.emit(
        data,
        lambda: click.echo(
            f"Deleted connection {gone.name!r} of account {gone.account_name!r}; user name "
            f"{gone.username} can no longer log in. Its ledger entries are kept."
        ),
    )


@connection.command("set")
@click.argument("name", metavar="NAME_OR_USERNAME")
@ACCOUNT_OPTION
@click.option(
    "--rate-limit",
    type=click.IntRange(min=0),
    metavar="N",
    help="Recipients per hour (0 = unlimited).",
)
@click.option(
    "--default-rate-limit",
    is_flag=True,
    help="Go back to the default rate (25 recipients per hour for demo accounts, unlimited "
    "if paid).",
)
@click.option("--add-domain", multiple=True, metavar="D", help="Allow sending from D too.")
@click.option("--remove-domain", multiple=True, metavar="D", help="Stop sending from D.")
@click.option(
    "--bounces",
    type=click.Choice(["relay", "keep"]),
    help="relay (default): the relay gives each message its own return path and learns of "
    "its bounces; keep: the shop's envelope sender stays, for shops that process their "
    "bounces themselves (the relay still sees the bounces of its own delivery attempts).",
)
@click.option(
    "--sandbox/--live",
    default=None,
    help="--sandbox: from now on its mail is kept by the relay, not delivered, not billed; "
    "--live: delivered and billed again.",
)
@json_option
@pass_cli
def set_(
    cli: CliContext,
    name: str,
    account: str | None,
    rate_limit: int | None,
    default_rate_limit: bool,
    add_domain: tuple[str, ...],
    remove_domain: tuple[str, ...],
    bounces: str | None,
    sandbox: bool | None,
) -> None:
    """Change a connection's rate limit, domains, return path or mode (sandbox or live).

    \b
    Examples:
      txrelay connection set "Web shop" --account "Acme GmbH" --rate-limit 500 \\
          --add-domain shop.acme.example
      txrelay connection set "Web shop" --account "Acme GmbH" --bounces keep
      txrelay connection set "Shop staging" --account "Acme GmbH" --live
    """
    change = ConnectionChange(
        rate_limit, default_rate_limit, add_domain, remove_domain, bounces, sandbox
    )
    changed = connections.change_connection(cli.db, name, account, change)
    cli.emit(
        connection_view(changed),
        lambda: _print_connection(changed, f"Updated connection {changed.name!r}."),
    )
