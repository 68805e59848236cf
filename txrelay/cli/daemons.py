"""Long-running commands: `txrelay milter` runs the relay milter in the foreground."""

from __future__ import annotations

import logging
import sys

import click

from txrelay.cli.context import CliContext, pass_cli


@click.command("milter")
@click.option(
    "--socket",
    "socket_spec",
    metavar="S",
    help="Milter socket (unix:/path or inet:port@host); default [milter] socket.",
)
@pass_cli
def milter(cli: CliContext, socket_spec: str | None) -> None:
    """Run the milter in the foreground (logs to stderr, stops on SIGTERM). systemd runs it
    as txrelay-milter.service.

    \b
    Example:
      txrelay milter
      txrelay milter --socket inet:9900@127.0.0.1
    """
    from txrelay.milter.server import run

    config = cli.config
    if socket_spec and not socket_spec.startswith(("unix:", "local:", "inet:", "inet6:")):
        raise click.BadParameter(
            "use unix:/path/milter.sock or inet:9900@127.0.0.1", param_hint="--socket"
        )
    logging.basicConfig(
        stream=sys.stderr,
        level=config.milter.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    run(config, cli.clock, socket_spec)
