"""The burn-rate forecast: when an account's quota runs out at its recent rate (no I/O).

One rule, used by the low-quota reminder mail (txrelay/notify.py) and `quota show`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """Billed recipients (voided ones excluded) of the last 24 hours and the last 7 days."""

    last_day: int
    last_week: int

    @property
    def per_day(self) -> float:
        """The faster of the two rates: a burst today matters more than a quiet week."""
        return max(float(self.last_day), self.last_week / 7)


@dataclass(frozen=True)
class Forecast:
    remaining: int
    usage: Usage
    now: dt.datetime

    @property
    def runs_out_at(self) -> dt.datetime | None:
        """When the quota is used up at the current rate (None: no mail lately)."""
        if self.usage.per_day <= 0:
            return None
        return self.now + dt.timedelta(days=self.remaining / self.usage.per_day)

    def sentence(self) -> str:
        """The forecast in words, as the reminder mail and `quota show` print it."""
        runs_out = self.runs_out_at
        if runs_out is None:
            return "No mail was sent in the last 7 days, so there is no run-out date."
        days = (runs_out - self.now).total_seconds() / 86400
        return (
            f"At that rate ({self.usage.per_day:,.0f} mails a day) the quota "
            f"runs out in about {days:,.1f} days, around "
            f"{runs_out:%Y-%m-%d %H:%M} UTC."
        )
