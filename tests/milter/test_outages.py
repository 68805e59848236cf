"""Redis or PostgreSQL unreachable: in-limit mail is still accepted and accounted exactly once;
both down (or the journal unwritable) is 451 4.3.0 and nothing is relayed unaccounted."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import Milter
import psycopg
import redis

from tests.milter.conftest import Driver
from tests.store.builders import Tenant
from txrelay.clock import SystemClock
from txrelay.milter.runtime import Runtime
from txrelay.store.fallback import FailoverReservations, PostgresReservations
from txrelay.store.journal import Journal
from txrelay.store.keys import AccountKeys
from txrelay.store.policy import PolicyLoader
from txrelay.store.policy_cache import PolicyCache
from txrelay.store.recording import PostgresLedger
from txrelay.store.reservations import RedisReservations


def _loader(runtime: Runtime) -> PolicyLoader:
    """A loader as the milter makes it ([dkim] require_published as the run's config says)."""
    return PolicyLoader(runtime.config.quota,
                        require_published=runtime.config.dkim.require_published)


def dead_redis(runtime: Runtime) -> RedisReservations:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    return RedisReservations(dead, runtime.config.redis.key_prefix, 60,
                             runtime.ledger.remaining_quota)


def live_redis(runtime: Runtime) -> RedisReservations:
    return runtime.reservations.redis  # type: ignore[attr-defined,no-any-return]


def without_redis(runtime: Runtime, pool: object) -> Runtime:
    failover = FailoverReservations(dead_redis(runtime),
                                    PostgresReservations(pool, 60, "test-node"),  # type: ignore[arg-type]
                                    lambda accounts: None)
    ledger = PostgresLedger(runtime.ledger.pool, SystemClock(), None, failover.held_in_postgres)
    return dataclasses.replace(runtime, reservations=failover, ledger=ledger)


def without_postgresql(runtime: Runtime, dead_pool: object, journal_dir: Path,
                       max_per_hour: int = 100) -> tuple[Runtime, Journal]:
    journal = Journal(journal_dir, runtime.config.database.url, max_per_hour)
    ledger = PostgresLedger(dead_pool, SystemClock(), journal)  # type: ignore[arg-type]
    return dataclasses.replace(runtime, ledger=ledger, reservations=live_redis(runtime)), journal


def ledger_rows(db: psycopg.Connection, tenant: Tenant) -> tuple[int, int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM messages WHERE account_id = %(a)s) AS m, "
        "(SELECT count(*) FROM ledger WHERE account_id = %(a)s) AS l, "
        "(SELECT count(*) FROM quota_holds WHERE account_id = %(a)s) AS h",
        {"a": tenant.account_id}).fetchone()
    assert isinstance(row, dict)
    return int(row["m"]), int(row["l"]), int(row["h"])


def test_redis_down_decides_in_postgresql_and_accepts_in_limit_mail(
        runtime: Runtime, tenant: Tenant, db: psycopg.Connection) -> None:
    outcome = Driver(without_redis(runtime, runtime.ledger.pool)).send(
        tenant, recipients=("a@c.example", "b@c.example", "a@c.example"))
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE] * 3
    assert outcome.eom == Milter.ACCEPT and outcome.added("DKIM-Signature")
    assert ledger_rows(db, tenant) == (1, 2, 0)  # duplicate billed once, holds ended


def test_redis_down_still_refuses_a_demo_account_past_its_last_unit(
        runtime: Runtime, tenant_factory: object, db: psycopg.Connection) -> None:
    tenant = tenant_factory(demo_quota=1)  # type: ignore[operator]
    outcome = Driver(without_redis(runtime, runtime.ledger.pool)).send(
        tenant, recipients=("a@c.example", "b@c.example"))
    assert [rc for rc, _ in outcome.rcpt] == [Milter.CONTINUE, Milter.REJECT]
    assert outcome.eom == Milter.ACCEPT
    assert ledger_rows(db, tenant) == (1, 1, 0)


def test_redis_and_postgresql_down_tempfails_each_recipient(
        runtime: Runtime, tenant: Tenant, dead_pool: object, db: psycopg.Connection) -> None:
    outcome = Driver(without_redis(runtime, dead_pool)).send(tenant, queue_id="4QBOTHDOWN")
    assert outcome.rcpt[0][0] == Milter.TEMPFAIL
    reply = outcome.rcpt[0][1]
    assert reply is not None and reply[:2] == ("451", "4.3.0")
    assert db.execute("SELECT 1 FROM messages WHERE queue_id = '4QBOTHDOWN'").fetchone() is None


def test_postgresql_down_accepts_into_the_journal_and_replays_exactly_once(
        runtime: Runtime, tenant: Tenant, dead_pool: object, redis_url: str,
        db: psycopg.Connection, tmp_path: Path) -> None:
    keys = AccountKeys(runtime.config.redis.key_prefix, tenant.account_id)
    client = redis.Redis.from_url(redis_url)
    client.set(keys.balance, 1000)  # loaded before PostgreSQL went away
    broken, journal = without_postgresql(runtime, dead_pool, tmp_path)
    outcome = Driver(broken).send(tenant, recipients=("a@c.example", "b@c.example"))
    assert outcome.eom == Milter.ACCEPT and outcome.added("DKIM-Signature")
    assert outcome.added("List-Help")
    assert journal.backlog() == 1 and ledger_rows(db, tenant)[:2] == (0, 0)
    assert client.get(keys.balance) == b"998" and client.zcard(keys.held) == 0
    back = PostgresLedger(runtime.ledger.pool, SystemClock(), journal)
    assert back.replay_journal() == 1
    assert back.replay_journal() == 0
    assert ledger_rows(db, tenant)[:2] == (1, 2) and journal.backlog() == 0


def test_postgresql_down_and_journal_unwritable_tempfails_and_releases(
        runtime: Runtime, tenant: Tenant, dead_pool: object, redis_url: str,
        tmp_path: Path) -> None:
    keys = AccountKeys(runtime.config.redis.key_prefix, tenant.account_id)
    client = redis.Redis.from_url(redis_url)
    client.set(keys.balance, 1000)
    (tmp_path / "file").write_text("")
    broken, _ = without_postgresql(runtime, dead_pool, tmp_path / "file" / "journal")
    outcome = Driver(broken).send(tenant, recipients=("a@c.example", "b@c.example"))
    assert outcome.eom == Milter.TEMPFAIL
    assert outcome.eom_reply is not None and outcome.eom_reply[:2] == ("451", "4.3.0")
    assert "PostgreSQL" in outcome.eom_reply[2]
    assert client.zcard(keys.held) == 0 and client.get(keys.balance) == b"1000"


def test_postgresql_down_beyond_the_hourly_journal_bound_tempfails(
        runtime: Runtime, tenant: Tenant, dead_pool: object, redis_url: str,
        tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).set(
        AccountKeys(runtime.config.redis.key_prefix, tenant.account_id).balance, 1000)
    broken, journal = without_postgresql(runtime, dead_pool, tmp_path, max_per_hour=2)
    driver = Driver(broken)
    assert driver.send(tenant, recipients=("a@c.example", "b@c.example")).eom == Milter.ACCEPT
    assert driver.send(tenant, recipients=("c@c.example",)).eom == Milter.TEMPFAIL
    assert journal.backlog() == 1


def test_postgresql_down_when_balance_must_be_loaded_names_postgresql(
        runtime: Runtime, tenant: Tenant, dead_pool: object) -> None:
    ledger = PostgresLedger(dead_pool, SystemClock())  # type: ignore[arg-type]
    broken = dataclasses.replace(runtime, ledger=ledger, reservations=RedisReservations(
        live_redis(runtime).client, runtime.config.redis.key_prefix, 60,
        ledger.remaining_quota))
    outcome = Driver(broken).send(tenant)
    reply = outcome.rcpt[0][1]
    assert reply is not None and reply[:2] == ("451", "4.3.0") and "PostgreSQL" in reply[2]


def test_milter_restarted_during_a_postgresql_outage_authorises_from_its_local_copy(
        runtime: Runtime, tenant: Tenant, dead_pool: object, tmp_path: Path) -> None:
    copy = tmp_path / "state" / "policy.json"
    loader = _loader(runtime)
    assert PolicyCache(runtime.ledger.pool, loader, 60, copy).refresh()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # it holds DKIM private keys
    restarted = PolicyCache(dead_pool, _loader(runtime), 60, copy)  # type: ignore[arg-type]
    assert restarted.refresh() is True
    outcome = Driver(dataclasses.replace(runtime, policy=restarted)).send(tenant)
    assert outcome.mail == Milter.CONTINUE and outcome.eom == Milter.ACCEPT


def test_milter_started_without_postgresql_or_local_copy_tempfails_mail(
        runtime: Runtime, tenant: Tenant, dead_pool: object, tmp_path: Path) -> None:
    cache = PolicyCache(dead_pool, _loader(runtime), 60,  # type: ignore[arg-type]
                        tmp_path / "none.json")
    assert cache.refresh() is False
    outcome = Driver(dataclasses.replace(runtime, policy=cache)).send(tenant)
    assert outcome.mail == Milter.TEMPFAIL
    assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("451", "4.3.0")
