"""The root `txrelay` command: global options, error handling, and the command groups."""

from __future__ import annotations

import importlib
import sys

import click

from txrelay import __version__
from txrelay.cli.context import CliContext
from txrelay.errors import TxRelayError

# (module, attribute) of each command or group; each noun lives in its own module.
COMMANDS = [
    ("txrelay.cli.init", "init"),
    ("txrelay.cli.db", "db"),
    ("txrelay.cli.account", "account"),
    ("txrelay.cli.domain", "domain"),
    ("txrelay.cli.connection", "connection"),
    ("txrelay.cli.quota", "quota"),
    ("txrelay.cli.postfix", "postfix"),
    ("txrelay.cli.dovecot", "dovecot"),
    ("txrelay.cli.daemons", "milter"),
    ("txrelay.cli.sink", "sink"),
    ("txrelay.cli.tracker", "tracker"),
    ("txrelay.cli.stats", "stats"),
    ("txrelay.cli.messages", "messages"),
    ("txrelay.cli.billing", "billing"),
]
# Modules that attach subcommands to a group defined elsewhere (imported for that effect).
EXTENSIONS = ["txrelay.cli.quota_lifecycle"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_file", metavar="FILE", envvar="TXRELAY_CONFIG",
              help="Configuration file (default /etc/txrelay/txrelay.toml; "
                   "env TXRELAY_CONFIG).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.version_option(__version__, prog_name="txrelay")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, as_json: bool) -> None:
    """txrelay: a transactional e-mail relay for Postfix.

    Provision accounts, sending domains (DKIM + List-Help), connections (SMTP
    credentials) and quota; run the milter that authorises, throttles, signs and
    accounts every message.
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


def main() -> None:
    """Entry point: any TxRelayError becomes one line on stderr and exit status 1."""
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
        sys.exit(1)
    # ctx.exit(n) inside a command returns n here instead of raising (standalone_mode=False).
    sys.exit(status if isinstance(status, int) else 0)
