"""What each dashboard page shows, read from PostgreSQL through the store's own reports (the
same figures as `txrelay stats`, `quota show`, `suppression list`, `webhook deliveries`)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from txrelay.config import Config
from txrelay.policy.billing import Period
from txrelay.policy.buckets import WIDTHS, Buckets, make_buckets
from txrelay.policy.forecast import Forecast, Usage
from txrelay.policy.retention import retention_cutoff
from txrelay.store import lifecycle, reporting, suppressions, timeline, webhooks
from txrelay.store import quota as quota_store
from txrelay.store.domains import SendingDomain, list_domains
from txrelay.store.quota import QuotaBlock
from txrelay.store.reporting import ConnectionStats

Conn = psycopg.Connection[Any]

# A chart of more bars than this is unreadable (and heavy on a phone): longer ranges are
# shortened to this many buckets, with a note that says to choose a larger bucket.
MAX_CHART_BUCKETS = 750
RANGES = {"15m": "24h", "1h": "7d", "1d": "30d"}  # default range per bucket width
_SPAN = re.compile(r"^(?P<n>\d{1,6})(?P<unit>[hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}
OUTCOMES = ("delivered", "deferred", "bounced", "in_flight")  # together: arrived
LIST_LIMIT = 100


def rate(part: int, whole: int) -> Decimal:
    """part / whole with 4 places (0 without mail), as `txrelay stats` computes it."""
    if not whole:
        return Decimal("0.0000")
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001"))


@dataclass(frozen=True)
class AccountRow:
    name: str
    disabled: bool
    remaining: int
    paid: bool
    forecast: Forecast
    arrived: int  # last 24 h
    bounced: int
    complained: int
    bounce_rate: Decimal
    complaint_rate: Decimal
    bounce_warning: bool
    complaint_warning: bool


def all_accounts(conn: Conn, config: Config, now: dt.datetime) -> list[AccountRow]:
    """Every live account: quota, forecast, and the last 24 hours' volume and rates."""
    from txrelay.store.accounts import account_summaries

    per_account: dict[str, list[ConnectionStats]] = {}
    for stats in reporting.connection_stats(
        conn,
        now=now,
        active_window=dt.timedelta(days=config.tracker.active_window_days),
        since=now - dt.timedelta(hours=24),
        until=now,
        account=None,
        connection=None,
    ):
        per_account.setdefault(stats.account, []).append(stats)
    rows = []
    for summary in account_summaries(conn, now):
        account = summary.account
        last_day, last_week = lifecycle.usage(conn, account.id, now)
        figures = per_account.get(account.name, [])
        arrived = sum(s.arrived for s in figures)
        bounced = sum(s.bounced for s in figures)
        complained = sum(s.complained for s in figures)
        bounce_rate, complaint_rate = rate(bounced, arrived), rate(complained, arrived)
        rows.append(
            AccountRow(
                name=account.name,
                disabled=account.disabled_at is not None,
                remaining=summary.quota_remaining,
                paid=summary.paid,
                forecast=Forecast(summary.quota_remaining, Usage(last_day, last_week), now),
                arrived=arrived,
                bounced=bounced,
                complained=complained,
                bounce_rate=bounce_rate,
                complaint_rate=complaint_rate,
                bounce_warning=arrived > 0
                and bounce_rate >= Decimal(str(config.web.bounce_warning_rate)),
                complaint_warning=arrived > 0
                and complaint_rate >= Decimal(str(config.web.complaint_warning_rate)),
            )
        )
    return rows


@dataclass(frozen=True)
class Bucket:
    start: dt.datetime
    end: dt.datetime
    counts: dict[str, int]


@dataclass(frozen=True)
class Timeline:
    width: str
    span: str
    buckets: list[Bucket]
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(b.counts["arrived"] for b in self.buckets)

    def total(self, column: str) -> int:
        return sum(b.counts[column] for b in self.buckets)


def parse_span(text: str) -> dt.timedelta | None:
    match = _SPAN.match(text.strip())
    if match is None:
        return None
    return dt.timedelta(**{_UNITS[match["unit"]]: int(match["n"])})


# The quarter hour of the account's first mail, from the rollups: they outlive `db prune`.
FIRST_MAIL = """
SELECT min(first) AS first
  FROM (SELECT min(bucket) AS first FROM ledger_rollups
         WHERE account_id = %(id)s AND arrived > 0
        UNION ALL
        SELECT min(bucket) FROM ledger_rollup_deltas
         WHERE account_id = %(id)s AND arrived > 0) AS firsts"""


def account_timeline(
    conn: Conn,
    account: str,
    account_id: int,
    width: str,
    span_text: str,
    now: dt.datetime,
    ledger_months: int,
) -> Timeline:
    """The account's outcomes per bucket over the last `span_text` (24h, 7d, 90d…) up to now,
    summed over its connections. A range reaching before the retention ([retention]
    ledger_months) starts there; a range longer than the bucket's default that reaches
    before the account's first mail starts at that mail's quarter hour; one of more than
    MAX_CHART_BUCKETS buckets is shortened; each says so in a note."""
    notes: list[str] = []
    if width not in WIDTHS:
        notes.append(f"Unknown bucket {width!r}: showing buckets of 1h.")
        width = "1h"
    span = parse_span(span_text)
    if span is None or span <= dt.timedelta(0):
        notes.append(f"Unknown range {span_text!r}: showing the default, {RANGES[width]}.")
        span_text = RANGES[width]
        span = parse_span(span_text)
        assert span is not None
    since = now - span
    kept_from = retention_cutoff(now, ledger_months)
    if since < kept_from:
        notes.append(
            f"The ledger keeps {ledger_months} closed months of mail before this one "
            f"([retention] ledger_months = {ledger_months}): the chart starts at "
            f"{kept_from:%Y-%m-%d}."
        )
        since = kept_from
    first = conn.execute(FIRST_MAIL, {"id": account_id}).fetchone()
    first_mail: dt.datetime | None = first["first"] if first else None
    default = parse_span(RANGES[width])
    assert default is not None
    # Only a range longer than the bucket's default is cut to the data: a day's chart of an
    # account that started an hour ago still spans the day.
    if first_mail is not None and span > default and since < first_mail:
        notes.append(
            f"This account's first mail arrived at {first_mail:%Y-%m-%d %H:%M} "
            "UTC (its quarter hour): the chart starts there."
        )
        since = first_mail
    longest = dt.timedelta(minutes=WIDTHS[width] * MAX_CHART_BUCKETS)
    if now - since > longest:
        notes.append(
            f"A chart holds at most {MAX_CHART_BUCKETS} buckets of {width}: it shows the "
            f"last {MAX_CHART_BUCKETS}. Choose a larger bucket to see further back."
        )
        since = now - longest
    # A first mail stamped by a node whose clock runs ahead must not make an empty range.
    since = min(since, now - dt.timedelta(minutes=WIDTHS[width]))
    buckets: Buckets = make_buckets(width, since, now, ZoneInfo("UTC"))
    return Timeline(width, span_text, account_buckets(conn, account, buckets), notes)


def month_timeline(conn: Conn, account: str, period: Period) -> Timeline:
    """The account's outcomes per UTC day of the billing month `period`."""
    buckets = make_buckets("1d", period.start, period.end, ZoneInfo("UTC"))
    return Timeline("1d", period.label, account_buckets(conn, account, buckets))


def account_buckets(conn: Conn, account: str, buckets: Buckets) -> list[Bucket]:
    """The account's outcomes per bucket, summed over its connections."""
    per_connection = timeline.stats_over_time(conn, buckets, account=account, connection=None)
    merged: list[Bucket] = []
    for index in range(len(buckets)):
        start, end = buckets.local(index)
        merged.append(Bucket(start, end, dict.fromkeys(timeline.columns(), 0)))
    count = len(buckets)
    for position, row in enumerate(per_connection):
        bucket = merged[position % count]
        for column, value in row.counts.items():
            bucket.counts[column] += value
    return merged


@dataclass(frozen=True)
class AccountPage:
    name: str
    account_id: int
    disabled: bool
    remaining: int
    paid: bool
    forecast: Forecast
    blocks: list[QuotaBlock]
    chart: Timeline
    burn: Timeline  # recipients per day over the last 30 days: what used the quota
    connections: list[ConnectionStats]
    domains: list[SendingDomain]
    suppressions: list[suppressions.Suppression]
    webhooks: list[tuple[webhooks.Webhook, list[dict[str, Any]]]]


SELECT_ACCOUNT = "SELECT id, disabled_at FROM accounts WHERE name = %(name)s AND deleted_at IS NULL"


def account_id(conn: Conn, name: str) -> int | None:
    row = conn.execute(SELECT_ACCOUNT, {"name": name}).fetchone()
    return None if row is None else int(row["id"])


def account_page(
    conn: Conn, config: Config, name: str, ident: int, width: str, span: str, now: dt.datetime
) -> AccountPage:
    remaining, paid = quota_store.quota_rules(conn, ident, now)
    last_day, last_week = lifecycle.usage(conn, ident, now)
    hooks = [
        (hook, webhooks.deliveries(conn, hook.id, False, 20))
        for hook in webhooks.list_webhooks(conn, ident)
    ]
    disabled = conn.execute(SELECT_ACCOUNT, {"name": name}).fetchone()
    months = config.retention.ledger_months
    return AccountPage(
        name=name,
        account_id=ident,
        disabled=bool(disabled and disabled["disabled_at"] is not None),
        remaining=remaining,
        paid=paid,
        forecast=Forecast(remaining, Usage(last_day, last_week), now),
        blocks=quota_store.list_blocks(conn, ident, now),
        chart=account_timeline(conn, name, ident, width, span, now, months),
        burn=account_timeline(conn, name, ident, "1d", RANGES["1d"], now, months),
        connections=reporting.connection_stats(
            conn,
            now=now,
            active_window=dt.timedelta(days=config.tracker.active_window_days),
            since=now - dt.timedelta(hours=24),
            until=now,
            account=name,
            connection=None,
        ),
        domains=list_domains(conn, ident),
        suppressions=suppressions.list_active(conn, ident, now, reason=None, limit=LIST_LIMIT),
        webhooks=hooks,
    )


SEARCH_FIELDS = ("to", "message_id", "sender", "state")


def search(conn: Conn, account: str | None, query: dict[str, str]) -> list[dict[str, Any]]:
    """Recipients matching the search form (newest first, at most LIST_LIMIT)."""
    values = {key: (query.get(key) or "").strip() or None for key in SEARCH_FIELDS}
    return reporting.search_recipients(
        conn,
        to=values["to"],
        message_id=values["message_id"],
        connection=None,
        account=account,
        since=None,
        until=None,
        limit=LIST_LIMIT,
        sender=values["sender"],
        state=values["state"],
    )
