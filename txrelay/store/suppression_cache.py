"""The suppression lists of every account, in this milter node's memory, and the count of
recipients refused for being on one.

At RCPT the milter asks `lookup` (a dict read, no network). A background loop beside the
policy refresh reads what changed in PostgreSQL since its previous read (migration 0019:
the rows written by transactions that read could not see yet), so a suppression added or
removed through any node reaches every node within one interval; while PostgreSQL is down
the lists in memory keep serving. A node that starts during an outage has no list until
PostgreSQL answers (suppressed recipients are accepted meanwhile, and billed).

The same loop adds the refused counts to PostgreSQL in one statement per run, per
connection and 15-minute bucket. What a crash can lose: the counts of the current interval
(at most one interval of refusals; longer while PostgreSQL is down, when they wait here).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Protocol

import psycopg
import psycopg_pool

from txrelay.clock import Clock
from txrelay.policy.suppression import Suppressed
from txrelay.store import suppressions
from txrelay.store.suppressions import Suppression
from txrelay.supervised import SupervisedLoop

log = logging.getLogger("txrelay.milter")
BUCKET_MINUTES = 15

COUNT_SUPPRESSED = (
    "SELECT txrelay_count_suppressed(%(connections)s, %(buckets)s, %(counts)s) AS done"
)


class SuppressionList(Protocol):
    """Which recipients an account's mail no longer goes to, as the milter asks at RCPT."""

    def lookup(self, account_id: int, address: str) -> Suppressed | None:
        """The suppression of this (lower-case) address for the account, if in effect now."""
        ...

    def count_refused(self, connection_id: int) -> None:
        """One recipient of this connection was refused for being suppressed."""
        ...


def bucket_of(moment: dt.datetime) -> dt.datetime:
    """The start of the 15-minute bucket holding `moment`."""
    return moment.replace(
        minute=moment.minute - moment.minute % BUCKET_MINUTES, second=0, microsecond=0
    )


class SuppressionCache:
    """Every account's suppressions in memory, kept fresh by `loop` (see the module)."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, clock: Clock, interval: float) -> None:
        self.pool = pool
        self.clock = clock
        self.entries: dict[tuple[int, str], Suppressed] = {}
        self._change_ids: dict[tuple[int, str], int] = {}  # the row version applied
        self.loaded = False
        self._after: str | None = None  # the previous read's snapshot xmin
        self._counts: dict[tuple[int, dt.datetime], int] = {}
        self._counts_lock = threading.Lock()
        self._read_lock = threading.Lock()  # one read at a time: applied in read order
        self._failing = False
        self.loop = SupervisedLoop(
            "suppression-refresh", max(interval, 0.1), self.poll, last_run=True
        )

    def lookup(self, account_id: int, address: str) -> Suppressed | None:
        entry = self.entries.get((account_id, address))
        if entry is None or entry.active(self.clock.now()):
            return entry
        return None  # expired: it no longer suppresses (the next read drops it)

    def count_refused(self, connection_id: int) -> None:
        key = (connection_id, bucket_of(self.clock.now()))
        with self._counts_lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def poll(self) -> None:
        """The loop's work: add the counts, then read the changes. PostgreSQL away is logged
        once; the lists and the counts wait in memory until it answers."""
        try:
            self.flush_counts()
            self.refresh()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if not self._failing:
                log.warning(
                    "event=suppression_refresh_failed error=%r (serving the lists in memory: "
                    "%d suppressions)",
                    exc.__class__.__name__,
                    len(self.entries),
                )
            self._failing = True
            return
        if self._failing:
            log.info("event=suppression_refresh_recovered suppressions=%d", len(self.entries))
        self._failing = False

    def refresh(self) -> int:
        """Read what changed since the previous read (everything in effect, the first time);
        the number of rows read."""
        with self._read_lock:
            return self._read(self.clock.now())

    def _read(self, now: dt.datetime) -> int:
        with self.pool.connection() as conn:
            after = suppressions.snapshot_xmin(conn)  # before the read: see CHANGED_…
            if self._after is None:
                rows = suppressions.load_active(conn, now)
            else:
                rows = suppressions.load_changed(conn, self._after)
            conn.rollback()
        self._apply(rows, now)
        self._after = after
        if not self.loaded:
            self.loaded = True
            log.info("event=suppressions_loaded suppressions=%d", len(self.entries))
        return len(rows)

    def _apply(self, rows: list[Suppression], now: dt.datetime) -> None:
        """Hold each row as it is now. A change read for the first time is logged (without
        the address): when this node learnt of it, for the admin and the tests."""
        for row in rows:
            key = (row.account_id, row.address)
            active = row.active(now)
            if active:
                self.entries[key] = Suppressed(row.reason, row.created_at, row.expires_at, row.dsn)
            else:
                self.entries.pop(key, None)
            if self.loaded and self._change_ids.get(key) != row.change_id:
                log.info(
                    "event=suppression_changed account=%d change_id=%d state=%s reason=%s",
                    row.account_id,
                    row.change_id,
                    "suppressed" if active else "lifted",
                    row.reason,
                )
            self._change_ids[key] = row.change_id

    def flush_counts(self) -> None:
        """Add the counts gathered since the last flush in one statement; kept for the next
        try when it fails."""
        with self._counts_lock:
            counts, self._counts = self._counts, {}
        if not counts:
            return
        try:
            with self.pool.connection() as conn:
                conn.execute(
                    COUNT_SUPPRESSED,
                    {
                        "connections": [c for c, _ in counts],
                        "buckets": [b for _, b in counts],
                        "counts": list(counts.values()),
                    },
                )
                conn.commit()
        except BaseException:
            with self._counts_lock:
                for key, n in counts.items():
                    self._counts[key] = self._counts.get(key, 0) + n
            raise

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()  # its last run adds the counts not yet added
