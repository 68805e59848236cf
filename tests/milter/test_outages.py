"""With Redis or PostgreSQL unreachable, mail gets 451 4.3.0 and is never relayed unaccounted."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import Milter
import psycopg
import pytest
import redis

from tests.milter.conftest import Driver
from tests.store.builders import Tenant
from txrelay.clock import SystemClock
from txrelay.config import DatabaseConfig
from txrelay.milter.runtime import Ledger, PolicyCache, Runtime
from txrelay.store import database
from txrelay.store.keys import AccountKeys
from txrelay.store.policy import PolicyLoader
from txrelay.store.reservations import RedisReservations

DEAD_DATABASE = DatabaseConfig(url="postgresql://postgres@127.0.0.1:1/none", timeout_ms=300)


@pytest.fixture()
def dead_pool() -> Iterator[object]:
    pool = database.open_pool(DEAD_DATABASE, "dead")
    pool.open(wait=False)
    yield pool
    pool.close()


def without_redis(runtime: Runtime) -> Runtime:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    return dataclasses.replace(runtime, reservations=RedisReservations(
        dead, runtime.config.redis.key_prefix, 60, runtime.ledger.remaining_quota))


def test_redis_down_tempfails_each_recipient(runtime: Runtime, tenant: Tenant,
                                             db: psycopg.Connection) -> None:
    outcome = Driver(without_redis(runtime)).send(tenant, queue_id="4QNOREDIS")
    assert outcome.rcpt[0][0] == Milter.TEMPFAIL
    reply = outcome.rcpt[0][1]
    assert reply is not None and reply[:2] == ("451", "4.3.0") and "Redis" in reply[2]
    assert db.execute("SELECT 1 FROM messages WHERE queue_id = '4QNOREDIS'").fetchone() is None


def test_postgresql_down_at_end_of_message_tempfails_and_releases(
        runtime: Runtime, tenant: Tenant, dead_pool: object, redis_url: str) -> None:
    keys = AccountKeys(runtime.config.redis.key_prefix, tenant.account_id)
    client = redis.Redis.from_url(redis_url)
    client.set(keys.balance, 1000)  # loaded before PostgreSQL went away
    broken = dataclasses.replace(runtime, ledger=Ledger(dead_pool, SystemClock()))  # type: ignore[arg-type]
    outcome = Driver(broken).send(tenant, recipients=("a@c.example", "b@c.example"))
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE, Milter.CONTINUE]
    assert outcome.eom == Milter.TEMPFAIL
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("451", "4.3.0")
    assert "PostgreSQL" in outcome.eom_reply[2]
    assert client.zcard(keys.held) == 0 and client.get(keys.balance) == b"1000"


def test_postgresql_down_when_balance_must_be_loaded_names_postgresql(
        runtime: Runtime, tenant: Tenant, dead_pool: object) -> None:
    ledger = Ledger(dead_pool, SystemClock())  # type: ignore[arg-type]
    broken = dataclasses.replace(runtime, ledger=ledger, reservations=RedisReservations(
        runtime.reservations.client, runtime.config.redis.key_prefix, 60,  # type: ignore[attr-defined]
        ledger.remaining_quota))
    outcome = Driver(broken).send(tenant)
    reply = outcome.rcpt[0][1]
    assert reply is not None and reply[:2] == ("451", "4.3.0") and "PostgreSQL" in reply[2]


def test_milter_started_without_postgresql_tempfails_mail(
        runtime: Runtime, tenant: Tenant, dead_pool: object) -> None:
    cache = PolicyCache(dead_pool, PolicyLoader(runtime.config.quota), 60)  # type: ignore[arg-type]
    assert cache.refresh() is False
    outcome = Driver(dataclasses.replace(runtime, policy=cache)).send(tenant)
    assert outcome.mail == Milter.TEMPFAIL
    assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("451", "4.3.0")
