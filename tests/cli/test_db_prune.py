"""`txrelay db prune`: rows older than [retention] ledger_months go, the open and previous
month never do, and the rollups keep every figure of `stats` and `billing report`."""

from __future__ import annotations

import datetime as dt

import psycopg

from tests.cli.billing_fixtures import sender_with_outcomes
from tests.cli.conftest import Txrelay
from txrelay.clock import FixedClock
from txrelay.web.data import account_timeline


def _counts(db: psycopg.Connection, account_id: int) -> tuple[int, int]:
    row = db.execute("SELECT (SELECT count(*) FROM ledger WHERE account_id = %(a)s) AS l, "
                     "(SELECT count(*) FROM messages WHERE account_id = %(a)s) AS m",
                     {"a": account_id}).fetchone()
    assert row is not None
    return int(row["l"]), int(row["m"])  # type: ignore[call-overload]


def _figures(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("last_used_at", "active")}


def test_prune_deletes_rows_past_the_retention_and_stats_keep_their_figures(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str) -> None:
    clock.current = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
    old, _ = sender_with_outcomes(db, f"{unique}o", dt.datetime(2025, 10, 31, 23, 50,
                                                                tzinfo=dt.UTC))
    kept, _ = sender_with_outcomes(db, f"{unique}k", dt.datetime(2025, 11, 1, 0, 0,
                                                                 tzinfo=dt.UTC))
    before = txrelay("stats", "--account", old.account, "--since", "2025-10-01",
                     "--until", "2025-11-01", "--json").json()

    dry = txrelay("db", "prune", "--dry-run", "--json").json()
    assert dry["cutoff"] == "2025-11-01T00:00:00+00:00" and dry["ledger_months"] == 13
    assert dry["dry_run"] is True and dry["ledger_rows"] >= 4 and dry["messages"] >= 1
    assert _counts(db, old.account_id) == (4, 1)  # a dry run deletes nothing

    result = txrelay("db", "prune")
    assert result.exit_code == 0, result.error
    assert "ledger rows" in result.stdout and "2025-11-01" in result.stdout
    assert _counts(db, old.account_id) == (0, 0)
    assert _counts(db, kept.account_id) == (4, 1)  # the first day of the kept months
    after = txrelay("stats", "--account", old.account, "--since", "2025-10-01",
                    "--until", "2025-11-01", "--json").json()
    # Every figure; the last use shown came from the deleted rows (the milter's own note of
    # it, connections.last_used_at, is not made by these fixtures).
    assert [_figures(row) for row in after] == [_figures(row) for row in before]
    assert after[0]["arrived"] == 4
    assert txrelay("db", "prune", "--json").json()["ledger_rows"] == 0  # again: nothing


def test_the_open_and_previous_month_are_kept_even_with_one_month(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str,
        monkeypatch) -> None:
    clock.current = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
    previous, _ = sender_with_outcomes(db, unique, dt.datetime(2026, 11, 1, 0, 0,
                                                               tzinfo=dt.UTC))
    monkeypatch.setenv("TXRELAY_RETENTION_LEDGER_MONTHS", "1")
    assert txrelay("db", "prune", "--json").json()["cutoff"] == "2026-11-01T00:00:00+00:00"
    assert _counts(db, previous.account_id) == (4, 1)
    monkeypatch.setenv("TXRELAY_RETENTION_LEDGER_MONTHS", "0")
    result = txrelay("db", "prune")
    assert result.exit_code == 1 and "retention.ledger_months" in result.error


def test_the_dashboards_chart_finds_the_first_mail_of_pruned_months_in_the_rollups(
        txrelay: Txrelay, db: psycopg.Connection, clock: FixedClock, unique: str,
        monkeypatch) -> None:
    """Pruned with one month kept, then shown with 13 (the retention raised since): the
    chart starts at the first mail's day, read from the rollups, with the figures."""
    clock.current = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
    old, _ = sender_with_outcomes(db, unique, dt.datetime(2026, 9, 10, 8, 5, tzinfo=dt.UTC))
    monkeypatch.setenv("TXRELAY_RETENTION_LEDGER_MONTHS", "1")
    assert txrelay("db", "prune").exit_code == 0
    assert _counts(db, old.account_id) == (0, 0)
    chart = account_timeline(db, old.account, old.account_id, "1d", "3650d", clock.current, 13)
    assert chart.buckets[0].start == dt.datetime(2026, 9, 10, tzinfo=dt.UTC)
    assert chart.total("arrived") == 4
    assert chart.notes == [
        "The ledger keeps 13 closed months of mail before this one ([retention] ledger_months "
        "= 13): the chart starts at 2025-11-01.",
        "This account's first mail arrived at 2026-09-10 08:00 UTC (its quarter hour): the "
        "chart starts there."]
    # With the retention the prune used, the chart starts at its cutoff: no mail left in it.
    chart = account_timeline(db, old.account, old.account_id, "1d", "3650d", clock.current, 1)
    assert chart.buckets[0].start == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert chart.empty and "chart starts at 2026-11-01." in chart.notes[0]
