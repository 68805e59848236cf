"""`txrelay stats`: per-connection arrived, delivered, deferred, bounced, and activity, for
one period or per time bucket (--by)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.policy.buckets import WIDTHS, make_buckets
from txrelay.store import reporting, timeline
from txrelay.store.reporting import ConnectionStats
from txrelay.store.timeline import BucketStats

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
        return moment  # without an offset: in the command's zone (resolve)


class Zone(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """An IANA time zone name: UTC, Europe/Berlin, America/New_York."""

    name = "ZONE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, ZoneInfo):
            return value
        try:
            return ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(
                f"{value!r} is not a time zone this system knows (e.g. UTC, Europe/Berlin)",
                param,
                ctx,
            )


def resolve(
    value: dt.datetime | dt.timedelta | None, now: dt.datetime, zone: dt.tzinfo = dt.UTC
) -> dt.datetime | None:
    """A --since/--until value as a moment: a span counts back from now, a date or time
    without an offset is on the clock of `zone` (UTC unless --tz says otherwise)."""
    if isinstance(value, dt.timedelta):
        return now - value
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=zone)
    return value


# --by without --since: this far back from --until.
DEFAULT_SPAN = {
    "15m": dt.timedelta(hours=24),
    "1h": dt.timedelta(days=7),
    "1d": dt.timedelta(days=30),
}


@click.command("stats")
@click.option("--account", help="Only this account.")
@click.option("--connection", help="Only connections with this name.")
@click.option(
    "--since",
    type=When(),
    help="From this moment (default: all mail; with --by: 24h for 15m, 7d for 1h, 30d for 1d).",
)
@click.option("--until", type=When(), help="Up to this moment (default: now).")
@click.option(
    "--by",
    "width",
    type=click.Choice(list(WIDTHS)),
    help="One row per connection and bucket of this length (15m, 1h, 1d), empty ones included.",
)
@click.option(
    "--tz",
    "zone",
    type=Zone(),
    default="UTC",
    show_default=True,
    help="Time zone of the buckets (a day starts at its midnight) and of dates without offset.",
)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (a header line, then one per row).")
@json_option
@pass_cli
def stats(
    cli: CliContext,
    account: str | None,
    connection: str | None,
    since: Any,
    until: Any,
    width: str | None,
    zone: ZoneInfo,
    as_csv: bool,
) -> None:
    """Per connection: recipients arrived (accepted), delivered, deferred, bounced, the
    bounce rate, complaints, recipients refused as suppressed (never arrived, not billed),
    recipients of sandbox mail (captured by the relay, not delivered, not billed; never in
    the other columns),
    whether the connection is active and when it was last used.

    With --by, the same figures (and complaints) per connection and time bucket, for charts
    and spreadsheets: every bucket of the range is listed, with zeros when no mail arrived.
    A recipient counts in the bucket it arrived in, with what became of it since.

    \b
    Example:
      txrelay stats --account "Acme GmbH" --since 7d
      txrelay stats --since 2026-03-01 --until 2026-04-01 --json
      txrelay stats --by 1h --since 2026-03-01 --until 2026-03-02 --tz Europe/Berlin --csv
    """
    if as_csv and cli.as_json:
        raise click.UsageError("choose one of --json and --csv")
    now = cli.clock.now()
    if width is not None:
        _stats_by(cli, width, zone, account, connection, since, until, now, as_csv)
        return
    window = dt.timedelta(days=cli.config.tracker.active_window_days)
    rows = reporting.connection_stats(
        cli.db,
        now=now,
        active_window=window,
        since=resolve(since, now, zone),
        until=resolve(until, now, zone) or now,
        account=account,
        connection=connection,
    )
    cli.db.commit()
    data = [stats_view(row) for row in rows]
    if as_csv:
        _print_csv(data)
    else:
        cli.emit(data, lambda: _print_table(rows, window.days))


def _stats_by(
    cli: CliContext,
    width: str,
    zone: ZoneInfo,
    account: str | None,
    connection: str | None,
    since: Any,
    until: Any,
    now: dt.datetime,
    as_csv: bool,
) -> None:
    end = resolve(until, now, zone) or now
    start = resolve(since, now, zone) or end - DEFAULT_SPAN[width]
    buckets = make_buckets(width, start, end, zone)
    rows = timeline.stats_over_time(cli.db, buckets, account=account, connection=connection)
    cli.db.commit()
    data = [bucket_view(row) for row in rows]
    if as_csv:
        _print_csv(data)
    else:
        cli.emit(data, lambda: _print_buckets(rows))


def bucket_view(row: BucketStats) -> dict[str, Any]:
    return {
        "start": row.start.isoformat(),
        "end": row.end.isoformat(),
        "account": row.account,
        "connection": row.connection,
        "connection_id": row.connection_id,
        **row.counts,
        "bounce_rate": str(row.bounce_rate),
    }


def _print_csv(data: Sequence[dict[str, Any]]) -> None:
    if not data:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(data[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    click.echo(text.getvalue(), nl=False)


def _print_buckets(rows: list[BucketStats]) -> None:
    if not rows:
        click.echo("no connections match")
        return
    names = list(rows[0].counts)
    header = ("START", "ACCOUNT", "CONNECTION", *(n.upper().replace("_", " ") for n in names))
    lines = [(*header, "BOUNCE%")]
    for row in rows:
        lines.append(
            (
                f"{row.start:%Y-%m-%d %H:%M%z}",
                row.account,
                row.connection,
                *(str(row.counts[n]) for n in names),
                f"{row.bounce_rate * 100:.2f}",
            )
        )
    _print_columns(lines)


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
        "sandboxed": row.sandboxed,
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
        "SANDBOXED",
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
                str(row.sandboxed),
                state,
                f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never",
            )
        )
    _print_columns(lines)
    click.echo(f"(active = enabled, not deleted, used within {window_days} days)")


def _print_columns(lines: Sequence[Sequence[str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
