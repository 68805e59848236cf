"""Which ledger rows retention lets go: a pure decision on dates."""

from __future__ import annotations

import datetime as dt


def retention_cutoff(now: dt.datetime, ledger_months: int) -> dt.datetime:
    """Rows accepted before this instant may be deleted: the first day (UTC) of the month
    `ledger_months` months before the one holding `now`. With any value of 1 or more the
    open month and the previous one (whose invoice may still be made) are kept."""
    if ledger_months < 1:
        raise ValueError("ledger_months must be 1 or more")
    utc = now.astimezone(dt.UTC)
    months = utc.year * 12 + (utc.month - 1) - ledger_months
    return dt.datetime(months // 12, months % 12 + 1, 1, tzinfo=dt.UTC)
