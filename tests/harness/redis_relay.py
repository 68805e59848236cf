"""A relay of its own (Postfix, Dovecot and milter; the run's PostgreSQL and capture sink) in
front of a Redis topology the test chooses: Sentinel, a Cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.harness.processes import free_port, wait_until
from tests.harness.provision import Provisioned
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.smtp import build_message, submit
from tests.harness.stackconfig import stack_config
from txrelay.config import Config, RedisConfig, load_config, render_toml


@dataclass
class RedisRelay:
    config: Config
    config_file: Path
    milter: MilterProcess
    directory: Path

    def milter_log(self) -> str:
        """The milter's whole log (MilterProcess.log gives its last lines)."""
        return self.milter.process.log_path.read_text(errors="replace")

    def wait_for_policy(self) -> None:
        """Until the milter has loaded the newest policy (a shop just provisioned)."""
        with psycopg.connect(self.config.database.url, autocommit=True) as conn:
            row = conn.execute("SELECT version FROM policy_version").fetchone()
        wanted = int(row[0]) if row else 0
        wait_until(lambda: self.milter.loaded_policy_version() >= wanted, 20,
                   "milter policy load", self.milter.log)

    def send(self, shop: Provisioned, sink: CaptureSink, tag: str) -> bytes:
        """One message, retried like a client would while a 4xx says to try again; the
        message as the sink received it."""
        rcpt = f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"
        raw = build_message(shop.address(), [rcpt], subject=f"{self.directory.name} {tag}")

        def accepted() -> bool:
            result = submit(shop.username, shop.password, shop.address(), [rcpt], raw,
                            port=self.config.smtp.port)
            return result.delivered_to == [rcpt]

        wait_until(accepted, 30, f"mail {tag} accepted", self.milter.log, interval=1)
        return sink.wait_for_recipient(rcpt).raw


@contextlib.contextmanager
def redis_relay(config: Config, directory: Path, sink: CaptureSink,
                redis_config: RedisConfig) -> Iterator[RedisRelay]:
    """Start the relay with `redis_config` (the run's key prefix kept); stopped on exit,
    before the caller stops its Redis."""
    directory.mkdir(mode=0o755)
    port = free_port()
    base = stack_config(config, directory, submission_port=port)
    stack = dataclasses.replace(base, redis=dataclasses.replace(
        redis_config, key_prefix=config.redis.key_prefix))
    (directory / "milter").mkdir(mode=0o755)
    config_file = directory / "txrelay.toml"
    config_file.write_text(render_toml(stack))
    loaded = load_config(config_file, required=True, environ={})
    dovecot = DovecotService(loaded)
    milter = MilterProcess(loaded, config_file, directory / "milter.log")
    postfix = PostfixInstance(directory / "postfix", sink_port=sink.port,
                              submission_port=port, config_file=config_file)
    try:
        dovecot.start()
        milter.start()
        postfix.prepare()
        postfix.start()
        yield RedisRelay(loaded, config_file, milter, directory)
    finally:
        for service in (postfix, milter, dovecot):
            service.stop()
