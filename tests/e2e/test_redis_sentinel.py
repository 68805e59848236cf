"""Mail through a relay whose Redis is found through Sentinel ([redis] mode = "sentinel"):
Postfix + Dovecot + milter of their own, a private primary + replica + sentinel, the run's
PostgreSQL. The milter keeps accepting across a forced failover and then reserves on the new
primary, without a restart."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.harness.processes import wait_until
from tests.harness.provision import account_usage, provision, verify_dkim
from tests.harness.redis_relay import RedisRelay, redis_relay
from tests.harness.services import CaptureSink
from tests.store.test_redis_topologies import MASTER_NAME, master_port, sentinel_set
from txrelay.config import Config, RedisConfig
from txrelay.store.keys import AccountKeys

pytestmark = pytest.mark.e2e


@dataclass
class SentinelRelay:
    relay: RedisRelay
    settings: RedisConfig
    replica_port: int

    def sentinel(self) -> redis.Redis:
        host, port = self.settings.addresses("sentinels")[0]
        return redis.Redis(host, port, socket_timeout=5)


@pytest.fixture(scope="module")
def sentinel_relay(config: Config, e2e_dir: Path,
                   capture_sink: CaptureSink) -> Iterator[SentinelRelay]:
    directory = e2e_dir / "sentinel"
    directory.mkdir(mode=0o755)
    with sentinel_set(directory / "redis", replica=True) as (redis_config, replica_port):
        settings = dataclasses.replace(redis_config, url="redis://sentinel/0")
        with redis_relay(config, directory / "relay", capture_sink, settings) as relay:
            yield SentinelRelay(relay, settings, replica_port)


def test_mail_is_relayed_and_reserved_on_the_new_primary_after_a_failover(
        sentinel_relay: SentinelRelay, capture_sink: CaptureSink) -> None:
    relay = sentinel_relay.relay
    shop = provision(relay.config_file, f"e2e-sentinel-{uuid.uuid4().hex[:8]}")
    relay.wait_for_policy()
    first = relay.send(shop, capture_sink, "before")
    assert verify_dkim(first, relay.config.database.url)

    sentinel = sentinel_relay.sentinel()
    old_primary = redis.Redis(port=master_port(sentinel), socket_timeout=5)
    sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
    wait_until(lambda: master_port(sentinel) == sentinel_relay.replica_port, 30,
               "sentinel failover")
    # Until the old primary is demoted, clients still connected to it write there and lose
    # it (asynchronous replication: docs/deployment.md says to reconcile after a failover).
    wait_until(lambda: old_primary.execute_command("ROLE")[0] == b"slave", 30,
               "old primary demoted")
    second = relay.send(shop, capture_sink, "after")
    third = relay.send(shop, capture_sink, "later")
    assert verify_dkim(second, relay.config.database.url)
    assert verify_dkim(third, relay.config.database.url)
    assert account_usage(relay.config.database.url, shop.account_id).used == 3
    left = str(relay.config.quota.demo_quota - 3).encode()

    balance = AccountKeys(relay.config.redis.key_prefix, shop.account_id).balance
    new_primary = redis.Redis(port=sentinel_relay.replica_port, socket_timeout=5)
    # The live balance is on the new primary and agrees with PostgreSQL.
    wait_until(lambda: new_primary.get(balance) == left, 20, "balance on the new primary",
               relay.milter.log)
    assert new_primary.execute_command("ROLE")[0] == b"master"
    for client in (sentinel, new_primary, old_primary):
        client.close()
