"""txrelay_account_info{account_id, name}: the milter's account collector names the accounts
whose balances it exports, from PostgreSQL, and keeps the last names while PostgreSQL is away."""

from __future__ import annotations

import psycopg
import redis
from prometheus_client import CollectorRegistry, generate_latest

from tests.harness.metrics import samples
from tests.harness.processes import free_port
from tests.store.tracking_fixtures import make_sender
from txrelay import metrics
from txrelay.store.keys import AccountKeys


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scrape(collector: metrics.AccountCollector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_each_account_with_a_balance_is_named(db: psycopg.Connection, database_url: str,
                                               redis_client: redis.Redis, prefix: str,
                                               unique: str) -> None:
    first, second = make_sender(db, unique), make_sender(db, unique + "b")
    for sender, balance in ((first, 40), (second, -3)):
        redis_client.set(AccountKeys(prefix, sender.account_id).balance, balance)
    collector = metrics.AccountCollector(redis_client, prefix,
                                         names=metrics.AccountNameCache(database_url))
    text = scrape(collector)
    assert samples(text, "txrelay_account_info") == {
        (("account_id", str(first.account_id)), ("name", first.account)): 1.0,
        (("account_id", str(second.account_id)), ("name", second.account)): 1.0}
    assert samples(text, "txrelay_quota_remaining")[(("account", str(second.account_id)),)] == -3


def test_names_read_last_are_kept_while_postgresql_is_away(db: psycopg.Connection,
                                                           database_url: str,
                                                           unique: str) -> None:
    sender = make_sender(db, unique)
    ticks = Ticks()
    cache = metrics.AccountNameCache(database_url, ttl=60, clock=ticks)
    assert cache([sender.account_id, 999_999_999]) == {sender.account_id: sender.account}
    db.execute("UPDATE accounts SET name = name || ' renamed' WHERE id = %s",
               (sender.account_id,))
    ticks.now = 30
    assert cache([sender.account_id]) == {sender.account_id: sender.account}  # within the ttl
    ticks.now = 61
    assert cache([sender.account_id]) == {sender.account_id: sender.account + " renamed"}
    cache.url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    ticks.now = 200
    assert cache([sender.account_id]) == {sender.account_id: sender.account + " renamed"}
