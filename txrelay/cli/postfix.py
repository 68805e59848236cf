"""`txrelay postfix`: show and apply txrelay's settings to an existing Postfix."""

from __future__ import annotations

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.provisioning.postfix import (
    ConfigureResult,
    PostfixPlan,
    check_postfix,
    configure_postfix,
    plan_postfix,
    resolve_target,
)

_listen_option = click.option(
    "--listen", metavar="ADDR",
    help="master.cf name of the submission service: 'submission' (port 587, the default "
         "when [smtp] port is 587), a port, or HOST:PORT such as 127.0.0.1:10587.")
_milter_option = click.option(
    "--milter-socket", metavar="S",
    help="Milter socket as Postfix writes it (unix:/path or inet:host:port); default: "
         "[milter] socket of the configuration.")


@click.group("postfix")
def postfix() -> None:
    """Plug txrelay into Postfix (main instance, postmulti instance or config directory)."""


@postfix.command("show")
@_listen_option
@_milter_option
@json_option
@pass_cli
def show(cli: CliContext, listen: str | None, milter_socket: str | None) -> None:
    """Print the settings `postfix configure` would apply."""
    plan = plan_postfix(cli.config, listen=listen, milter_socket=milter_socket)
    cli.emit(plan.as_dict(), lambda: _print_plan(plan))


@postfix.command("configure")
@click.option("--instance", metavar="NAME", help="A postmulti instance, e.g. postfix-txrelay.")
@click.option("--config-directory", metavar="DIR",
              help="A Postfix config directory (holding main.cf and master.cf).")
@click.option("--dry-run", is_flag=True, help="Print the changes, change nothing.")
@_listen_option
@_milter_option
@json_option
@pass_cli
def configure(cli: CliContext, instance: str | None, config_directory: str | None,
              dry_run: bool, listen: str | None, milter_socket: str | None) -> None:
    """Apply txrelay's settings with postconf (backs up main.cf and master.cf first).

    Adds the submission service (STARTTLS and SASL via txrelay's Dovecot required, the
    txrelay milter) and the main.cf milter and size settings; prints each change. Reload
    Postfix afterwards (postfix -c DIR reload).
    """
    target = resolve_target(instance, config_directory)
    plan = plan_postfix(cli.config, listen=listen, milter_socket=milter_socket)
    result = configure_postfix(target, plan, dry_run=dry_run)
    cli.emit(_result_dict(result), lambda: _print_result(result))


@postfix.command("check")
@click.option("--instance", metavar="NAME", help="A postmulti instance, e.g. postfix-txrelay.")
@click.option("--config-directory", metavar="DIR",
              help="A Postfix config directory (holding main.cf and master.cf).")
@_listen_option
@_milter_option
@json_option
@pass_cli
def check(cli: CliContext, instance: str | None, config_directory: str | None,
          listen: str | None, milter_socket: str | None) -> None:
    """Check that Postfix cannot relay mail unsigned or unbilled, nor break signatures.

    Prints one line per problem with what to do, and exits 1 if there is any. Checks
    milter_default_action, non_smtpd_milters, milter_macro_defaults, MIME output conversion,
    rewriting after signing (smtp_*_checks, smtp_generic_maps, content_filter, short
    smtp_line_length_limit) and the submission service's TLS, AUTH and milter settings.
    """
    target = resolve_target(instance, config_directory)
    plan = plan_postfix(cli.config, listen=listen, milter_socket=milter_socket)
    problems = check_postfix(target, plan)
    data = {"target": target.label, "config_directory": str(target.config_directory),
            "ok": not problems,
            "problems": [{"where": p.where, "setting": p.setting, "value": p.value,
                          "fix": p.fix} for p in problems]}

    def human() -> None:
        for problem in problems:
            click.echo(problem.describe())
        if not problems:
            click.echo(f"Postfix {target.label} ({target.config_directory}): ok")

    cli.emit(data, human)
    if problems:
        click.get_current_context().exit(1)


def _print_plan(plan: PostfixPlan) -> None:
    click.echo("# main.cf")
    for name, value in plan.main:
        click.echo(f"{name} = {value}")
    for name, value in plan.main_if_unset:
        click.echo(f"{name} = {value}    # only when not set already")
    click.echo("\n# master.cf")
    click.echo(plan.service_entry)
    for name, value in plan.service_overrides:
        click.echo(f"  -o {name}={value}")


def _result_dict(result: ConfigureResult) -> dict[str, object]:
    return {
        "target": result.target.label,
        "config_directory": str(result.target.config_directory),
        "dry_run": result.dry_run,
        "changes": [{"file": c.where, "setting": c.name, "old": c.old, "new": c.new}
                    for c in result.changes],
        "backups": [str(path) for path in result.backups],
        "warnings": result.warnings,
    }


def _print_result(result: ConfigureResult) -> None:
    verb = "would change" if result.dry_run else "changed"
    click.echo(f"Postfix {result.target.label} ({result.target.config_directory}):")
    if not result.changes:
        click.echo("  already configured, nothing to change")
    for change in result.changes:
        click.echo(f"  {verb} {change.describe()}")
    for path in result.backups:
        click.echo(f"  backup: {path}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.changes and not result.dry_run:
        click.echo(f"Now run: postfix -c {result.target.config_directory} reload")
