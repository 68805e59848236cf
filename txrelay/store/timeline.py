"""Statistics over time: per bucket and connection, counts from each source of figures.

Each source is one query that returns counts per (bucket, connection);
they are merged here: the ledger's columns, suppressed and sandboxed are three CountSources.
The ledger source reads the ledger's 15-minute rollups (store.rollups, migration 0043)
behind the same signature it had when it read the ledger itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from txrelay.errors import NotFound
from txrelay.policy.buckets import Buckets
from txrelay.store import rollups
from txrelay.store.reporting import require_account

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

# (bucket index, connection id) -> column -> count
Counts = dict[tuple[int, int], dict[str, int]]


@dataclass(frozen=True)
class Scope:
    """What the figures are about: buckets, and the connections (by id) to count."""

    buckets: Buckets
    connection_ids: tuple[int, ...]


@dataclass(frozen=True)
class CountSource:
    """One source of figures: the columns it fills and the query that fills them."""

    columns: tuple[str, ...]
    count: Callable[[Conn, Scope], Counts]


@dataclass(frozen=True)
class ConnectionRef:
    connection_id: int
    account: str
    connection: str


@dataclass(frozen=True)
class BucketStats:
    start: dt.datetime  # on the zone's clock
    end: dt.datetime
    account: str
    connection: str
    connection_id: int
    counts: Mapping[str, int]

    @property
    def bounce_rate(self) -> Decimal:
        """Bounced / arrived, as a fraction with 4 places (0 without mail)."""
        arrived = self.counts.get("arrived", 0)
        if not arrived:
            return Decimal("0.0000")
        return (Decimal(self.counts.get("bounced", 0)) / Decimal(arrived)).quantize(
            Decimal("0.0001")
        )


# The connections of `txrelay stats`: live ones always, deleted ones only when they have
# mail, suppressed refusals or sandbox captures in the range (so a chart of a deleted
# connection's past still shows, also once `txrelay db prune` deleted its ledger rows: the
# rollups keep it).
SELECT_CONNECTIONS = """
SELECT c.id AS connection_id, a.name AS account, c.name AS connection
  FROM connections c
  JOIN accounts a ON a.id = c.account_id
 WHERE (%(account)s::text IS NULL OR a.name = %(account)s)
   AND (%(connection)s::text IS NULL OR c.name = %(connection)s)
   AND (c.deleted_at IS NULL
        OR EXISTS (SELECT 1 FROM ledger_rollups r WHERE r.connection_id = c.id
                      AND r.bucket >= %(start)s AND r.bucket < %(end)s)
        OR EXISTS (SELECT 1 FROM ledger_rollup_deltas r WHERE r.connection_id = c.id
                      AND r.bucket >= %(start)s AND r.bucket < %(end)s)
        OR EXISTS (SELECT 1 FROM sandbox_messages s WHERE s.connection_id = c.id
                      AND s.captured_at >= %(start)s AND s.captured_at < %(end)s)
        OR EXISTS (SELECT 1 FROM suppressed_counts s WHERE s.connection_id = c.id
                      AND s.bucket >= %(start)s AND s.bucket < %(end)s))
 ORDER BY a.name, c.name, c.id"""

LEDGER_COLUMNS = rollups.STATS_COLUMNS


def ledger_counts(conn: Conn, scope: Scope) -> Counts:
    """Per bucket and connection, the recipients that arrived in the bucket (voided ones
    never reached Postfix's queue) and what became of them: the same cohort as `txrelay
    stats`, from the 15-minute rollups (every bucket edge is on their grid)."""
    if not scope.connection_ids:
        return {}
    return rollups.bucket_sums(conn, list(scope.connection_ids), list(scope.buckets.edges))


# A sandbox connection's recipients, in the bucket their message was captured in: never
# delivered nor billed, so never in the ledger's columns.
SANDBOX_COUNTS = """
SELECT s.connection_id, width_bucket(s.captured_at, %(edges)s::timestamptz[]) - 1 AS bucket,
       sum(cardinality(s.recipients)) AS sandboxed
  FROM sandbox_messages s
 WHERE s.connection_id = ANY(%(connection_ids)s)
   AND s.captured_at >= %(start)s AND s.captured_at < %(end)s
 GROUP BY 1, 2"""


def sandbox_counts(conn: Conn, scope: Scope) -> Counts:
    return _column_counts(conn, scope, SANDBOX_COUNTS, "sandboxed")


# Recipients the milter refused at RCPT because they are on the account's suppression list
# (never arrived, never billed), as `txrelay stats` counts them: by the 15-minute bucket of
# the refusal, a grid every bucket edge is on.
SUPPRESSED_COUNTS = """
SELECT s.connection_id, width_bucket(s.bucket, %(edges)s::timestamptz[]) - 1 AS bucket,
       sum(s.refused) AS suppressed
  FROM suppressed_counts s
 WHERE s.connection_id = ANY(%(connection_ids)s)
   AND s.bucket >= %(start)s AND s.bucket < %(end)s
 GROUP BY 1, 2"""


def suppressed_counts(conn: Conn, scope: Scope) -> Counts:
    return _column_counts(conn, scope, SUPPRESSED_COUNTS, "suppressed")


def _column_counts(conn: Conn, scope: Scope, query: str, column: str) -> Counts:
    """One column per (bucket, connection) from a query over the scope's buckets."""
    rows = conn.execute(
        query,
        {
            "edges": list(scope.buckets.edges),
            "connection_ids": list(scope.connection_ids),
            "start": scope.buckets.start,
            "end": scope.buckets.end,
        },
    ).fetchall()
    return {
        (int(row["bucket"]), int(row["connection_id"])): {column: int(row[column])} for row in rows
    }


SOURCES: tuple[CountSource, ...] = (
    CountSource(LEDGER_COLUMNS, ledger_counts),
    CountSource(("suppressed",), suppressed_counts),
    CountSource(("sandboxed",), sandbox_counts),
)


def columns(sources: Sequence[CountSource] = SOURCES) -> tuple[str, ...]:
    return tuple(column for source in sources for column in source.columns)


def stats_over_time(
    conn: Conn,
    buckets: Buckets,
    *,
    account: str | None,
    connection: str | None,
    sources: Sequence[CountSource] = SOURCES,
) -> list[BucketStats]:
    """Every bucket for every connection in scope, ordered by connection then time; a bucket
    without mail has zeros (a chart has no gaps)."""
    if account is not None:
        require_account(conn, account)
    refs = [
        ConnectionRef(int(row["connection_id"]), row["account"], row["connection"])
        for row in conn.execute(
            SELECT_CONNECTIONS,
            {
                "account": account,
                "connection": connection,
                "start": buckets.start,
                "end": buckets.end,
            },
        ).fetchall()
    ]
    if connection is not None and not refs:
        raise NotFound(
            f"no connection named {connection!r}"
            + (f" in account {account!r}" if account else "")
            + "; see 'txrelay connection list'"
        )
    scope = Scope(buckets, tuple(ref.connection_id for ref in refs))
    merged: Counts = {}
    for source in sources:
        for key, counts in source.count(conn, scope).items():
            merged.setdefault(key, {}).update(counts)
    zeros = dict.fromkeys(columns(sources), 0)
    result = []
    for ref in refs:
        for index in range(len(buckets)):
            start, end = buckets.local(index)
            counts = zeros | merged.get((index, ref.connection_id), {})
            result.append(
                BucketStats(start, end, ref.account, ref.connection, ref.connection_id, counts)
            )
    return result
