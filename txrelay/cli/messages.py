"""`txrelay messages search`: what became of each recipient of matching messages."""

from __future__ import annotations

from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.cli.stats import When, resolve
from txrelay.store import reporting


@click.group("messages")
def messages() -> None:
    """Look up accepted messages and their recipients in the ledger."""


@messages.command("search")
@click.option("--to", "to", metavar="ADDR", help="Recipient address (case-insensitive).")
@click.option("--message-id", metavar="ID", help="Message-ID header, with or without <>.")
@click.option("--account", help="Only this account.")
@click.option("--connection", help="Only connections with this name.")
@click.option("--since", type=When(), help="Accepted at or after (2026-03-01, 24h, 7d).")
@click.option("--until", type=When(), help="Accepted before.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
@pass_cli
def search(
    cli: CliContext,
    to: str | None,
    message_id: str | None,
    account: str | None,
    connection: str | None,
    since: Any,
    until: Any,
    limit: int,
) -> None:
    """Each matching recipient: state (queued, delivered, deferred, bounced, voided), DSN
    and the last event, the kind of its bounce (hard, soft, block; learnt from Postfix's
    log or a DSN) and a spam complaint, newest first.

    \b
    Example:
      txrelay messages search --to customer@example.com --since 7d
      txrelay messages search --message-id '<order-4711@shop.example>' --json
    """
    if not any((to, message_id, account, connection, since)):
        raise click.UsageError(
            "say what to look for: --to, --message-id, --account, --connection or --since"
        )
    now = cli.clock.now()
    if account is not None:
        reporting.require_account(cli.db, account)
    rows = reporting.search_recipients(
        cli.db,
        to=to,
        message_id=message_id,
        connection=connection,
        account=account,
        since=resolve(since, now),
        until=resolve(until, now),
        limit=limit,
    )
    cli.db.commit()
    data = [
        {
            **row,
            **{
                k: row[k].isoformat()
                for k in ("accepted_at", "last_event_at", "complained_at")
                if row[k] is not None
            },
        }
        for row in rows
    ]
    cli.emit(data, lambda: _print(rows))


def _print(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no matching recipients")
        return
    for row in rows:
        click.echo(
            f"{row['accepted_at']:%Y-%m-%d %H:%M:%S} {row['queue_id']} "
            f"{row['recipient']} {row['state']}"
            + (f" dsn={row['dsn']}" if row["dsn"] else "")
            + f" [{row['account']} / {row['connection']}]"
        )
        if row["last_event"]:
            click.echo(f"    {row['last_event']}")
        if row["bounce_kind"]:
            click.echo(f"    {row['bounce_kind']} bounce (from {row['bounce_source']})")
        if row["complained_at"]:
            click.echo(
                f"    complaint ({row['complaint_type'] or 'abuse'}) "
                f"{row['complained_at']:%Y-%m-%d %H:%M:%S}"
            )
