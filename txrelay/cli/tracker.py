"""`txrelay tracker`: follow Postfix's mail log and record each recipient's outcome."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.store import tracking
from txrelay.tracker.daemon import TrackerDaemon


@click.command("tracker")
@click.option(
    "--once",
    is_flag=True,
    help="Catch up with the log, void unconfirmed mail, run the quota tick, exit.",
)
@click.option(
    "--log-path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Follow this file as Postfix's log (default: [tracker] source and "
    "log_path; auto finds maillog_file, /var/log/mail.log or the journal).",
)
@click.option(
    "--node",
    help="This relay node's name (default [milter] node_name or the "
    "host name; must match what the milter records).",
)
@click.option(
    "--status",
    "show_status",
    is_flag=True,
    help="Show every tracker's position and counters, then exit.",
)
@json_option
@pass_cli
def tracker(
    cli: CliContext, once: bool, log_path: Path | None, node: str | None, show_status: bool
) -> None:
    """Follow Postfix's log where the admin has it (maillog_file, a syslog file such as
    /var/log/mail.log, or the systemd journal: [tracker] source) and mark each recipient
    queued, delivered, deferred or bounced; void what Postfix never queued; expire and renew
    quota; send low-quota reminders every [tracker] tick_interval_seconds.

    \b
    Example:
      txrelay tracker                 # the daemon (systemd: Type=simple)
      txrelay tracker --once          # catch up and exit (cron, tests)
      txrelay tracker --status
    """
    if show_status:
        _status(cli)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    daemon = TrackerDaemon(cli.config, cli.clock, log_path=log_path, node=node)
    if once:
        summary = daemon.once().as_dict()
        summary.update(
            node=daemon.node, log_path=daemon.log_path, source_reason=daemon.source.reason
        )
        cli.emit(summary, lambda: _print_summary(summary))
        return
    daemon.install_signal_handlers()
    daemon.run()


def _print_summary(summary: dict[str, Any]) -> None:
    click.echo(
        f"node {summary['node']}, log {summary['log_path']}: "
        f"{summary['lines_read']} lines read, {summary['unparsed_lines']} not "
        f"understood, {summary['unmatched_events']} without ledger rows, "
        f"{summary['nrcpt_mismatches']} nrcpt mismatches, {summary['voided']} voided"
    )
    for tick in summary["ticks"]:
        click.echo(
            f"quota tick: {len(tick['renewals'])} plan renewals, "
            f"{len(tick['expired'])} blocks expired, "
            f"{len(tick['reminders_sent'])} reminders sent"
        )


def _status(cli: CliContext) -> None:
    rows = tracking.tracker_status(cli.db)

    def human() -> None:
        if not rows:
            click.echo("no tracker has run yet")
        for row in rows:
            where = (
                f"cursor {row['journal_cursor']}"
                if row["journal_cursor"]
                else f"offset {row['byte_offset']}"
            )
            click.echo(
                f"{row['node']} {row['log_path']}: {where}, "
                f"{row['lines_read']} lines, {row['unparsed_lines']} not understood, "
                f"{row['unmatched_events']} unmatched, {row['nrcpt_mismatches']} "
                f"nrcpt mismatches, updated {row['updated_at']:%Y-%m-%d %H:%M:%S}"
            )

    cli.emit(rows, human)
