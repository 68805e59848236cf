"""Mail through a relay whose Redis is a Cluster ([redis] mode = "cluster") that is not up yet
when the milter starts: Postfix + Dovecot + milter of their own, the run's PostgreSQL, a
private three-master cluster started later. The milter starts anyway, accepts through
PostgreSQL meanwhile, and reserves in the cluster once it answers, without a restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import ClusterNode, RedisCluster

from tests.harness.processes import wait_until
from tests.harness.provision import account_usage, provision, verify_dkim
from tests.harness.redis_relay import RedisRelay, redis_relay
from tests.harness.services import CaptureSink
from tests.store.test_redis_topologies import cluster_port, cluster_settings, redis_cluster
from txrelay.config import Config
from txrelay.store.keys import AccountKeys

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster_ports() -> list[int]:
    return [cluster_port() for _ in range(3)]  # nothing listens there yet


@pytest.fixture(scope="module")
def cluster_relay(config: Config, e2e_dir: Path, capture_sink: CaptureSink,
                  cluster_ports: list[int]) -> Iterator[RedisRelay]:
    with redis_relay(config, e2e_dir / "cluster", capture_sink,
                     cluster_settings(cluster_ports, timeout_ms=500)) as relay:
        yield relay


def test_milter_started_before_its_cluster_relays_meanwhile_and_reserves_in_it_later(
        cluster_relay: RedisRelay, cluster_ports: list[int],
        capture_sink: CaptureSink) -> None:
    relay = cluster_relay
    shop = provision(relay.config_file, f"e2e-cluster-{uuid.uuid4().hex[:8]}")
    relay.wait_for_policy()
    before = relay.send(shop, capture_sink, "before")
    assert verify_dkim(before, relay.config.database.url)
    assert "event=redis_unavailable mode=postgresql" in relay.milter_log()

    with redis_cluster(relay.directory / "redis", cluster_ports):
        wait_until(lambda: "event=redis_recovered" in relay.milter_log(), 30,
                   "the milter back on Redis", relay.milter.log)
        after = relay.send(shop, capture_sink, "after")
        assert verify_dkim(after, relay.config.database.url)
        assert account_usage(relay.config.database.url, shop.account_id).used == 2
        cluster = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster_ports[0])],
                               socket_timeout=5)
        balance = AccountKeys(relay.config.redis.key_prefix, shop.account_id).balance
        left = str(relay.config.quota.demo_quota - 2).encode()
        # The live balance is in the cluster and agrees with PostgreSQL.
        wait_until(lambda: cluster.get(balance) == left, 20, "balance in the cluster",
                   relay.milter.log)
        cluster.close()
