"""Mail through a relay whose Redis is a Cluster ([redis] mode = "cluster") that is not up yet
when the milter starts: Postfix + Dovecot + milter of their own, the run's PostgreSQL, a
private three-master cluster started later. The milter starts anyway, accepts through
PostgreSQL meanwhile, and reserves in the cluster once it answers, without a restart."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from redis.cluster import ClusterNode, RedisCluster

from tests.harness.processes import free_port, wait_until
from tests.harness.provision import Provisioned, account_usage, provision, verify_dkim
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.smtp import build_message, submit
from tests.harness.stackconfig import stack_config
from tests.store.test_redis_topologies import cluster_port, cluster_settings, redis_cluster
from txrelay.config import Config, load_config, render_toml
from txrelay.store.keys import AccountKeys

pytestmark = pytest.mark.e2e


@dataclass
class ClusterRelay:
    config: Config
    config_file: Path
    milter: MilterProcess
    directory: Path
    ports: list[int]


@pytest.fixture(scope="module")
def cluster_relay(config: Config, e2e_dir: Path,
                  capture_sink: CaptureSink) -> Iterator[ClusterRelay]:
    directory = e2e_dir / "cluster"
    directory.mkdir(mode=0o755)
    ports = [cluster_port() for _ in range(3)]  # nothing listens there yet
    port = free_port()
    base = stack_config(config, directory, submission_port=port)
    stack = dataclasses.replace(base, redis=dataclasses.replace(
        cluster_settings(ports, timeout_ms=500), key_prefix=config.redis.key_prefix))
    (directory / "milter").mkdir(mode=0o755)
    config_file = directory / "txrelay.toml"
    config_file.write_text(render_toml(stack))
    loaded = load_config(config_file, required=True, environ={})
    dovecot = DovecotService(loaded)
    milter = MilterProcess(loaded, config_file, directory / "milter.log")
    postfix = PostfixInstance(directory / "postfix", sink_port=capture_sink.port,
                              submission_port=port, config_file=config_file)
    try:
        dovecot.start()
        milter.start()
        postfix.prepare()
        postfix.start()
        yield ClusterRelay(loaded, config_file, milter, directory, ports)
    finally:
        for service in (postfix, milter, dovecot):
            service.stop()


def _send(relay: ClusterRelay, shop: Provisioned, sink: CaptureSink, tag: str) -> bytes:
    rcpt = f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    raw = build_message(shop.address(), [rcpt], subject=f"cluster {tag}")

    def accepted() -> bool:
        result = submit(shop.username, shop.password, shop.address(), [rcpt], raw,
                        port=relay.config.smtp.port)
        return result.delivered_to == [rcpt]

    wait_until(accepted, 30, f"mail {tag} accepted", relay.milter.log, interval=1)
    return sink.wait_for_recipient(rcpt).raw


def test_milter_started_before_its_cluster_relays_meanwhile_and_reserves_in_it_later(
        cluster_relay: ClusterRelay, capture_sink: CaptureSink) -> None:
    relay = cluster_relay
    shop = provision(relay.config_file, f"e2e-cluster-{uuid.uuid4().hex[:8]}")
    with psycopg.connect(relay.config.database.url, autocommit=True) as conn:
        row = conn.execute("SELECT version FROM policy_version").fetchone()
    wanted = int(row[0]) if row else 0
    wait_until(lambda: relay.milter.loaded_policy_version() >= wanted, 20,
               "milter policy load", relay.milter.log)
    before = _send(relay, shop, capture_sink, "before")
    assert verify_dkim(before, relay.config.database.url)
    assert "event=redis_unavailable mode=postgresql" in _whole_log(relay)

    with redis_cluster(relay.directory / "redis", relay.ports):
        wait_until(lambda: "event=redis_recovered" in _whole_log(relay), 30,
                   "the milter back on Redis", relay.milter.log)
        after = _send(relay, shop, capture_sink, "after")
        assert verify_dkim(after, relay.config.database.url)
        assert account_usage(relay.config.database.url, shop.account_id).used == 2
        cluster = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", relay.ports[0])],
                               socket_timeout=5)
        balance = AccountKeys(relay.config.redis.key_prefix, shop.account_id).balance
        left = str(relay.config.quota.demo_quota - 2).encode()
        # The live balance is in the cluster and agrees with PostgreSQL.
        wait_until(lambda: cluster.get(balance) == left, 20, "balance in the cluster",
                   relay.milter.log)
        cluster.close()


def _whole_log(relay: ClusterRelay) -> str:
    return relay.milter.process.log_path.read_text(errors="replace")
