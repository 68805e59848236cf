"""`txrelay postfix`: add txrelay's own services to an existing Postfix, check, undo."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import sys
from collections.abc import Callable
from typing import Any

import click
import psycopg

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.config import config_path
from txrelay.errors import InvalidInput, ServiceUnavailable
from txrelay.provisioning.postfix import (
    CLEANUP_COMMAND,
    DEFAULT_INBOUND_USER,
    INBOUND_LISTS,
    INBOUND_TABLE,
    PostfixPlan,
    PostfixTarget,
    master_option,
    plan_postfix,
    read_settings,
    require_certificate_files,
    resolve_target,
    target_syslog_name,
)
from txrelay.provisioning.postfix_apply import (
    ApplyResult,
    configure_postfix,
    read_state,
    unconfigure_postfix,
)
from txrelay.provisioning.postfix_check import ERROR, check_settings

_listen_option = click.option(
    "--listen",
    metavar="ADDR",
    help="Where txrelay's STARTTLS service listens: a port (2587), a name from /etc/services "
    "(submission = 587), IPV4:PORT (192.0.2.10:587) or [IPV6]:PORT. Default: "
    "[smtp] port. A port another service or process uses is refused.",
)
_implicit_tls_option = click.option(
    "--implicit-tls",
    metavar="ADDR",
    help="Also (or only) a service with implicit TLS (smtpd_tls_wrappermode, as on port "
    "465) at ADDR, same forms as --listen, e.g. --implicit-tls 2465.",
)
_milter_option = click.option(
    "--milter-socket",
    metavar="S",
    help="Milter socket as Postfix writes it (unix:/path or inet:host:port); default: "
    "[milter] socket of the configuration.",
)


_inbound_user_option = click.option(
    "--inbound-user",
    metavar="USER",
    default=DEFAULT_INBOUND_USER,
    show_default=True,
    help="The user Postfix's pipe runs `txrelay inbound deliver` as, for mail to the "
    "bounce domain ([bounce] domain; without one, no inbound service is added). It must "
    "read the configuration and the bounce secret; not root.",
)
_no_inbound_option = click.option(
    "--no-inbound",
    is_flag=True,
    help="Route no bounce domain to txrelay here (no txrelay-inbound service, main.cf "
    "untouched): for a node that is not the bounce domain's MX; its bounces are still read "
    "from Postfix's log.",
)


def _plan_options(cli: CliContext, inbound_user: str, no_inbound: bool) -> dict[str, Any]:
    """Where the inbound pipe finds txrelay and its configuration: this very executable
    and configuration file, as absolute paths; and the sending domains' own return-path
    domains, whose bounces come back here too."""
    if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", inbound_user) or inbound_user == "root":
        raise InvalidInput(
            f"--inbound-user {inbound_user!r} is not a user name Postfix's pipe may run "
            "as (a system user such as txrelay; never root)"
        )
    executable = os.path.abspath(sys.argv[0]) if sys.argv[0].endswith("txrelay") else ""
    if not executable or not os.access(executable, os.X_OK):
        executable = shutil.which("txrelay") or "/usr/local/bin/txrelay"
    return {
        "executable": executable,
        "config_file": os.path.abspath(config_path(cli.config_file)),
        "inbound_user": inbound_user,
        "return_paths": () if no_inbound else _return_path_domains(cli),
        "route_inbound": not no_inbound,
    }


def _return_path_domains(cli: CliContext) -> tuple[str, ...]:
    """The domains' own return-path domains from PostgreSQL. Without PostgreSQL, only
    [bounce] domain is routed (and a warning says to run configure again later)."""
    try:
        rows: list[Any] = cli.db.execute(
            "SELECT DISTINCT return_path FROM sending_domains WHERE return_path IS NOT NULL "
            "ORDER BY return_path"
        ).fetchall()
        cli.db.rollback()
    except (ServiceUnavailable, psycopg.Error) as exc:
        click.echo(
            f"warning: cannot read the domains' own return paths ({exc}); only [bounce] "
            "domain is routed to txrelay: run this again when PostgreSQL answers",
            err=True,
        )
        return ()
    return tuple(row["return_path"] for row in rows)


def _target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--config-directory",
        metavar="DIR",
        help="A Postfix config directory (holding main.cf and master.cf).",
    )(func)
    return click.option(
        "--instance", metavar="NAME", help="A postmulti instance, e.g. postfix-txrelay."
    )(func)


@click.group("postfix")
def postfix() -> None:
    """Plug txrelay into Postfix (main instance, postmulti instance or config directory).

    txrelay adds master.cf services of its own and never changes main.cf or another
    service: `configure` adds them, `check` judges what reaches txrelay's mail,
    `unconfigure` removes them again.

    \b
    Example:
      txrelay postfix configure --listen 2587 --dry-run
    """


@postfix.command("show")
@_listen_option
@_implicit_tls_option
@_milter_option
@_inbound_user_option
@_no_inbound_option
@json_option
@pass_cli
def show(
    cli: CliContext,
    listen: str | None,
    implicit_tls: str | None,
    milter_socket: str | None,
    inbound_user: str,
    no_inbound: bool,
) -> None:
    """Print the master.cf services `postfix configure` would add, and with a bounce
    domain the main.cf lists it appends its table to.

    \b
    Example:
      txrelay postfix show --listen 2587 --implicit-tls 2465
    """
    plan = plan_postfix(
        cli.config,
        listen=listen,
        implicit_tls=implicit_tls,
        milter_socket=milter_socket,
        **_plan_options(cli, inbound_user, no_inbound),
    )
    cli.emit(plan.as_dict(), lambda: _print_plan(plan))


@postfix.command("configure")
@_target_options
@click.option(
    "--dry-run", is_flag=True, help="Print the diff of main.cf and master.cf, change nothing."
)
@_listen_option
@_implicit_tls_option
@_milter_option
@_inbound_user_option
@_no_inbound_option
@json_option
@pass_cli
def configure(
    cli: CliContext,
    instance: str | None,
    config_directory: str | None,
    dry_run: bool,
    listen: str | None,
    implicit_tls: str | None,
    milter_socket: str | None,
    inbound_user: str,
    no_inbound: bool,
) -> None:
    """Add txrelay's own master.cf service(s); other services stay as they are.

    Every setting txrelay needs (its milter, TLS, SASL through txrelay's Dovecot, size
    limit) is an -o override on its own service. A port already used by a master.cf
    service or another process is refused. With [bounce] domain set, mail for it (DSNs,
    complaint reports) goes to txrelay's pipe service txrelay-inbound: its table
    (txrelay-inbound-domains, next to main.cf) is appended to main.cf's relay_domains and
    transport_maps, the admin's entries stay; it arrives on the admin's port-25 service.
    Run configure again after changing the bounce domain. The files are backed up first;
    Postfix's own `postfix check` runs afterwards and the backups are restored if it
    fails. Re-running it changes nothing; `txrelay postfix unconfigure` undoes it. Reload
    Postfix afterwards.

    \b
    Example:
      txrelay postfix configure --listen 2587 --implicit-tls 2465 --dry-run
    """
    require_certificate_files(cli.config)
    target = resolve_target(instance, config_directory)
    plan = plan_postfix(
        cli.config,
        listen=listen,
        implicit_tls=implicit_tls,
        milter_socket=milter_socket,
        syslog_name=target_syslog_name(target),
        **_plan_options(cli, inbound_user, no_inbound),
    )
    result = configure_postfix(target, plan, dry_run=dry_run)
    cli.emit(result.as_dict(), lambda: _print_result(result))
    if plan.inbound is not None and not _user_exists(plan.inbound.user):
        click.echo(
            f"warning: user {plan.inbound.user!r} does not exist on this machine: Postfix "
            "defers mail for the bounce domain until it does (useradd --system "
            f"{plan.inbound.user}), or pass --inbound-user with an existing user",
            err=True,
        )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@postfix.command("unconfigure")
@_target_options
@click.option("--dry-run", is_flag=True, help="Print the diff, change nothing.")
@json_option
@pass_cli
def unconfigure(
    cli: CliContext, instance: str | None, config_directory: str | None, dry_run: bool
) -> None:
    """Remove exactly what `postfix configure` added.

    master.cf and main.cf are left as they were before configure (main.cf byte for byte
    from its backup; if it was edited since, only txrelay's table is taken out of
    relay_domains and transport_maps). Stop sending through txrelay first, then reload
    Postfix afterwards.

    \b
    Example:
      txrelay postfix unconfigure --dry-run
    """
    target = resolve_target(instance, config_directory)
    result = unconfigure_postfix(target, dry_run=dry_run)
    cli.emit(result.as_dict(), lambda: _print_result(result))


@postfix.command("check")
@_target_options
@_listen_option
@_implicit_tls_option
@_milter_option
@json_option
@pass_cli
def check(
    cli: CliContext,
    instance: str | None,
    config_directory: str | None,
    listen: str | None,
    implicit_tls: str | None,
    milter_socket: str | None,
) -> None:
    """Check that Postfix cannot relay txrelay's mail unsigned or unbilled, nor break its
    signatures; exits 1 on any error (warnings alone exit 0).

    Judges txrelay's services (those configure recorded, or --listen/--implicit-tls):
    TLS, AUTH, the milter (also per-milter default_action=accept, no_milters,
    smtpd_milter_maps), content_filter, the cleanup service's size limit; warnings for an
    AUTH rate limit above 10 a minute or none, rate limits without Postfix's anvil service,
    and a cleanup service that lets NUL into messages; TLS session tickets turned off
    in main.cf (smtpd_tls_session_cache_timeout = 0, empty tls_session_ticket_cipher);
    other services
    that log in against txrelay's auth socket without its milter; rewriting on delivery
    (smtp_*_checks, smtp_generic_maps, short smtp_line_length_limit). Global settings
    txrelay cannot change for its own mail only are warnings with the command to run.

    \b
    Example:
      txrelay postfix check --json
    """
    target = resolve_target(instance, config_directory)
    if listen is None and implicit_tls is None:
        listen, implicit_tls = _recorded_listen(target)
    plan = plan_postfix(
        cli.config, listen=listen, implicit_tls=implicit_tls, milter_socket=milter_socket
    )
    found = check_settings(read_settings(target.config_directory, target.label), plan)
    errors = [p for p in found if p.severity == ERROR]
    data = {
        "target": target.label,
        "config_directory": str(target.config_directory),
        "services": [s.key for s in plan.services],
        "ok": not errors,
        "problems": [p.as_dict() for p in errors],
        "warnings": [p.as_dict() for p in found if p.severity != ERROR],
    }

    def human() -> None:
        for problem in found:
            click.echo(problem.describe())
        if not errors:
            click.echo(
                f"Postfix {target.label} ({target.config_directory}): ok for "
                f"{', '.join(s.key for s in plan.services)}"
            )

    cli.emit(data, human)
    if errors:
        click.get_current_context().exit(1)


def _recorded_listen(target: PostfixTarget) -> tuple[str | None, str | None]:
    """The services configure recorded: STARTTLS and implicit TLS, told apart by name."""
    state = read_state(target)
    services = [
        key.removesuffix("/inet")
        for key in (state.services if state else [])
        if key.endswith("/inet")
    ]
    settings = read_settings(target.config_directory, target.label)
    listen = implicit = None
    for name in services:
        if settings.effective(f"{name}/inet", "smtpd_tls_wrappermode") == "yes":
            implicit = name
        else:
            listen = name
    return listen, implicit


def _print_plan(plan: PostfixPlan) -> None:
    if plan.inbound is None:
        click.echo("# main.cf: nothing (txrelay sets everything on its own services)")
    else:
        click.echo("# main.cf: txrelay's table appended to these lists (the admin's stay)")
        for name in INBOUND_LISTS:
            click.echo(f"{name} = ..., {INBOUND_TABLE}")
    click.echo("\n# master.cf")
    for service in plan.services:
        click.echo(service.listen.service + " " + " ".join(service.entry().split()[1:8]))
        for name, value in service.overrides:
            click.echo(f"  {master_option(name, value)}")
    click.echo("txrelay-cleanup " + " ".join(CLEANUP_COMMAND))
    for name, value in plan.cleanup_overrides:
        click.echo(f"  {master_option(name, value)}")
    if plan.inbound is not None:
        click.echo(plan.inbound.entry())
        click.echo(f"# {INBOUND_TABLE}:")
        click.echo(plan.inbound.table(), nl=False)
    click.echo(
        "# The milter's own limits ([limits]): "
        + ", ".join(f"{name} = {value}" for name, value in plan.milter_limits)
    )


def _print_result(result: ApplyResult) -> None:
    click.echo(f"Postfix {result.target.label} ({result.target.config_directory}):")
    if not result.changes and not result.main_changes:
        click.echo("  already configured, nothing to change")
    for service, change in result.changes:
        click.echo(f"  master.cf: {service}: {change}" + (" (dry run)" if result.dry_run else ""))
    for name, change in result.main_changes:
        where = f"main.cf: {name}" if name in INBOUND_LISTS else name
        click.echo(f"  {where}: {change}" + (" (dry run)" if result.dry_run else ""))
    if result.dry_run and result.diff:
        click.echo(result.diff, nl=False)
    for path in result.backups:
        click.echo(f"  backup: {path}")
    for warning in result.warnings:
        click.echo(f"warning: {warning.describe().removeprefix('warning: ')}", err=True)
    if (result.changes or result.main_changes) and not result.dry_run:
        click.echo(f"Now run: postfix -c {result.target.config_directory} reload")
