"""Two complete relay nodes on this machine sharing one PostgreSQL and one Redis (private
ones, so the counts are the test's alone): each node its own Postfix instance (own
configuration directory, queue, ports and mail log), Dovecot, milter and tracker, and the
capture sink behind both, as two servers behind one shop would be."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.load import Relay
from tests.harness.private import PrivatePostgres, PrivateRedis
from tests.harness.processes import TXRELAY, ManagedProcess, Stopper, free_port
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.stack import CONFIRM_TIMEOUT_SECONDS
from tests.harness.stackconfig import write_stack_config
from txrelay.config import Config, load_config

NODE_NAMES = ("node-a", "node-b")


@dataclass
class Node:
    name: str
    config: Config
    config_file: Path
    dovecot: DovecotService
    milter: MilterProcess
    postfix: PostfixInstance
    tracker: ManagedProcess

    @property
    def port(self) -> int:
        return self.config.smtp.port


@dataclass
class TwoNodes:
    redis: PrivateRedis
    postgres: PrivatePostgres
    sink: CaptureSink
    nodes: list[Node]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def relay(self) -> Relay:
        return Relay(self.nodes[0].config, self.sink, self.flush, self.queue_count, self.logs)

    def flush(self) -> None:
        for node in self.nodes:
            node.postfix.flush()

    def queue_count(self) -> int:
        return sum(node.postfix.queue_count() for node in self.nodes)

    def logs(self) -> str:
        return "\n".join(f"--- {node.name} milter\n{node.milter.log(10)}\n--- {node.name} "
                         f"tracker\n{node.tracker.log(10)}" for node in self.nodes)


def _node_config(base: Config, directory: Path, name: str, postgres: PrivatePostgres,
                 redis: PrivateRedis) -> Path:
    """The run's settings with this node's own name, sockets, Dovecot, journal and log."""
    milter = dataclasses.replace(base.milter, node_name=name)
    tracker = dataclasses.replace(base.tracker, source="file",
                                  confirm_timeout_seconds=CONFIRM_TIMEOUT_SECONDS,
                                  poll_interval_seconds=0.2)
    return write_stack_config(dataclasses.replace(base, milter=milter, tracker=tracker),
                              directory, submission_port=free_port(),
                              database_url=postgres.url, redis_url=redis.url)


@contextlib.contextmanager
def two_nodes(base: Config, directory: Path, stopper: Stopper) -> Iterator[TwoNodes]:
    """Start both nodes; whatever happens, hand every started service's stop to `stopper`."""
    with contextlib.ExitStack() as cleanup:
        redis = PrivateRedis(directory / "redis")
        cleanup.callback(stopper.stop_later, redis.stop)
        redis.start()
        postgres = PrivatePostgres(directory / "pg")
        cleanup.callback(stopper.stop_later, postgres.stop)
        postgres.create()
        (directory / "sink").mkdir()
        sink = CaptureSink(directory / "sink")
        cleanup.callback(stopper.stop_later, sink.stop)
        sink.start()
        nodes = []
        for name in NODE_NAMES:
            node_dir = directory / name
            config_file = _node_config(base, node_dir, name, postgres, redis)
            config = load_config(config_file, required=True, environ={})
            dovecot = DovecotService(config)
            cleanup.callback(stopper.stop_later, dovecot.stop)
            dovecot.start()
            milter = MilterProcess(config, config_file, node_dir / "milter.log")
            cleanup.callback(stopper.stop_later, milter.stop)
            milter.start()
            postfix = PostfixInstance(node_dir / "postfix", sink_port=sink.port,
                                      submission_port=config.smtp.port, config_file=config_file)
            cleanup.callback(stopper.stop_later, postfix.stop)
            postfix.prepare()
            postfix.start()
            tracker = ManagedProcess([TXRELAY, "--config", str(config_file), "tracker"],
                                     node_dir / "tracker.log")
            cleanup.callback(stopper.stop_later, tracker.stop)
            tracker.start()
            nodes.append(Node(name, config, config_file, dovecot, milter, postfix, tracker))
        yield TwoNodes(redis, postgres, sink, nodes)
