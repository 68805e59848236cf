"""Store fixtures: the run's Redis DB with a per-test key prefix, and tenants made with SQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from tests.store.builders import Tenant, make_tenant
from txrelay.config import DatabaseConfig
from txrelay.store import database


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture()
def prefix(unique: str) -> str:
    return f"tst{unique}"


@pytest.fixture()
def tenant_factory(db: psycopg.Connection, unique: str) -> Callable[..., Tenant]:
    counter = iter(range(1000))

    def make(**options: Any) -> Tenant:
        return make_tenant(db, f"{unique}{next(counter)}", **options)

    return make


@pytest.fixture()
def conn(database_url: str) -> Any:
    """A dict-row connection to the run's database, not autocommit (tests see transactions)."""
    with psycopg.connect(database_url, row_factory=dict_row) as connection:  # type: ignore[arg-type]
        yield connection


@pytest.fixture()
def pool(database_url: str) -> Iterator[object]:
    """A milter-style connection pool to the run's database."""
    # 20 threads queue on one account's advisory lock: on a busy CI machine the last one
    # waits longer than the default 3 s statement timeout. Exactness is tested, not latency.
    opened = database.open_pool(DatabaseConfig(url=database_url, pool_max=20, timeout_ms=15000),
                                "store-test")
    opened.open(wait=True)
    yield opened
    opened.close()
