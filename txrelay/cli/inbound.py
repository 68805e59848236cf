"""`txrelay inbound`: mail that comes back to the bounce domain (DSNs, complaint reports).

`deliver` is what Postfix's pipe service txrelay-inbound runs for each such mail (added by
`txrelay postfix configure` when [bounce] domain is set); `stats` counts what came back.
"""

from __future__ import annotations

import datetime as dt
import sys
import syslog
from pathlib import Path
from typing import Any, BinaryIO

import click
import psycopg

from txrelay.bounce_secret import read_bounce_secret
from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.cli.stats import When, resolve
from txrelay.errors import TxRelayError
from txrelay.store import database
from txrelay.store import inbound as store

# sysexits.h, as Postfix's pipe(8) reads them: 0 delivered (handled or dropped on purpose),
# EX_TEMPFAIL: Postfix keeps the mail and tries again later.
EX_OK = 0
EX_TEMPFAIL = 75
_CHUNK = 65536


@click.group("inbound")
def inbound() -> None:
    """Mail that comes back to the bounce domain: DSNs and complaint (ARF) reports.

    Postfix hands each mail for [bounce] domain to `txrelay inbound deliver` (the
    txrelay-inbound pipe service that `txrelay postfix configure` adds). A DSN to a
    message's return path marks its failed recipients bounced; a complaint report to the
    CFBL address records a complaint; both suppress the recipient as the rules say.
    Anything else is dropped and counted, never forwarded.

    \b
    Example:
      txrelay inbound stats --since 7d
    """


@inbound.command("deliver")
@click.option("--sender", default="", metavar="ADDR", help="The envelope sender (${sender}).")
@click.argument("recipients", nargs=-1, required=True, metavar="RECIPIENT...")
@pass_cli
def deliver(cli: CliContext, sender: str, recipients: tuple[str, ...]) -> None:
    """Read one mail from standard input and record what it reports, for each envelope
    RECIPIENT (Postfix's pipe service txrelay-inbound runs this).

    Exit status for Postfix's pipe: 0 when the mail was handled or dropped (dropped mail
    is counted in `txrelay inbound stats` and logged to the mail log), 75 (EX_TEMPFAIL)
    when PostgreSQL, the configuration or the bounce secret cannot be read: Postfix keeps
    the mail and tries again later (recording is idempotent, nothing counts twice).

    \b
    Example (by hand, to test a DSN file):
      txrelay inbound deliver -- b-TOKEN@bounces.example < dsn.eml
    """
    status = _deliver(cli, sender, recipients, sys.stdin.buffer)
    click.get_current_context().exit(status)


def _deliver(cli: CliContext, sender: str, recipients: tuple[str, ...], stream: BinaryIO) -> int:
    syslog.openlog("txrelay/inbound", syslog.LOG_PID, syslog.LOG_MAIL)
    names = ",".join(recipients)
    try:
        limit = cli.config.bounce.inbound_max_size
        first = read_mail(stream, sender, recipients[0], limit)
        secret = read_bounce_secret(_secret_path(cli))
        conn = database.connect(cli.config.database.for_daemons())
    except TxRelayError as error:
        _log(syslog.LOG_WARNING, f"event=inbound_tempfail recipient={names} reason={error}")
        return EX_TEMPFAIL
    try:
        rules = cli.config.suppression.rules()
        for recipient in recipients:
            mail = store.Inbound(sender, recipient, first.raw, first.size)
            result = store.handle(conn, mail, secret, cli.clock.now(), rules=rules)
            _log(
                syslog.LOG_INFO if result.outcome != store.DROPPED else syslog.LOG_NOTICE,
                f"event=inbound kind={result.kind} outcome={result.outcome} "
                f"reason={result.reason or '-'} recipient={recipient} size={mail.size} "
                f"txn={result.txn_id or '-'} recipients={result.recipients}",
            )
    except psycopg.Error as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        _log(syslog.LOG_WARNING, f"event=inbound_tempfail recipient={names} reason={reason}")
        return EX_TEMPFAIL
    finally:
        conn.close()
    return EX_OK


def read_mail(stream: BinaryIO, sender: str, recipient: str, limit: int) -> store.Inbound:
    """At most `limit` bytes are kept: a bigger mail is read to its end (so that Postfix's
    pipe sees it taken) and counted, but not kept."""
    data = stream.read(limit + 1)
    size = len(data)
    if size <= limit:
        return store.Inbound(sender, recipient, data, size)
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
    return store.Inbound(sender, recipient, None, size)


def _secret_path(cli: CliContext) -> Path:
    return Path(cli.config.bounce.secret_file)


def _log(priority: int, line: str) -> None:
    """One line to the mail log (syslog, facility mail) and to stderr."""
    syslog.syslog(priority, line)
    click.echo(line, err=True)


@inbound.command("stats")
@click.option("--since", type=When(), default="24h", show_default=True, help="From this moment.")
@json_option
@pass_cli
def stats(cli: CliContext, since: Any) -> None:
    """Mail that came back, counted by kind (dsn, arf, other), outcome (recorded,
    duplicate, delayed, dropped) and the reason it was dropped (forged_token,
    unknown_message, unknown_recipient, wrong_account, malformed, too_big, not_ours, ...).

    \b
    Example:
      txrelay inbound stats --since 7d --json
    """
    now = cli.clock.now()
    start = resolve(since, now) or now - dt.timedelta(days=1)
    rows = store.counts(cli.db, start)
    cli.db.commit()
    data = {"since": start.isoformat(), "counts": rows}

    def human() -> None:
        if not rows:
            click.echo(f"no mail came back since {start:%Y-%m-%d %H:%M} UTC")
            return
        click.echo(f"{'KIND':<6} {'OUTCOME':<10} {'REASON':<18} {'MAILS':>7} {'RECIPIENTS':>10}")
        for row in rows:
            click.echo(
                f"{row['kind']:<6} {row['outcome']:<10} {row['reason'] or '-':<18} "
                f"{row['mails']:>7} {row['recipients']:>10}"
            )

    cli.emit(data, human)
