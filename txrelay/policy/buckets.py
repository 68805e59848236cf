"""Time buckets for statistics over time: edges aligned on a time zone's clock, across DST."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from txrelay.errors import InvalidInput

# Bucket name -> its length on the local clock, in minutes.
WIDTHS = {"15m": 15, "1h": 60, "1d": 24 * 60}
MAX_BUCKETS = 10_000
# Every time zone offset in use is a whole number of quarter hours (India +05:30, Nepal
# +05:45, Lord Howe's 30-minute DST): a UTC quarter-hour grid holds every local edge.
_GRID = dt.timedelta(minutes=15)


@dataclass(frozen=True)
class Buckets:
    """Consecutive buckets: edges[i] <= t < edges[i + 1] is bucket i (UTC instants)."""

    width: str
    zone: ZoneInfo
    edges: tuple[dt.datetime, ...]

    def __len__(self) -> int:
        return len(self.edges) - 1

    @property
    def start(self) -> dt.datetime:
        return self.edges[0]

    @property
    def end(self) -> dt.datetime:
        return self.edges[-1]

    def local(self, index: int) -> tuple[dt.datetime, dt.datetime]:
        """Bucket `index` as (start, end) on the zone's clock, with their offsets."""
        return self.edges[index].astimezone(self.zone), self.edges[index + 1].astimezone(self.zone)


def make_buckets(width: str, since: dt.datetime, until: dt.datetime, zone: ZoneInfo) -> Buckets:
    """The buckets that cover [since, until): the first holds `since`, the last holds the
    moment just before `until` (both are rounded out to bucket edges). A day starts at the
    zone's midnight, so a day of a DST change has 23 or 25 hours; an hour repeated when the
    clocks go back is two buckets with the same local time and different offsets."""
    if width not in WIDTHS:
        raise InvalidInput(f"unknown bucket {width!r}: use one of {', '.join(WIDTHS)}")
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must carry a time zone")
    if since >= until:
        raise InvalidInput(
            f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})"
        )
    minutes = WIDTHS[width]
    # A local day or hour lasts at most 25 h / 90 min: this bound holds before any edge is made.
    estimate = (until - since) / dt.timedelta(minutes=minutes * (25 / 24 if minutes > 60 else 1))
    if estimate > MAX_BUCKETS + 2:
        raise InvalidInput(_too_many(width, since, until))
    edges = tuple(
        _days(since, until, zone) if width == "1d" else _grid(since, until, zone, minutes)
    )
    if len(edges) - 1 > MAX_BUCKETS:
        raise InvalidInput(_too_many(width, since, until))
    return Buckets(width, zone, edges)


def _too_many(width: str, since: dt.datetime, until: dt.datetime) -> str:
    return (
        f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} in buckets of {width} is more than "
        f"{MAX_BUCKETS} buckets: choose a larger bucket or a shorter range"
    )


def _is_edge(moment: dt.datetime, zone: ZoneInfo, minutes: int) -> bool:
    local = moment.astimezone(zone)
    return (local.hour * 60 + local.minute) % minutes == 0 and local.second == 0


def _grid(
    since: dt.datetime, until: dt.datetime, zone: ZoneInfo, minutes: int
) -> Iterator[dt.datetime]:
    """Edges of 15 min / 1 h buckets: the quarter hours of UTC whose local time is a multiple
    of the width, from the last one at or before `since` to the first at or after `until`."""
    moment = dt.datetime.fromtimestamp(
        since.timestamp() // _GRID.total_seconds() * _GRID.total_seconds(), dt.UTC
    )
    while not _is_edge(moment, zone, minutes):
        moment -= _GRID
    yield moment
    while moment < until:
        moment += _GRID
        while not _is_edge(moment, zone, minutes):
            moment += _GRID
        yield moment


def _days(since: dt.datetime, until: dt.datetime, zone: ZoneInfo) -> Iterator[dt.datetime]:
    """Local midnights (a midnight skipped by a DST change: the first moment of that day)."""
    day = since.astimezone(zone).date()
    edge = _midnight(day, zone)
    yield edge
    while edge < until:
        day += dt.timedelta(days=1)
        edge = _midnight(day, zone)
        yield edge


def _midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    moment = dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)
    while moment.astimezone(zone).date() < day:  # a day that does not start at 00:00
        moment += _GRID
    return moment
