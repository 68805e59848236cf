"""Two complete relay nodes against one, on this machine: the same smtp-source load through
one node, then split across two (issue 15 item 5).

A node here is what tests/harness/two_nodes.py starts for the e2e tests, on the bench's
shared pieces (its PostgreSQL database, Redis key space, account and smtp-sink): a Postfix
instance of its own (own configuration, queue and maillog) with a plain-SMTP listener whose
milter is the node's own `txrelay milter` (own node name), and the node's `txrelay tracker`
following that maillog. Both nodes are started fresh for this scenario, so each tracker
reads only its node's mail. The one-node run sends every message to node A (node B idles);
the two-node run sends half to each, with the same number of concurrent sessions in all.

Two nodes on one machine share its cores: on 2 cores the ratio shows what a second node
costs (two Postfix instances, milters and trackers competing for the same CPUs), not how
txrelay scales out; that needs a machine per node.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import backing
from bench.checks import check_count, check_signed
from bench.messages import write_message_file
from bench.postfix import BenchPostfix
from bench.procs import BenchFailure, ManagedProcess, free_port, machine_busy_ms, wait_until
from bench.scenarios import RECIPIENT, SMTP_SOURCE_SESSIONS, Measurement
from bench.stack import TX_UNIX, Stack, TxrelayMilter

SCENARIO = "nodes"
NODE_NAMES = ("bench-node-a", "bench-node-b")
NOTE = ("on this machine's cores both nodes compete for the same CPUs: the ratio shows a "
        "second node's overhead, not scale-out (that needs a machine per node)")

COUNT_BY_NODE = """
SELECT m.node, count(*) AS messages,
       count(*) FILTER (WHERE l.state = 'delivered') AS delivered
  FROM messages m JOIN ledger l ON l.message_id = m.id
 WHERE m.node = ANY(%(nodes)s) GROUP BY m.node"""


@dataclass
class Node:
    name: str
    postfix: BenchPostfix
    milter: TxrelayMilter
    tracker: ManagedProcess

    @property
    def port(self) -> int:
        return self.postfix.listeners[TX_UNIX].port


@contextlib.contextmanager
def bench_nodes(stack: Stack) -> Iterator[list[Node]]:
    """Both nodes up (Postfix, milter, tracker each); whatever happens, down at the end."""
    with contextlib.ExitStack() as cleanup:
        nodes = []
        for name in NODE_NAMES:
            root = stack.root / name
            root.mkdir(mode=0o755)
            socket = f"unix:{root}/milter.sock"
            milter = TxrelayMilter(stack.config_file, root / "milter.log", socket, name)
            cleanup.callback(milter.daemon.stop)
            milter.start(stack.config)
            postfix = BenchPostfix(root / "postfix", sink_port=stack.sink.port,
                                   submission_port=free_port(), config_file=stack.config_file,
                                   txrelay=backing.TXRELAY)
            postfix.prepare_listeners([(TX_UNIX, socket, stack.sender.username)])
            cleanup.callback(postfix.stop)
            postfix.start()
            tracker = ManagedProcess(
                [backing.TXRELAY, "--config", str(stack.config_file), "tracker",
                 "--node", name, "--log-path", str(postfix.maillog)], root / "tracker.log")
            cleanup.callback(tracker.stop)
            tracker.start()
            nodes.append(Node(name, postfix, milter, tracker))
        yield nodes


def send(stack: Stack, nodes: list[Node], count: int, results: Path, sequence: int,
         verify_sample: int) -> Measurement:
    """`count` 10 KB messages, smtp-source's sessions split evenly over `nodes`; timed until
    every message is at the sink and every queue is empty. Then checked: the count, a sample
    of signatures, each node's ledger rows, and each node's tracker recording them."""
    path = write_message_file(stack.root / "messages", 10_000, sender=stack.sender.address,
                              recipient=RECIPIENT)
    share = count // len(nodes)
    before = _by_node(stack)
    busy_before = machine_busy_ms()
    started = time.perf_counter()
    sources = [subprocess.Popen(
        ["smtp-source", "-s", str(SMTP_SOURCE_SESSIONS // len(nodes)), "-m", str(share),
         "-F", str(path), "-f", stack.sender.address, "-t", RECIPIENT,
         "-M", "client.bench.test", f"127.0.0.1:{node.port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for node in nodes]
    for node, source in zip(nodes, sources, strict=True):
        _out, err = source.communicate(timeout=600 + count)
        if source.returncode != 0:
            raise BenchFailure(f"{SCENARIO}/{node.name}: smtp-source exited "
                               f"{source.returncode}: {err.decode(errors='replace')[-500:]}")
    sent = share * len(nodes)
    what = f"{SCENARIO}/{len(nodes)} node{'s' if len(nodes) > 1 else ''}"
    wait_until(lambda: stack.sink.count() >= sent and _queued(nodes) == 0,
               120 + sent / 2, f"{what}: {sent} messages at the sink",
               lambda: f"sink has {stack.sink.count()}, queues {_queued(nodes)}",
               interval=0.02)
    delivered_at = time.perf_counter()
    elapsed = delivered_at - started
    busy_ms = machine_busy_ms() - busy_before
    time.sleep(0.2)  # a duplicate delivery would show up now
    dumps = stack.sink.collect(results / "sink" / f"{sequence:03d}-{what.replace('/', '-')}")
    check_count(what, sent=sent, accepted=sent, delivered=len(dumps), queued=_queued(nodes))
    verified = check_signed(what, dumps, stack.targets[TX_UNIX].signer, verify_sample,
                            sequence)
    for dump in dumps:
        dump.unlink()
    # From the last delivery (the checks above included): how far the trackers lag.
    lag = _trackers_caught_up(stack, nodes, before, share, what) - delivered_at
    load = float(Path("/proc/loadavg").read_text().split()[0])
    return Measurement(SCENARIO, what.split("/", 1)[1], 10_000, sent, round(elapsed, 3),
                       round(sent / elapsed, 1),
                       machine_cpu_ms_per_msg=round(busy_ms / sent, 2), verified=verified,
                       extra={"load1": load, "tracker_lag_s": round(lag, 2),
                              "nodes": [node.name for node in nodes]})


def _queued(nodes: list[Node]) -> int:
    return sum(node.postfix.queued() for node in nodes)


def _by_node(stack: Stack) -> dict[str, tuple[int, int]]:
    """node -> (ledger rows, of them delivered) of the scenario's nodes."""
    with psycopg.connect(stack.config.database.url) as conn:
        rows = conn.execute(COUNT_BY_NODE, {"nodes": list(NODE_NAMES)}).fetchall()
    return {str(node): (int(messages), int(delivered)) for node, messages, delivered in rows}


def _trackers_caught_up(stack: Stack, nodes: list[Node], before: dict[str, tuple[int, int]],
                        share: int, what: str) -> float:
    """Each node recorded its share, and its tracker marks it delivered: the moment
    (perf_counter) both trackers had."""

    def recorded() -> bool:
        now = _by_node(stack)
        for node in nodes:
            messages, delivered = now.get(node.name, (0, 0))
            was_messages, was_delivered = before.get(node.name, (0, 0))
            if messages - was_messages != share:
                raise BenchFailure(f"{what}: node {node.name} recorded "
                                   f"{messages - was_messages} ledger rows, expected {share}")
            if delivered - was_delivered < share:
                return False
        return True

    wait_until(recorded, 120, f"{what}: every node's tracker recorded its deliveries",
               lambda: "\n".join(f"--- {node.name} tracker\n{node.tracker.log()}"
                                 for node in nodes), interval=0.05)
    return time.perf_counter()
