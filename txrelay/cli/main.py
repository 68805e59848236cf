"""The root `txrelay` command: global options, error handling, and the command groups."""

from __future__ import annotations

import importlib
import sys

import click

from txrelay import __version__
from txrelay.cli.context import CliContext
from txrelay.errors import InvalidInput, NotFound, ServiceUnavailable, TxRelayError

# (module, attribute) of each command or group; each noun lives in its own module.
COMMANDS = [
    ("txrelay.cli.init", "init"),
    ("txrelay.cli.db", "db"),
    ("txrelay.cli.account", "account"),
    ("txrelay.cli.domain", "domain"),
    ("txrelay.cli.keys", "keys"),
    ("txrelay.cli.connection", "connection"),
    ("txrelay.cli.quota", "quota"),
    ("txrelay.cli.postfix", "postfix"),
    ("txrelay.cli.dovecot", "dovecot"),
    ("txrelay.cli.daemons", "milter"),
    ("txrelay.cli.sink", "sink"),
    ("txrelay.cli.tracker", "tracker"),
    ("txrelay.cli.stats", "stats"),
    ("txrelay.cli.messages", "messages"),
    ("txrelay.cli.suppression", "suppression"),
    ("txrelay.cli.billing", "billing"),
    ("txrelay.cli.journal", "journal"),
    ("txrelay.cli.inbound", "inbound"),
    ("txrelay.cli.bounce", "bounce"),
    ("txrelay.cli.settings", "config_group"),
    ("txrelay.cli.webhook", "webhook"),
    ("txrelay.cli.webhook", "webhooks"),
    ("txrelay.cli.apply", "apply"),
    ("txrelay.cli.apply", "export"),
    ("txrelay.cli.web", "web"),
]
# Modules that attach subcommands to a group defined elsewhere (imported for that effect).
EXTENSIONS = ["txrelay.cli.quota_lifecycle", "txrelay.cli.domain_moves"]

# The exit status of each error class, so that a script can tell "retry later" from "fix
# the command" (docs/cli.md). The first class the error is an instance of decides; 2 is
# click's usage error (unknown option, missing or malformed argument).
EXIT_OTHER_ERROR = 1  # any other TxRelayError (conflict, configuration…); a failed check
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID_INPUT = 4
EXIT_SERVICE_UNAVAILABLE = 5
EXIT_STATUS: tuple[tuple[type[TxRelayError], int], ...] = (
    (NotFound, EXIT_NOT_FOUND),
    (InvalidInput, EXIT_INVALID_INPUT),
    (ServiceUnavailable, EXIT_SERVICE_UNAVAILABLE),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    envvar="TXRELAY_CONFIG",
    help="Configuration file (default /etc/txrelay/txrelay.toml; env TXRELAY_CONFIG).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.version_option(__version__, prog_name="txrelay")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, as_json: bool) -> None:
    """txrelay: a transactional e-mail relay for Postfix.

    Provision accounts, sending domains (DKIM + List-Help), connections (SMTP
    credentials) and quota; run the milter that authorises, throttles, signs and
    accounts every message.

    \b
    Exit status: 0 done, 1 another error (or a check found problems), 2 usage,
    3 not found, 4 invalid input, 5 PostgreSQL or Redis unavailable (retry later).

    \b
    Example:
      txrelay account list
      txrelay --json quota show "Acme GmbH"
      txrelay --config /etc/txrelay/staging.toml db status
    """
    cli_context = CliContext(config_file, as_json)
    ctx.obj = cli_context
    ctx.call_on_close(cli_context.close)


def _register() -> None:
    for module_name, attribute in COMMANDS:
        cli.add_command(getattr(importlib.import_module(module_name), attribute))
    for module_name in EXTENSIONS:
        importlib.import_module(module_name)


_register()


def exit_status(error: TxRelayError) -> int:
    """The documented exit status for an error (EXIT_STATUS; 1 for any other)."""
    return next(
        (status for kind, status in EXIT_STATUS if isinstance(error, kind)), EXIT_OTHER_ERROR
    )


def main() -> None:
    """Entry point: any TxRelayError becomes one line on stderr and its class's exit
    status (EXIT_STATUS)."""
    try:
        status = cli.main(standalone_mode=False, prog_name="txrelay")
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except TxRelayError as exc:
        click.echo(f"txrelay: error: {exc}", err=True)
        sys.exit(exit_status(exc))
    # ctx.exit(n) inside a command returns n here instead of raising (standalone_mode=False).
    sys.exit(status if isinstance(status, int) else 0)
