"""The milter's suppression lists: the in-memory store of the fast ring and the PostgreSQL
cache follow the same cases; the cache's incremental read misses no change whatever order
writers commit in, keeps serving while PostgreSQL is down, and adds the refused counts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.memory_store import MemorySuppressions
from tests.milter.conftest import DEAD_DATABASE
from tests.store.tracking_fixtures import Sender, make_sender
from txrelay.clock import FixedClock, SystemClock
from txrelay.store import database, suppressions
from txrelay.store.suppression_cache import SuppressionCache, bucket_of

NOW = dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class World:
    """One SuppressionList implementation and how a test changes what it should hold."""

    list: Any
    suppress: Callable[..., None]
    remove: Callable[[int, str], None]
    sync: Callable[[], None]  # what the milter's loop does between two RCPTs
    counted: Callable[[int], int]  # refused recipients counted for a connection


@pytest.fixture(params=["memory", "postgresql"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "memory":
        memory = MemorySuppressions(SystemClock())

        def memory_suppress(account_id: int, address: str, reason: str = "hard_bounce",
                            expires_at: dt.datetime | None = None) -> None:
            memory.suppress(account_id, address, reason, expires_at=expires_at)

        yield World(memory, memory_suppress, memory.remove, lambda: None,
                    lambda c: sum(n for (conn_id, _), n in memory.counts.items()
                                  if conn_id == c))
        return
    pool: Any = request.getfixturevalue("pool")
    db: psycopg.Connection[Any] = request.getfixturevalue("db")
    cache = SuppressionCache(pool, SystemClock(), 60)
    cache.refresh()

    def real_suppress(account_id: int, address: str, reason: str = "hard_bounce",
                      expires_at: dt.datetime | None = None) -> None:
        suppressions.suppress(db, account_id, address, reason, dt.datetime.now(dt.UTC),
                              expires_at=expires_at, dsn="5.1.1")

    def real_remove(account_id: int, address: str) -> None:
        suppressions.remove(db, account_id, address, dt.datetime.now(dt.UTC))

    def counted(connection_id: int) -> int:
        row = db.execute("SELECT COALESCE(sum(refused), 0) AS n FROM suppressed_counts "
                         "WHERE connection_id = %s", (connection_id,)).fetchone()
        return int(row["n"])  # type: ignore[index]

    yield World(cache, real_suppress, real_remove, cache.poll, counted)


@pytest.fixture()
def sender(db: psycopg.Connection[Any], unique: str) -> Sender:
    return make_sender(db, unique)


def test_a_suppressed_address_is_found_with_its_reason_and_others_are_not(
        world: World, sender: Sender) -> None:
    world.suppress(sender.account_id, "gone@x.test")
    world.sync()
    found = world.list.lookup(sender.account_id, "gone@x.test")
    assert found is not None and found.reason == "hard_bounce" and found.dsn == "5.1.1"
    assert found.since <= dt.datetime.now(dt.UTC)
    assert world.list.lookup(sender.account_id, "other@x.test") is None
    assert world.list.lookup(sender.account_id + 100000, "gone@x.test") is None


def test_removal_and_expiry_end_a_suppression(world: World, sender: Sender) -> None:
    world.suppress(sender.account_id, "gone@x.test")
    world.suppress(sender.account_id, "brief@x.test", "soft_bounces",
                   dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    world.suppress(sender.account_id, "past@x.test", "soft_bounces",
                   dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    world.sync()
    assert world.list.lookup(sender.account_id, "brief@x.test") is not None
    assert world.list.lookup(sender.account_id, "past@x.test") is None
    world.remove(sender.account_id, "gone@x.test")
    world.sync()
    assert world.list.lookup(sender.account_id, "gone@x.test") is None
    # Suppressed again after its removal (a new bounce): found again.
    world.suppress(sender.account_id, "gone@x.test")
    world.sync()
    assert world.list.lookup(sender.account_id, "gone@x.test") is not None


def test_refusals_are_counted_per_connection(world: World, sender: Sender) -> None:
    for _ in range(3):
        world.list.count_refused(sender.connection_id)
    world.sync()
    assert world.counted(sender.connection_id) == 3
    world.list.count_refused(sender.connection_id)
    world.sync()
    assert world.counted(sender.connection_id) == 4


def test_a_change_committed_after_a_later_one_is_not_missed(
        pool: Any, database_url: str, sender: Sender) -> None:
    """Writer A takes its change id first but commits after writer B; the read between the
    two commits sees only B. The next read still gets A."""
    cache = SuppressionCache(pool, SystemClock(), 60)
    cache.refresh()
    with psycopg.connect(database_url) as a, psycopg.connect(database_url) as b:
        suppressions.suppress(a, sender.account_id, "first@x.test", "manual", NOW)
        suppressions.suppress(b, sender.account_id, "second@x.test", "manual", NOW)
        b.commit()
        cache.refresh()
        assert cache.lookup(sender.account_id, "second@x.test") is not None
        assert cache.lookup(sender.account_id, "first@x.test") is None  # not committed yet
        a.commit()
    cache.refresh()
    assert cache.lookup(sender.account_id, "first@x.test") is not None


def test_while_postgresql_is_down_the_lists_keep_serving_and_counts_wait(
        pool: Any, dead_pool: Any, db: psycopg.Connection[Any], sender: Sender) -> None:
    cache = SuppressionCache(pool, SystemClock(), 60)
    suppressions.suppress(db, sender.account_id, "gone@x.test", "hard_bounce", NOW)
    cache.poll()
    cache.pool = dead_pool
    cache.count_refused(sender.connection_id)
    cache.poll()  # logs once, raises nothing
    assert cache.lookup(sender.account_id, "gone@x.test") is not None
    cache.pool = pool
    cache.poll()
    row = db.execute("SELECT COALESCE(sum(refused), 0) AS n FROM suppressed_counts "
                     "WHERE connection_id = %s", (sender.connection_id,)).fetchone()
    assert row is not None and row["n"] == 1


def test_counts_go_to_fifteen_minute_buckets(pool: Any, db: psycopg.Connection[Any],
                                             sender: Sender) -> None:
    clock = FixedClock(dt.datetime(2026, 12, 1, 10, 14, 59, tzinfo=dt.UTC))
    cache = SuppressionCache(pool, clock, 60)
    cache.count_refused(sender.connection_id)
    clock.current = dt.datetime(2026, 12, 1, 10, 15, 0, tzinfo=dt.UTC)
    cache.count_refused(sender.connection_id)
    cache.count_refused(sender.connection_id)
    cache.flush_counts()
    rows = db.execute("SELECT bucket, refused FROM suppressed_counts WHERE connection_id = %s "
                      "ORDER BY bucket", (sender.connection_id,)).fetchall()
    assert [(r["bucket"].astimezone(dt.UTC).strftime("%H:%M"), r["refused"]) for r in rows] == [
        ("10:00", 1), ("10:15", 2)]
    assert bucket_of(dt.datetime(2026, 1, 1, 23, 59, 59, tzinfo=dt.UTC)).minute == 45


@pytest.fixture()
def dead_pool() -> Iterator[object]:
    opened = database.open_pool(DEAD_DATABASE, "dead")
    opened.open(wait=False)
    yield opened
    opened.close()
