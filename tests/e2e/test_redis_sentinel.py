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

import psycopg
import pytest
import redis

from tests.harness.processes import free_port, wait_until
from tests.harness.provision import Provisioned, account_usage, provision, verify_dkim
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.smtp import build_message, submit
from tests.harness.stackconfig import stack_config
from tests.store.test_redis_topologies import MASTER_NAME, master_port, sentinel_set
from txrelay.config import Config, load_config, render_toml
from txrelay.store.keys import AccountKeys

pytestmark = pytest.mark.e2e


@dataclass
class SentinelRelay:
    config: Config
    config_file: Path
    milter: MilterProcess
    replica_port: int

    def sentinel(self) -> redis.Redis:
        host, port = self.config.redis.addresses("sentinels")[0]
        return redis.Redis(host, port, socket_timeout=5)


@pytest.fixture(scope="module")
def sentinel_relay(config: Config, e2e_dir: Path,
                   capture_sink: CaptureSink) -> Iterator[SentinelRelay]:
    directory = e2e_dir / "sentinel"
    directory.mkdir(mode=0o755)
    with sentinel_set(directory / "redis", replica=True) as (redis_config, replica_port):
        port = free_port()
        base = stack_config(config, directory, submission_port=port)
        stack = dataclasses.replace(base, redis=dataclasses.replace(
            redis_config, key_prefix=config.redis.key_prefix, url="redis://sentinel/0"))
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
            yield SentinelRelay(loaded, config_file, milter, replica_port)
        finally:  # before sentinel_set stops Redis
            for service in (postfix, milter, dovecot):
                service.stop()


def _settle(relay: SentinelRelay) -> None:
    with psycopg.connect(relay.config.database.url, autocommit=True) as conn:
        row = conn.execute("SELECT version FROM policy_version").fetchone()
    wanted = int(row[0]) if row else 0
    wait_until(lambda: relay.milter.loaded_policy_version() >= wanted, 20,
               "milter policy load", relay.milter.log)


def _send(relay: SentinelRelay, shop: Provisioned, sink: CaptureSink, tag: str) -> bytes:
    """One message, retried like a client would while a 4xx says to try again."""
    rcpt = f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    raw = build_message(shop.address(), [rcpt], subject=f"sentinel {tag}")

    def accepted() -> bool:
        result = submit(shop.username, shop.password, shop.address(), [rcpt], raw,
                        port=relay.config.smtp.port)
        return result.delivered_to == [rcpt]

    wait_until(accepted, 30, f"mail {tag} accepted", relay.milter.log, interval=1)
    return sink.wait_for_recipient(rcpt).raw


def test_mail_is_relayed_and_reserved_on_the_new_primary_after_a_failover(
        sentinel_relay: SentinelRelay, capture_sink: CaptureSink) -> None:
    relay = sentinel_relay
    shop = provision(relay.config_file, f"e2e-sentinel-{uuid.uuid4().hex[:8]}")
    _settle(relay)
    first = _send(relay, shop, capture_sink, "before")
    assert verify_dkim(first, relay.config.database.url)

    sentinel = relay.sentinel()
    old_primary = redis.Redis(port=master_port(sentinel), socket_timeout=5)
    sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
    wait_until(lambda: master_port(sentinel) == relay.replica_port, 30, "sentinel failover")
    # Until the old primary is demoted, clients still connected to it write there and lose
    # it (asynchronous replication: docs/deployment.md says to reconcile after a failover).
    wait_until(lambda: old_primary.execute_command("ROLE")[0] == b"slave", 30,
               "old primary demoted")
    second = _send(relay, shop, capture_sink, "after")
    third = _send(relay, shop, capture_sink, "later")
    assert verify_dkim(second, relay.config.database.url)
    assert verify_dkim(third, relay.config.database.url)
    assert account_usage(relay.config.database.url, shop.account_id).used == 3
    left = str(relay.config.quota.demo_quota - 3).encode()

    balance = AccountKeys(relay.config.redis.key_prefix, shop.account_id).balance
    new_primary = redis.Redis(port=relay.replica_port, socket_timeout=5)
    # The live balance is on the new primary and agrees with PostgreSQL.
    wait_until(lambda: new_primary.get(balance) == left, 20, "balance on the new primary",
               relay.milter.log)
    assert new_primary.execute_command("ROLE")[0] == b"master"
    for client in (sentinel, new_primary, old_primary):
        client.close()
