"""The store through Redis Sentinel and Redis Cluster: real servers on private ports, started
here and removed afterwards, never the machine's shared Redis.

Cluster proves the key layout: every script and multi-key call must stay inside one {a<id>}
hash tag (a cross-slot call fails with CROSSSLOT), and accounts spread over several masters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from redis.cluster import RedisCluster
from redis.sentinel import SentinelConnectionPool

from tests.harness.processes import ManagedProcess, free_port, port_open, wait_until
from tests.store.builders import Tenant
from txrelay.config import RedisConfig, load_config
from txrelay.errors import ConfigError, ServiceUnavailable
from txrelay.metrics import AccountCollector
from txrelay.policy.quota import ReservationStatus
from txrelay.store.balance import credit_balance
from txrelay.store.fallback import rebuild_redis
from txrelay.store.keys import AccountKeys
from txrelay.store.lifecycle import reconcile
from txrelay.store.redis_client import open_redis
from txrelay.store.reservations import RedisReservations, ReservationRequest

MASTER_NAME = "txmaster"


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free as well."""
    while True:
        port = free_port()
        if port < 55000 and not port_open(port + 10000):
            return port


def redis_server(directory: Path, port: int, *extra: str) -> ManagedProcess:
    directory.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(directory),
                              *extra], directory / "redis.log")
    process.start()
    wait_until(lambda: port_open(port), 10, f"redis-server on {port}",
               lambda: (directory / "redis.log").read_text())
    return process


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("redis-topologies")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def redis_cluster(directory: Path, ports: list[int]) -> Iterator[RedisConfig]:
    """Masters on `ports`, no replicas, slots spread by redis-cli --cluster create; the
    config names the first as the seed node."""
    processes: list[ManagedProcess] = []
    try:
        for port in ports:
            processes.append(redis_server(
                directory / f"cluster-{port}", port, "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / f"cluster-{port}" / "nodes.conf")))
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(_cluster_ok(p) for p in ports), 30, "cluster_state:ok")
        yield cluster_settings(ports)
    finally:
        for process in processes:
            process.stop()


def cluster_settings(ports: list[int], timeout_ms: int = 2000) -> RedisConfig:
    return RedisConfig(mode="cluster", cluster_nodes=f"127.0.0.1:{ports[0]}",
                       url="redis://127.0.0.1/0", timeout_ms=timeout_ms)


@pytest.fixture(scope="module")
def cluster_config(workdir: Path) -> Iterator[RedisConfig]:
    with redis_cluster(workdir, [cluster_port() for _ in range(3)]) as config:
        yield config


def _cluster_ok(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
        return bool(client.execute_command("CLUSTER INFO").get("cluster_state") == "ok")


@contextlib.contextmanager
def sentinel_set(directory: Path, replica: bool = False) -> Iterator[tuple[RedisConfig, int]]:
    """A master (and a replica of it) watched by one sentinel (quorum 1): (config, the
    replica's port)."""
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    processes: list[ManagedProcess] = []
    try:
        processes.append(redis_server(directory / "master", master_port))
        if replica:
            processes.append(redis_server(directory / "replica", replica_port, "--replicaof",
                                          "127.0.0.1", str(master_port)))
        conf = directory / "sentinel" / "sentinel.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {conf.parent}\n"
                        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
                        f"sentinel down-after-milliseconds {MASTER_NAME} 2000\n")
        processes.append(_sentinel(conf, sentinel_port))
        yield RedisConfig(mode="sentinel", sentinels=f"127.0.0.1:{sentinel_port}",
                          sentinel_master=MASTER_NAME, url="redis://ignored:1/3",
                          timeout_ms=2000), replica_port
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def sentinel_config(workdir: Path) -> Iterator[RedisConfig]:
    with sentinel_set(workdir / "sentinel-set") as (config, _):
        yield config


def _sentinel(conf: Path, port: int) -> ManagedProcess:
    process = ManagedProcess(["redis-server", str(conf), "--sentinel"],
                             conf.parent / "sentinel.log")
    process.start()
    wait_until(lambda: port_open(port), 10, "redis sentinel",
               lambda: (conf.parent / "sentinel.log").read_text())
    return process


@pytest.fixture(scope="module", params=["cluster", "lazy-cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """The store's calls through each client: lazy-cluster is the daemons' cluster client."""
    mode = str(request.param)
    config: RedisConfig = request.getfixturevalue(f"{mode.removeprefix('lazy-')}_config")
    client = open_redis(config, lazy=mode.startswith("lazy-"))
    yield client
    client.close()


def test_sentinel_client_talks_to_the_master_the_sentinel_names(
        sentinel_config: RedisConfig) -> None:
    client = open_redis(sentinel_config)
    client.set("txrelay-probe", "1")
    role = client.execute_command("ROLE")
    assert role[0] in (b"master", "master")
    assert client.connection_pool.connection_kwargs["db"] == 3  # from url, host ignored
    client.close()


def test_sentinel_failover_is_followed_without_a_new_client(workdir: Path,
                                                            unique: str) -> None:
    with sentinel_set(workdir / "failover", replica=True) as (config, replica_port):
        client = open_redis(config)
        store = _store(client, f"tst{unique}")
        assert store.reserve(ReservationRequest(1, 10, "t|a@x", 0, False)).remaining == 4
        sentinel = redis.Redis(*config.addresses("sentinels")[0], socket_timeout=5)
        wait_until(lambda: _replica_in_sync(replica_port), 20, "replica in sync")
        sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        # Done when SENTINEL MASTERS (what redis-py asks) names the replica, not earlier.
        wait_until(lambda: master_port(sentinel) == replica_port, 30, "sentinel failover")
        wait_until(lambda: _reserves(store), 30, "a reservation on the new master")
        assert client.execute_command("ROLE")[0] in (b"master", "master")
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.get_master_address()[1] == replica_port
        client.close()
        sentinel.close()


def master_port(sentinel: redis.Redis) -> int:
    masters: dict[str, dict[str, int]] = sentinel.sentinel_masters()  # type: ignore[assignment]
    return masters[MASTER_NAME]["port"]


def _replica_in_sync(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as replica:
        return replica.info("replication").get("master_link_status") == "up"


def _reserves(store: RedisReservations, remaining: int = 3) -> bool:
    """One more reservation went through (the first calls after a failover may fail, as
    they would for a milter, which then holds in PostgreSQL for that message)."""
    try:
        return store.reserve(ReservationRequest(1, 10, "t|b@x", 0, False)).remaining == remaining
    except ServiceUnavailable:
        return False


def test_cluster_client_spreads_accounts_over_the_masters(cluster_config: RedisConfig,
                                                          unique: str) -> None:
    client = open_redis(cluster_config)
    assert isinstance(client, RedisCluster)
    prefix = f"tst{unique}"
    nodes = {client.get_node_from_key(AccountKeys(prefix, a).balance).name
             for a in range(1, 40)}
    assert len(nodes) == 3
    keys = AccountKeys(prefix, 11)
    assert len({client.keyslot(k) for k in (keys.balance, keys.held, keys.rate(5))}) == 1


def _store(client: redis.Redis, prefix: str, loaded: int = 5) -> RedisReservations:
    return RedisReservations(client, prefix, 60, lambda _account: loaded)


def test_reserve_commit_and_release_work_for_accounts_on_every_master(
        topology: redis.Redis, unique: str) -> None:
    prefix = f"tst{unique}"
    store = _store(topology, prefix)
    for account in range(1, 10):  # several accounts: several masters in the cluster
        first = store.reserve(ReservationRequest(account, 100 + account, f"t{account}|a@x",
                                                 2, False))
        second = store.reserve(ReservationRequest(account, 100 + account, f"t{account}|b@x",
                                                  2, False))
        limited = store.reserve(ReservationRequest(account, 100 + account, f"u{account}|c@x",
                                                   2, False))
        assert (first.status, first.remaining) == (ReservationStatus.RESERVED, 4)
        assert second.status is ReservationStatus.RESERVED
        assert limited.status is ReservationStatus.RATE_LIMITED
        assert store.commit(account, [f"t{account}|a@x"], 1) == 1
        assert store.release(account, 100 + account, [f"t{account}|b@x"]) == 1
        keys = AccountKeys(prefix, account)
        assert topology.get(keys.balance) == b"4"
        assert topology.zcard(keys.held) == 0
        assert topology.zcard(keys.rate(100 + account)) == 1


def test_demo_account_is_refused_when_its_quota_is_gone(topology: redis.Redis,
                                                        unique: str) -> None:
    store = _store(topology, f"tst{unique}", loaded=1)
    assert store.reserve(ReservationRequest(3, 30, "t|a@x", 0, False)).status is \
        ReservationStatus.RESERVED
    assert store.reserve(ReservationRequest(3, 30, "t|b@x", 0, False)).status is \
        ReservationStatus.QUOTA_EXHAUSTED


def test_balance_credit_reconcile_rebuild_and_metrics(
        topology: redis.Redis, unique: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    prefix = f"tst{unique}"
    tenants = [tenant_factory() for _ in range(4)]
    for tenant in tenants:
        keys = AccountKeys(prefix, tenant.account_id)
        assert credit_balance(topology, prefix, tenant.account_id, 5) is None  # none cached
        topology.set(keys.balance, 990)
        assert credit_balance(topology, prefix, tenant.account_id, 5) == 995
    now = dt.datetime.now(dt.UTC)
    for tenant in tenants:
        checks = reconcile(db, topology, prefix, now, tenant.account_name)  # type: ignore[arg-type]
        assert [(c.redis_before, c.postgres) for c in checks] == [(995, 1000)]
        assert topology.get(AccountKeys(prefix, tenant.account_id).balance) == b"1000"
    collected = {s.labels["account"]: s.value
                 for metric in AccountCollector(topology, prefix).collect()
                 for s in metric.samples if s.name == "txrelay_quota_remaining"}
    assert collected == {str(t.account_id): 1000 for t in tenants}  # scanned on every master
    rebuild_redis(db, topology, prefix, {t.account_id for t in tenants})  # type: ignore[arg-type]
    assert all(topology.get(AccountKeys(prefix, t.account_id).balance) is None for t in tenants)


def test_unreachable_cluster_is_a_clear_error_at_start() -> None:
    port = cluster_port()
    with pytest.raises(ServiceUnavailable, match=f"cluster_nodes \\(127.0.0.1:{port}\\)"):
        open_redis(RedisConfig(mode="cluster", cluster_nodes=f"127.0.0.1:{port}",
                               timeout_ms=300))


def test_the_daemons_cluster_client_starts_without_the_cluster_and_uses_it_once_it_answers(
        workdir: Path, unique: str) -> None:
    """A milter or tracker starting while no seed node answers: no error at start, each use
    until then fails as "Redis is away" (a redis error, which the callers fall back on), and
    the first use after the cluster came up goes through, without a new client."""
    ports = [cluster_port() for _ in range(3)]
    client = open_redis(cluster_settings(ports, timeout_ms=300), lazy=True)
    store = _store(client, f"tst{unique}")  # its scripts are registered without a server
    with pytest.raises(redis.ConnectionError, match=f"cluster_nodes \\(127.0.0.1:{ports[0]}\\)"):
        client.ping()
    with pytest.raises(ServiceUnavailable):
        store.reserve(ReservationRequest(1, 10, "t|a@x", 0, False))
    with redis_cluster(workdir / "late", ports):
        wait_until(lambda: _reserves(store, remaining=4), 30,
                   "a reservation once the cluster answers")
        assert client.zcard(AccountKeys(f"tst{unique}", 1).held) == 1  # held in the cluster
    client.close()


@pytest.mark.parametrize(("environ", "message"), [
    ({"TXRELAY_REDIS_MODE": "sentinel"}, "needs 'redis.sentinels'"),
    ({"TXRELAY_REDIS_MODE": "sentinel", "TXRELAY_REDIS_SENTINELS": "a:1"},
     "needs 'redis.sentinel_master'"),
    ({"TXRELAY_REDIS_MODE": "cluster"}, "needs 'redis.cluster_nodes'"),
    ({"TXRELAY_REDIS_MODE": "cluster", "TXRELAY_REDIS_CLUSTER_NODES": "a:7000",
      "TXRELAY_REDIS_URL": "redis://a/2"}, "only database 0"),
    ({"TXRELAY_REDIS_CLUSTER_NODES": "a:7000"}, "is set but redis.mode is \"standalone\""),
    ({"TXRELAY_REDIS_MODE": "cluster", "TXRELAY_REDIS_CLUSTER_NODES": "a:7000,b"},
     "HOST:PORT entries"),
    ({"TXRELAY_REDIS_MODE": "replicated"}, "not one of standalone, sentinel, cluster"),
])
def test_incomplete_topology_settings_stop_start_by_name(environ: dict[str, str],
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, environ=environ)


def test_topology_settings_parse_from_the_environment() -> None:
    config = load_config(None, environ={"TXRELAY_REDIS_MODE": "sentinel",
                                        "TXRELAY_REDIS_SENTINELS": "10.0.0.1:26379, s2:26380",
                                        "TXRELAY_REDIS_SENTINEL_MASTER": "mymaster"})
    assert config.redis.addresses("sentinels") == [("10.0.0.1", 26379), ("s2", 26380)]
