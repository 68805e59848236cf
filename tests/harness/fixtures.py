"""pytest plugin: session fixtures that start real Dovecot, Postfix, milter and capture sink.

Each fixture starts a service of the tests' own (temp directories, free ports, the run's
database and Redis DB) and stops it in a finally block, so a failing test never leaves a
daemon behind. Fault tests use a second, private stack (tests/harness/private.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.harness.processes import Stopper, free_port
from tests.harness.provision import (
    Provisioned,
    Usage,
    account_usage,
    provision,
    provision_many,
)
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.stack import FaultStack, fault_stack
from tests.harness.stackconfig import write_stack_config
from txrelay.config import Config, load_config
from txrelay.store.keys import AccountKeys


@dataclass
class RelayStack:
    """Everything one relay path needs, started: submit to 127.0.0.1:<port>."""

    config: Config
    config_file: Path
    database_url: str
    dovecot: DovecotService
    sink: CaptureSink
    postfix: PostfixInstance
    milter: MilterProcess

    @property
    def port(self) -> int:
        return self.config.smtp.port

    def provision(self, **options: Any) -> Provisioned:
        made = provision(self.config_file, f"e2e-{uuid.uuid4().hex[:10]}", **options)
        self.settle_policy()
        return made

    def provision_many(self, count: int, **options: Any) -> list[Provisioned]:
        names = [f"e2e-{uuid.uuid4().hex[:10]}" for _ in range(count)]
        made = provision_many(self.config_file, names, **options)
        self.settle_policy()
        return made

    def settle_policy(self) -> None:
        """Wait until the milter has loaded the policy version PostgreSQL holds now.

        A new login makes the milter reload at once, but other changes (a booked block
        turning a demo account into a paid one) reach it with its next poll; under load a
        fixed sleep was not always enough, so wait for the milter's own log line.
        """
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT version FROM policy_version").fetchone()
        wanted = int(row[0]) if row else 0
        deadline = time.monotonic() + 20
        while self.milter.loaded_policy_version() < wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"the milter did not load policy version {wanted} in 20 s"
                                     f"\n{self.milter.log()}")
            time.sleep(0.05)

    def usage(self, account_id: int) -> Usage:
        return account_usage(self.database_url, account_id)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.config.redis.url, socket_timeout=5)

    def account_keys(self, account_id: int) -> AccountKeys:
        return AccountKeys(self.config.redis.key_prefix, account_id)


@pytest.fixture(scope="session")
def e2e_dir() -> Iterator[Path]:
    """The stack's directory, outside pytest's temp tree: pytest resets
    /tmp/pytest-of-root to 0700 whenever any pytest run starts, and Postfix (user postfix)
    must reach the sockets and queue in here."""
    directory = Path(tempfile.mkdtemp(prefix="txrelay-e2e-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        if not os.environ.get("E2E_KEEP_DIR"):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def stopper(e2e_dir: Path) -> Iterator[Stopper]:
    """Every service fixture hands its stop here; all stops run at once and are waited for
    before e2e_dir is removed."""
    stops = Stopper()
    try:
        yield stops
    finally:
        stops.join()


@pytest.fixture(scope="session")
def e2e_config_file(config: Config, e2e_dir: Path) -> Path:
    """The run's configuration (same database, Redis DB and key prefix) with its sockets in
    e2e_dir and a free submission port, so parallel runs on one machine do not collide."""
    return write_stack_config(config, e2e_dir / "main", submission_port=free_port())


@pytest.fixture(scope="session")
def e2e_config(e2e_config_file: Path) -> Config:
    return load_config(e2e_config_file, required=True, environ={})


@pytest.fixture(scope="session")
def dovecot(e2e_config: Config, stopper: Stopper) -> Iterator[DovecotService]:
    service = DovecotService(e2e_config)
    try:
        service.start()
        yield service
    finally:
        stopper.stop_later(service.stop)


@pytest.fixture(scope="session")
def capture_sink(e2e_dir: Path, stopper: Stopper) -> Iterator[CaptureSink]:
    directory = e2e_dir / "sink"
    directory.mkdir()
    sink = CaptureSink(directory)
    try:
        sink.start()
        yield sink
    finally:
        stopper.stop_later(sink.stop)


@pytest.fixture(scope="session")
def postfix(e2e_dir: Path, e2e_config: Config, e2e_config_file: Path,
            capture_sink: CaptureSink, stopper: Stopper) -> Iterator[PostfixInstance]:
    instance = PostfixInstance(e2e_dir / "main" / "postfix", sink_port=capture_sink.port,
                               submission_port=e2e_config.smtp.port,
                               config_file=e2e_config_file)
    try:
        instance.prepare()
        instance.start()
        yield instance
    finally:
        stopper.stop_later(instance.stop)


@pytest.fixture(scope="session")
def milter(e2e_config: Config, e2e_config_file: Path, e2e_dir: Path,
           stopper: Stopper) -> Iterator[MilterProcess]:
    process = MilterProcess(e2e_config, e2e_config_file, e2e_dir / "main" / "milter.log")
    try:
        process.start()
        yield process
    finally:
        stopper.stop_later(process.stop)


@pytest.fixture(scope="session")
def relay(e2e_config: Config, e2e_config_file: Path, dovecot: DovecotService,
          capture_sink: CaptureSink, milter: MilterProcess,
          postfix: PostfixInstance) -> RelayStack:
    return RelayStack(e2e_config, e2e_config_file, e2e_config.database.url, dovecot,
                      capture_sink, postfix, milter)


@pytest.fixture(scope="session")
def faults(config: Config, e2e_dir: Path, stopper: Stopper) -> Iterator[FaultStack]:
    """A second relay stack on a private Redis and PostgreSQL, for tests that stop them."""
    directory = e2e_dir / "faults"
    directory.mkdir(mode=0o755)
    with fault_stack(config, directory, stopper) as stack:
        yield stack


@pytest.fixture()
def provisioned(relay: RelayStack) -> Provisioned:
    """A fresh account, domain and connection (default limits) on the main stack."""
    return relay.provision()


@pytest.fixture()
def make_provisioned(relay: RelayStack) -> Callable[..., Provisioned]:
    return relay.provision
