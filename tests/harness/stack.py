"""A whole second relay stack for fault tests: private Redis and PostgreSQL behind it, a
tracker, and a second milter behind a second submission service of the same Postfix (two
relay nodes sharing Redis and PostgreSQL)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.private import PrivatePostgres, PrivateRedis
from tests.harness.processes import (
    TXRELAY,
    ManagedProcess,
    Stopper,
    free_port,
    port_open,
    wait_until,
)
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.smtp import SUBMISSION_HOST
from tests.harness.stackconfig import stack_config, write_stack_config
from txrelay.config import Config, load_config, render_toml

# Ledger rows of a message Postfix never queued (milter killed after the ledger commit) are
# voided after this long; the production default (600 s) would outlast the tests.
CONFIRM_TIMEOUT_SECONDS = 8


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
    tracker: ManagedProcess
    second_milter: MilterProcess
    second_port: int  # submission service of the same Postfix, behind second_milter

    @property
    def port(self) -> int:
        return self.config.smtp.port


def _with_state(base: Config, directory: Path, node: str) -> Config:
    """`base` with this node's own journal directory, node name and a short confirm timeout
    (never /var/lib/txrelay: a journal must only ever be replayed into its own database)."""
    milter = dataclasses.replace(base.milter, journal_dir=str(directory / f"journal-{node}"),
                                 node_name=node)
    tracker = dataclasses.replace(base.tracker, confirm_timeout_seconds=CONFIRM_TIMEOUT_SECONDS,
                                  poll_interval_seconds=0.2)
    return dataclasses.replace(base, milter=milter, tracker=tracker)


def _second_node_config(config: Config, directory: Path) -> Path:
    """The second milter's configuration: same databases, own socket, journal and name."""
    (directory / "milter2").mkdir(mode=0o755, parents=True, exist_ok=True)
    milter = dataclasses.replace(config.milter, socket=f"unix:{directory}/milter2/milter.sock",
                                 journal_dir=str(directory / "journal-fault-node-2"),
                                 node_name="fault-node-2")
    path = directory / "txrelay-node2.toml"
    path.write_text(render_toml(dataclasses.replace(config, milter=milter)))
    return path


def _add_second_submission(postfix: PostfixInstance, config: Config, second: Config,
                           port: int) -> None:
    """Clone txrelay's submission service onto another port, using the second milter."""
    key = f"{SUBMISSION_HOST}:{config.smtp.port}/inet"
    entry = postfix.postconf("-M", key).strip()
    fields = entry.split()
    fields[0] = f"{SUBMISSION_HOST}:{port}"
    first_socket = config.milter.socket
    cloned = " ".join(f.replace(first_socket, second.milter.socket) for f in fields)
    assert second.milter.socket in cloned, entry
    postfix.postconf("-M", f"{SUBMISSION_HOST}:{port}/inet={cloned}")


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
        stack_dir = directory / "stack"
        port = free_port()
        # No return path here: the tests count the shop's mail at the sink by its envelope
        # sender while PostgreSQL, where the return path's txn id leads, is down.
        first = _with_state(stack_config(base, stack_dir, submission_port=port,
                                         database_url=postgres.url, redis_url=redis.url,
                                         bounce_domain=""),
                            stack_dir, "fault-node-1")
        config_file = write_stack_config(first, stack_dir, submission_port=port,
                                         database_url=postgres.url, redis_url=redis.url,
                                         bounce_domain="")
        config = load_config(config_file, required=True, environ={})
        second_file = _second_node_config(config, stack_dir)
        second = load_config(second_file, required=True, environ={})
        dovecot = DovecotService(config)
        cleanup.callback(stopper.stop_later, dovecot.stop)
        dovecot.start()
        (directory / "sink").mkdir()
        sink = CaptureSink(directory / "sink")
        cleanup.callback(stopper.stop_later, sink.stop)
        sink.start()
        milter = MilterProcess(config, config_file, stack_dir / "milter.log")
        cleanup.callback(stopper.stop_later, milter.stop)
        milter.start()
        second_milter = MilterProcess(second, second_file, stack_dir / "milter2.log")
        cleanup.callback(stopper.stop_later, second_milter.stop)
        second_milter.start()
        postfix = PostfixInstance(stack_dir / "postfix", sink_port=sink.port,
                                  submission_port=config.smtp.port, config_file=config_file)
        cleanup.callback(stopper.stop_later, postfix.stop)
        postfix.prepare()
        second_port = free_port()
        _add_second_submission(postfix, config, second, second_port)
        postfix.start()
        wait_until(lambda: port_open(second_port), 15, "second submission port")
        tracker = ManagedProcess([TXRELAY, "--config", str(config_file), "tracker"],
                                 stack_dir / "tracker.log")
        cleanup.callback(stopper.stop_later, tracker.stop)
        tracker.start()
        yield FaultStack(config, config_file, redis, postgres, dovecot, sink, milter, postfix,
                         tracker, second_milter, second_port)
