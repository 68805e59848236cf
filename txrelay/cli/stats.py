"""`txrelay stats`: per-connection arrived, delivered, deferred, bounced, and activity."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.store import reporting
from txrelay.store.reporting import ConnectionStats

_RELATIVE = re.compile(r"^(?P<n>\d+)(?P<unit>[mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class When(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A moment: 2026-03-01, 2026-03-01T12:00 (UTC unless an offset is given), or 24h / 7d
    (that long before now)."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.datetime | dt.timedelta):
            return value
        text = str(value).strip()
        relative = _RELATIVE.match(text)
        if relative:
            return dt.timedelta(**{_UNITS[relative["unit"]]: int(relative["n"])})
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is not a date (2026-03-01), a time (2026-03-01T12:00) or a "
                "span before now (24h, 7d)",
                param,
                ctx,
            )
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def resolve(value: dt.datetime | dt.timedelta | None, now: dt.datetime) -> dt.datetime | None:
    if isinstance(value, dt.timedelta):
        return now - value
    return value


@click.command("stats")
@click.option("--account", help="Only this account.")
@click.option("--connection", help="Only connections with this name.")
@click.option("--since", type=When(), help="From this moment (default: all mail).")
@click.option("--until", type=When(), help="Up to this moment (default: now).")
@json_option
@pass_cli
def stats(
    cli: CliContext, account: str | None, connection: str | None, since: Any, until: Any
) -> None:
    """Per connection: recipients arrived (accepted), delivered, deferred, bounced, the
    bounce rate, complaints, recipients refused as suppressed (never arrived, not billed),
    whether the connection is active and when it was last used.

    \b
    Example:
      txrelay stats --account "Acme GmbH" --since 7d
      txrelay stats --since 2026-03-01 --until 2026-04-01 --json
    """
    now = cli.clock.now()
    window = dt.timedelta(days=cli.config.tracker.active_window_days)
    rows = reporting.connection_stats(
        cli.db,
        now=now,
        active_window=window,
        since=resolve(since, now),
        until=resolve(until, now) or now,
        account=account,
        connection=connection,
    )
    cli.db.commit()
    data = [stats_view(row) for row in rows]
    cli.emit(data, lambda: _print_table(rows, window.days))


def stats_view(row: ConnectionStats) -> dict[str, Any]:
    return {
        "account": row.account,
        "connection": row.connection,
        "connection_id": row.connection_id,
        "enabled": row.enabled,
        "deleted": row.deleted,
        "active": row.active,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "arrived": row.arrived,
        "delivered": row.delivered,
        "deferred": row.deferred,
        "bounced": row.bounced,
        "in_flight": row.in_flight,
        "bounce_rate": str(row.bounce_rate),
        "complained": row.complained,
        "suppressed": row.suppressed,
    }


def _print_table(rows: list[ConnectionStats], window_days: int) -> None:
    if not rows:
        click.echo("no connections match")
        return
    header = (
        "ACCOUNT",
        "CONNECTION",
        "ARRIVED",
        "DELIVERED",
        "DEFERRED",
        "BOUNCED",
        "BOUNCE%",
        "COMPLAINED",
        "SUPPRESSED",
        "ACTIVE",
        "LAST USED",
    )
    lines = [header]
    for row in rows:
        state = (
            "yes"
            if row.active
            else ("deleted" if row.deleted else "disabled" if not row.enabled else "idle")
        )
        lines.append(
            (
                row.account,
                row.connection,
                str(row.arrived),
                str(row.delivered),
                str(row.deferred),
                str(row.bounced),
                f"{row.bounce_rate * 100:.2f}",
                str(row.complained),
                str(row.suppressed),
                state,
                f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    click.echo(f"(active = enabled, not deleted, used within {window_days} days)")
