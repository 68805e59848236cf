"""Time as an injectable dependency, so expiry, renewal and periods are testable."""

from __future__ import annotations

import datetime as dt
import os
from typing import Protocol


class Clock(Protocol):
    """Where the code asks the time: SystemClock in the daemons, FixedClock in tests."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class FixedClock:
    """A clock the tests set and advance."""

    def __init__(self, start: dt.datetime) -> None:
        self.current = start

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, delta: dt.timedelta) -> None:
        self.current += delta


def default_clock() -> Clock:
    """The system clock, or a fixed one when TXRELAY_TEST_NOW (ISO 8601) is set by a test."""
    fixed = os.environ.get("TXRELAY_TEST_NOW")
    if fixed:
        return FixedClock(dt.datetime.fromisoformat(fixed))
    return SystemClock()
