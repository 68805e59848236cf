"""The monthly usage report as one self-contained HTML page (`billing report --html`): the
dashboard's chart and styles around the billing report's own figures, nothing loaded from
elsewhere and no script, so it reads the same offline, printed or mailed on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from jinja2 import Environment, PackageLoader, select_autoescape

from txrelay.policy.billing import Period
from txrelay.store import quota as quota_store
from txrelay.store.quota import QuotaBlock
from txrelay.web import charts, data
from txrelay.web.data import Timeline

COLUMNS = ("arrived", "delivered", "deferred", "bounced", "complained", "in_flight")


@dataclass(frozen=True)
class MonthlyUsage:
    chart: Timeline  # one bucket per UTC day of the month
    blocks: list[QuotaBlock]  # the blocks that could be used at some time in the month
    now: dt.datetime  # blocks' used and remaining are as of this moment


def monthly_usage(
    conn: psycopg.Connection[Any], account: str, account_id: int, period: Period, now: dt.datetime
) -> MonthlyUsage:
    """Read-only: the month's daily outcomes and the blocks it could draw on."""
    blocks = [
        block
        for block in quota_store.list_blocks(conn, account_id, now)
        if block_overlaps(block, period)
    ]
    return MonthlyUsage(data.month_timeline(conn, account, period), blocks, now)


def block_overlaps(block: QuotaBlock, period: Period) -> bool:
    """Booked before the month ended and not expired before it began."""
    return block.booked_at < period.end and (
        block.expires_at is None or block.expires_at > period.start
    )


def render(billing: dict[str, Any], usage: MonthlyUsage) -> str:
    """The page: `billing` is `billing report --json`'s object, so both show one set of
    figures."""
    svg = (
        None
        if usage.chart.empty
        else charts.outcomes_svg(usage.chart, f"Recipients per day, {billing['period']} (UTC)")
    )
    environment = Environment(
        loader=PackageLoader("txrelay.web", "templates"),
        autoescape=select_autoescape(("html",)),
    )
    return environment.get_template("report.html").render(
        billing=billing, usage=usage, svg=svg, labels=charts.LABELS, columns=COLUMNS
    )
