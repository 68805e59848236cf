"""Store fixtures: the run's Redis DB with a per-test key prefix, tenants made with SQL, the
connections the tests and the daemons use, and a mail log for the tracker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from tests.store.builders import Tenant, make_tenant
from tests.store.tracking_fixtures import MailLog
from txrelay.config import Config, DatabaseConfig
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
def store_conn(config: Config) -> Iterator[psycopg.Connection]:
    """A connection as the tracker, the lifecycle tick and the CLI open one
    (txrelay.store.database.connect): autocommit, dict rows."""
    connection = database.connect(config.database, autocommit=True)
    yield connection
    connection.close()


@pytest.fixture()
def node(unique: str) -> str:
    """This test's relay node name, so its queue ids and log position are its own."""
    return f"node-{unique}"


@pytest.fixture()
def maillog(tmp_path: Path) -> MailLog:
    """A Postfix mail log the test writes lines to, for a tracker to follow."""
    return MailLog(tmp_path / "postfix.log")


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
