"""A whole second relay stack for fault tests: private Redis and PostgreSQL behind it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.private import PrivatePostgres, PrivateRedis
from tests.harness.processes import Stopper, free_port
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.stackconfig import write_stack_config
from txrelay.config import Config, load_config


@dataclass
class FaultStack:
    """The services of a relay path whose Redis and PostgreSQL the tests may stop."""

    config: Config
    config_file: Path
    redis: PrivateRedis
    postgres: PrivatePostgres
    dovecot: DovecotService
    sink: CaptureSink
    milter: MilterProcess
    postfix: PostfixInstance

    @property
    def port(self) -> int:
        return self.config.smtp.port


@contextlib.contextmanager
def fault_stack(base: Config, directory: Path, stopper: Stopper) -> Iterator[FaultStack]:
    """Start everything; whatever happens, hand every started service's stop to `stopper`."""
    with contextlib.ExitStack() as cleanup:
        redis = PrivateRedis(directory / "redis")
        cleanup.callback(stopper.stop_later, redis.stop)
        redis.start()
        postgres = PrivatePostgres(directory / "pg")
        cleanup.callback(stopper.stop_later, postgres.stop)
        postgres.create()
        config_file = write_stack_config(base, directory / "stack", submission_port=free_port(),
                                         database_url=postgres.url, redis_url=redis.url)
        config = load_config(config_file, required=True, environ={})
        dovecot = DovecotService(config)
        cleanup.callback(stopper.stop_later, dovecot.stop)
        dovecot.start()
        (directory / "sink").mkdir()
        sink = CaptureSink(directory / "sink")
        cleanup.callback(stopper.stop_later, sink.stop)
        sink.start()
        milter = MilterProcess(config, config_file, directory / "stack" / "milter.log")
        cleanup.callback(stopper.stop_later, milter.stop)
        milter.start()
        postfix = PostfixInstance(directory / "stack" / "postfix", sink_port=sink.port,
                                  submission_port=config.smtp.port, config_file=config_file)
        cleanup.callback(stopper.stop_later, postfix.stop)
        postfix.prepare()
        postfix.start()
        yield FaultStack(config, config_file, redis, postgres, dovecot, sink, milter, postfix)
