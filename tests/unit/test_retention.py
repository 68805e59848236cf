"""The retention cutoff: whole UTC months, never the open or the previous one."""

from __future__ import annotations

import datetime as dt

import pytest

from txrelay.policy.retention import retention_cutoff

UTC = dt.UTC


@pytest.mark.parametrize(("now", "months", "cutoff"), [
    (dt.datetime(2026, 12, 4, 12, 0, tzinfo=UTC), 13, dt.datetime(2025, 11, 1, tzinfo=UTC)),
    (dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC), 1, dt.datetime(2025, 12, 1, tzinfo=UTC)),
    (dt.datetime(2026, 3, 31, 23, 59, tzinfo=UTC), 2, dt.datetime(2026, 1, 1, tzinfo=UTC)),
    (dt.datetime(2026, 3, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))), 1,
     dt.datetime(2026, 3, 1, tzinfo=UTC)),  # 04:30 UTC on April 1st: April is open
    (dt.datetime(2026, 12, 4, tzinfo=UTC), 36, dt.datetime(2023, 12, 1, tzinfo=UTC)),
])
def test_the_cutoff_is_the_first_of_a_month_utc(now: dt.datetime, months: int,
                                                 cutoff: dt.datetime) -> None:
    assert retention_cutoff(now, months) == cutoff


def test_zero_months_would_touch_the_open_month_and_is_refused() -> None:
    with pytest.raises(ValueError):
        retention_cutoff(dt.datetime(2026, 12, 4, tzinfo=UTC), 0)
