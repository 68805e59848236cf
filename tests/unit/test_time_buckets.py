"""Bucket edges for `txrelay stats --by`: aligned on the zone's clock, across DST changes,
in zones whose offset is not a whole hour, and bounded in number."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from txrelay.errors import InvalidInput
from txrelay.policy.buckets import MAX_BUCKETS, make_buckets


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def local_starts(width: str, since: str, until: str, zone: str) -> list[str]:
    buckets = make_buckets(width, at(since), at(until), ZoneInfo(zone))
    return [buckets.local(i)[0].isoformat() for i in range(len(buckets))]


def test_hours_in_kathmandu_start_on_its_own_hour() -> None:
    assert local_starts("1h", "2026-03-01T00:20:00+00:00", "2026-03-01T02:00:00+00:00",
                        "Asia/Kathmandu") == [
        "2026-03-01T06:00:00+05:45", "2026-03-01T07:00:00+05:45"]


def test_the_day_clocks_go_forward_in_new_york_has_23_hours() -> None:
    buckets = make_buckets("1d", at("2026-03-08T12:00:00-05:00"), at("2026-03-09T12:00:00-04:00"),
                           ZoneInfo("America/New_York"))
    assert [buckets.edges[i + 1] - buckets.edges[i] for i in range(len(buckets))] == [
        dt.timedelta(hours=23), dt.timedelta(hours=24)]


def test_a_day_without_midnight_starts_at_its_first_moment() -> None:
    # Havana moves its clocks from 00:00 to 01:00 on 2026-03-08.
    assert local_starts("1d", "2026-03-07T12:00:00-05:00", "2026-03-08T12:00:00-04:00",
                        "America/Havana") == [
        "2026-03-07T00:00:00-05:00", "2026-03-08T01:00:00-04:00"]


def test_quarter_hours_skip_the_hour_that_does_not_exist() -> None:
    starts = local_starts("15m", "2026-03-29T00:45:00+00:00", "2026-03-29T01:15:00+00:00",
                          "Europe/Berlin")
    assert starts == ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00"]


def test_a_range_on_bucket_edges_is_not_widened() -> None:
    buckets = make_buckets("1h", at("2026-03-01T10:00:00+00:00"), at("2026-03-01T12:00:00+00:00"),
                           ZoneInfo("UTC"))
    assert (buckets.start, buckets.end, len(buckets)) == (
        at("2026-03-01T10:00:00+00:00"), at("2026-03-01T12:00:00+00:00"), 2)


def test_exactly_the_limit_is_allowed_and_one_more_is_refused() -> None:
    since = at("2026-01-01T00:00:00+00:00")
    assert len(make_buckets("1h", since, since + dt.timedelta(hours=MAX_BUCKETS),
                            ZoneInfo("UTC"))) == MAX_BUCKETS
    with pytest.raises(InvalidInput, match="more than 10000 buckets"):
        make_buckets("1h", since, since + dt.timedelta(hours=MAX_BUCKETS + 1), ZoneInfo("UTC"))


def test_a_century_of_days_is_refused_before_any_edge_is_made() -> None:
    with pytest.raises(InvalidInput, match="more than 10000 buckets"):
        make_buckets("15m", at("1926-01-01T00:00:00+00:00"), at("2026-01-01T00:00:00+00:00"),
                     ZoneInfo("UTC"))
