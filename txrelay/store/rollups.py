"""Per-connection 15-minute rollups of the ledger (migration 0043).

The ledger's statement triggers write every change as a delta row, in the transaction that
changes the ledger; `fold` moves the deltas into ledger_rollups (the tracker's tick). A
reader sums ledger_rollups and the deltas not yet folded in one query, so figures read here
agree exactly with the ledger. A range that does not start or end on the 15-minute UTC grid
takes its partial buckets from the ledger itself (at most two quarter hours per connection).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

GRID = dt.timedelta(minutes=15)
_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # txrelay_rollup_bucket's origin
# "Since the beginning": before any ledger row.
BEGINNING = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# The stats cohort, in the order of the rollup columns.
STATS_COLUMNS = ("arrived", "delivered", "deferred", "bounced", "complained", "in_flight")


def grid_floor(moment: dt.datetime) -> dt.datetime:
    """The start of the 15-minute bucket holding `moment`."""
    return moment - (moment - _ORIGIN) % GRID


def grid_ceil(moment: dt.datetime) -> dt.datetime:
    floor = grid_floor(moment)
    return floor if floor == moment else floor + GRID


@dataclass(frozen=True)
class Split:
    """[since, until) as whole buckets [lo, hi) read from the rollups, and up to two
    ledger ranges [since, head_end) and [tail_start, until) for the partial buckets."""

    since: dt.datetime
    head_end: dt.datetime
    lo: dt.datetime
    hi: dt.datetime
    tail_start: dt.datetime
    until: dt.datetime

    def params(self) -> dict[str, dt.datetime]:
        return {
            "since": self.since,
            "head_end": self.head_end,
            "lo": self.lo,
            "hi": self.hi,
            "tail_start": self.tail_start,
            "until": self.until,
        }


def split(since: dt.datetime | None, until: dt.datetime) -> Split:
    start = BEGINNING if since is None else since
    lo, hi = grid_ceil(start), grid_floor(until)
    if lo >= hi:  # within one or two partial buckets: the ledger alone
        return Split(start, until, start, start, until, until)
    return Split(start, lo, lo, hi, hi, until)


# Per connection in `connection_ids`: the stats cohort of recipients accepted in
# [since, until) (see Split). The ledger ranges are each one range of ledger_connection_time.
CONNECTION_SUMS = """
SELECT connection_id, sum(arrived) AS arrived, sum(delivered) AS delivered,
       sum(deferred) AS deferred, sum(bounced) AS bounced, sum(complained) AS complained,
       sum(in_flight) AS in_flight
  FROM (SELECT connection_id, arrived, delivered, deferred, bounced, complained, in_flight
          FROM ledger_rollups
         WHERE connection_id = ANY(%(connection_ids)s) AND bucket >= %(lo)s AND bucket < %(hi)s
        UNION ALL
        SELECT connection_id, arrived, delivered, deferred, bounced, complained, in_flight
          FROM ledger_rollup_deltas
         WHERE connection_id = ANY(%(connection_ids)s) AND bucket >= %(lo)s AND bucket < %(hi)s
        UNION ALL
        SELECT connection_id, 1, (state = 'delivered')::int, (state = 'deferred')::int,
               (state = 'bounced')::int, (complained_at IS NOT NULL)::int,
               (state IN ('accepted', 'queued'))::int
          FROM ledger
         WHERE connection_id = ANY(%(connection_ids)s) AND state <> 'voided'
           AND accepted_at >= %(since)s AND accepted_at < %(head_end)s
        UNION ALL
        SELECT connection_id, 1, (state = 'delivered')::int, (state = 'deferred')::int,
               (state = 'bounced')::int, (complained_at IS NOT NULL)::int,
               (state IN ('accepted', 'queued'))::int
          FROM ledger
         WHERE connection_id = ANY(%(connection_ids)s) AND state <> 'voided'
           AND accepted_at >= %(tail_start)s AND accepted_at < %(until)s) x
 GROUP BY connection_id"""


def connection_sums(
    conn: Conn, connection_ids: list[int], since: dt.datetime | None, until: dt.datetime
) -> dict[int, dict[str, int]]:
    """connection id -> the stats cohort's counts in [since, until) (only connections with
    rows in the range)."""
    if not connection_ids:
        return {}
    rows = conn.execute(
        CONNECTION_SUMS, {"connection_ids": connection_ids} | split(since, until).params()
    ).fetchall()
    return {
        int(row["connection_id"]): {column: int(row[column]) for column in STATS_COLUMNS}
        for row in rows
    }


# Per connection and bucket of `edges` (all on the 15-minute grid: policy.buckets), the
# stats cohort; width_bucket numbers the buckets from 1.
BUCKET_SUMS = """
SELECT connection_id, width_bucket(bucket, %(edges)s::timestamptz[]) - 1 AS bucket,
       sum(arrived) AS arrived, sum(delivered) AS delivered, sum(deferred) AS deferred,
       sum(bounced) AS bounced, sum(complained) AS complained, sum(in_flight) AS in_flight
  FROM (SELECT connection_id, bucket, arrived, delivered, deferred, bounced, complained,
               in_flight
          FROM ledger_rollups
         WHERE connection_id = ANY(%(connection_ids)s)
           AND bucket >= %(start)s AND bucket < %(end)s
        UNION ALL
        SELECT connection_id, bucket, arrived, delivered, deferred, bounced, complained,
               in_flight
          FROM ledger_rollup_deltas
         WHERE connection_id = ANY(%(connection_ids)s)
           AND bucket >= %(start)s AND bucket < %(end)s) x
 GROUP BY 1, 2
HAVING sum(arrived) <> 0 OR sum(complained) <> 0"""


def bucket_sums(
    conn: Conn, connection_ids: list[int], edges: list[dt.datetime]
) -> dict[tuple[int, int], dict[str, int]]:
    """(bucket index, connection id) -> counts, for edges on the 15-minute grid."""
    for edge in edges:
        if grid_floor(edge) != edge:
            raise ValueError(f"bucket edge {edge.isoformat()} is not on the 15-minute grid")
    rows = conn.execute(
        BUCKET_SUMS,
        {
            "edges": edges,
            "connection_ids": connection_ids,
            "start": edges[0],
            "end": edges[-1],
        },
    ).fetchall()
    return {
        (int(row["bucket"]), int(row["connection_id"])): {
            column: int(row[column]) for column in STATS_COLUMNS
        }
        for row in rows
    }


# An account's rows by billing in [since, until) (voided rows included), same split.
ACCOUNT_BILLING = """
SELECT COALESCE(sum(billed_quota), 0)::bigint AS quota,
       COALESCE(sum(billed_void), 0)::bigint AS void
  FROM (SELECT billed_quota, billed_void FROM ledger_rollups
         WHERE account_id = %(account_id)s AND bucket >= %(lo)s AND bucket < %(hi)s
        UNION ALL
        SELECT billed_quota, billed_void FROM ledger_rollup_deltas
         WHERE account_id = %(account_id)s AND bucket >= %(lo)s AND bucket < %(hi)s
        UNION ALL
        SELECT (billing = 'quota')::int, (billing = 'void')::int FROM ledger
         WHERE account_id = %(account_id)s
           AND accepted_at >= %(since)s AND accepted_at < %(head_end)s
        UNION ALL
        SELECT (billing = 'quota')::int, (billing = 'void')::int FROM ledger
         WHERE account_id = %(account_id)s
           AND accepted_at >= %(tail_start)s AND accepted_at < %(until)s) x"""


def account_billing(
    conn: Conn, account_id: int, since: dt.datetime, until: dt.datetime
) -> tuple[int, int]:
    """(rows billed 'quota', rows billed 'void') of the account accepted in [since, until)."""
    row = conn.execute(
        ACCOUNT_BILLING, {"account_id": account_id} | split(since, until).params()
    ).fetchone()
    assert row is not None  # aggregates: always one row
    return int(row["quota"]), int(row["void"])


FOLD = "SELECT txrelay_fold_rollups() AS folded"


def fold(conn: Conn) -> int:
    """Move the deltas into ledger_rollups (one statement); the number of deltas folded."""
    row = conn.execute(FOLD).fetchone()
    assert row is not None
    return int(row["folded"])
