"""Mail load for fault and multi-node tests, and the invariants it must leave behind.

Clients keep submitting (each message to recipients unique to it, a 4xx'd message sent
again later, as a well-behaved client does) while a test causes a fault. Afterwards:

- every message a client got a 250 for is at the sink exactly once and billed exactly once;
- nothing at the sink is missing from the ledger (non-void rows == recipients relayed);
- quota used == ledger rows billed to quota.
"""

from __future__ import annotations

import contextlib
import email
import re
import smtplib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg

from tests.harness.processes import wait_until
from tests.harness.provision import Provisioned
from tests.harness.return_path import sent_by
from tests.harness.services import CaptureSink
from tests.harness.smtp import Submission, build_message, smtp_session, transact
from txrelay.config import Config

DOMAIN = "rcpt.example.net"


@dataclass
class Load:
    """Clients that keep submitting until stopped; a 4xx'd message is sent again later."""

    shop: Provisioned
    accepted: dict[str, list[str]] = field(default_factory=dict)  # tag -> recipients
    accepted_at: dict[str, float] = field(default_factory=dict)
    accepted_on: dict[str, int] = field(default_factory=dict)  # tag -> port
    refusals: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    deadline: float = 0.0  # after stop: how long clients may go on retrying

    def client(self, number: int, port: int) -> None:
        pending: list[str] = []  # tags refused for now: retried (the same message)
        sequence = 0
        while not self.stop.is_set() or pending:
            if self.stop.is_set() and time.monotonic() > self.deadline:
                return
            try:
                with smtp_session(self.shop.username, self.shop.password, port=port,
                                  timeout=30) as session:
                    while not self.stop.is_set() or pending:
                        if pending:
                            tag = pending.pop(0)
                        else:
                            sequence += 1
                            tag = f"c{number}-{sequence}-{uuid.uuid4().hex[:6]}"
                        if not self.send(session, tag, port):
                            # Postfix tempfails the rest of a session whose milter broke:
                            # retry in a new session, as shop libraries do.
                            pending.append(tag)
                            time.sleep(0.2)
                            break
            except (smtplib.SMTPException, OSError) as exc:
                with self.lock:
                    self.refusals[f"session: {exc.__class__.__name__}"] += 1
                time.sleep(0.3)

    def send(self, session: smtplib.SMTP, tag: str, port: int) -> bool:
        to = [f"{tag}-{i}@{DOMAIN}" for i in range(1 + len(tag) % 2)]
        result = transact(session, self.shop.address(), to,
                          build_message(self.shop.address(), to, subject=tag))
        if result.accepted:
            assert result.delivered_to == to, result
            with self.lock:
                assert tag not in self.accepted
                self.accepted[tag] = to
                self.accepted_at[tag] = time.monotonic()
                self.accepted_on[tag] = port
            return True
        refusal = result.first_refusal()
        assert refusal is not None and refusal.code // 100 == 4, (  # never a 5xx here
            f"{result} after {len(self.accepted)} accepted messages")
        with self.lock:
            self.refusals[f"{refusal.code} {refusal.enhanced}"] += 1
        return False

    def accepted_between(self, start: float, end: float) -> list[str]:
        with self.lock:  # the clients go on adding while the fault runs
            return [tag for tag, at in self.accepted_at.items() if start <= at <= end]


@contextlib.contextmanager
def running_load(shop: Provisioned, ports: Sequence[int], *, clients: int = 3) -> Iterator[Load]:
    """Clients submitting while the block runs (client n to ports[n % len(ports)]);
    afterwards they finish their retries."""
    load = Load(shop)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(load.client, n, ports[n % len(ports)]) for n in range(clients)]
        try:
            time.sleep(2)  # traffic before the fault
            yield load
            time.sleep(2)  # and after the repair
        finally:
            load.deadline = time.monotonic() + 60
            load.stop.set()
            for future in futures:
                future.result(timeout=120)
    assert load.accepted, f"nothing was accepted: {load.refusals}"


SELECT_BILLING = """
SELECT l.recipient, l.billing, l.state
  FROM ledger l WHERE l.account_id = %(a)s"""

SELECT_USED = """
SELECT (SELECT coalesce(sum(used), 0) FROM quota_blocks WHERE account_id = %(a)s) AS used,
       (SELECT count(*) FROM ledger WHERE account_id = %(a)s AND billing = 'quota') AS quota,
       (SELECT count(*) FROM ledger WHERE account_id = %(a)s AND billing = 'pending')
           AS pending"""


@dataclass
class Relay:
    """What the invariants look at: the shared database and sink, and each node's Postfix
    queue and milter log (several relay nodes share the first two)."""

    config: Config  # a node's: the database, and the bounce secret of return paths
    sink: CaptureSink
    flush: Callable[[], None]  # every node's queue flushed
    queue_count: Callable[[], int]
    logs: Callable[[], str]


def sink_recipients(relay: Relay, shop: Provisioned, *,
                    one_per_queue_file: bool = False) -> Counter[str]:
    """How often each recipient reached the sink. one_per_queue_file: copies of one queue
    file count once (Postfix delivers at least once: killed between the next hop's 250 and
    its own bookkeeping, it delivers that queue file again after the restart)."""
    seen: set[tuple[str, str]] = set()
    counted: Counter[str] = Counter()
    for capture in sent_by(relay.sink.captures(), relay.config, shop.address()):
        queue_id = relay_queue_id(capture.raw)
        for recipient in capture.rcpt_tos:
            if one_per_queue_file and (recipient, queue_id) in seen:
                continue
            seen.add((recipient, queue_id))
            counted[recipient] += 1
    return counted


def relay_queue_id(raw: bytes) -> str:
    """The queue id in the topmost Received header (the relay's Postfix added it)."""
    received = email.message_from_bytes(raw).get_all("Received") or [""]
    match = re.search(r"\bid ([0-9A-Za-z]+)", str(received[0]))
    return match[1] if match else ""


def ledger_states(relay: Relay, shop: Provisioned) -> list[tuple[str, str, str]]:
    with psycopg.connect(relay.config.database.url) as conn:
        rows = conn.execute(SELECT_BILLING, {"a": shop.account_id}).fetchall()
    return [(recipient, billing, state) for recipient, billing, state in rows]


def ledger_recipients(relay: Relay, shop: Provisioned, *,
                      including_void: bool = False) -> Counter[str]:
    return Counter(recipient for recipient, billing, _ in ledger_states(relay, shop)
                   if including_void or billing != "void")


def assert_exactly_once(relay: Relay, shop: Provisioned, load: Load, *,
                        postfix_killed: bool = False) -> None:
    """The three invariants, once the queue has drained and unconfirmed rows were voided.
    postfix_killed: a queue file Postfix delivered twice (it was killed between the next
    hop's 250 and its bookkeeping) counts once at the sink; it is billed once."""
    wanted = Counter(r for to in load.accepted.values() for r in to)
    relay.flush()

    def sink_now() -> Counter[str]:
        return sink_recipients(relay, shop, one_per_queue_file=postfix_killed)

    def settled() -> bool:
        sink = sink_now()
        return all(sink[r] >= 1 for r in wanted) and sink == ledger_recipients(relay, shop)

    wait_until(settled, 60, "every accepted recipient at the sink and sink == ledger",
               lambda: difference(relay, shop, wanted, one_per_queue_file=postfix_killed))
    sink = sink_now()
    assert all(sink[r] == 1 for r in wanted), "a recipient reached the sink twice"
    assert max(sink.values()) == 1

    def used_and_billed() -> tuple[int, int, int]:
        with psycopg.connect(relay.config.database.url) as conn:
            row = conn.execute(SELECT_USED, {"a": shop.account_id}).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    # Every recorded row billed by a milter's settler (a restarted milter's first round
    # picks up what a killed one left pending).
    wait_until(lambda: used_and_billed()[2] == 0, 20, "no ledger row left pending",
               relay.logs)
    used, quota, _ = used_and_billed()
    assert used == quota, f"quota used {used} != ledger rows billed to quota {quota}"


def difference(relay: Relay, shop: Provisioned, wanted: Counter[str], *,
               one_per_queue_file: bool = False) -> str:
    sink = sink_recipients(relay, shop, one_per_queue_file=one_per_queue_file)
    ledger = ledger_recipients(relay, shop)
    counted = sorted((r, sink[r], ledger[r]) for r in sink | ledger if sink[r] != ledger[r])
    return (f"missing at sink: {sorted(set(wanted) - set(sink))[:5]}; "
            f"sink not in ledger: {sorted(set(sink) - set(ledger))[:5]}; "
            f"ledger not at sink: {sorted(set(ledger) - set(sink))[:5]}; "
            f"(recipient, at sink, in ledger): {counted[:5]}; "
            f"queue: {relay.queue_count()}\n{relay.logs()}")


def race(shop: Provisioned, ports: list[int]) -> list[Submission]:
    """20 sessions at once, alternating between the ports (services or nodes), each one
    message to 10 recipients of its own: the last-unit race."""
    start = threading.Barrier(20)

    def session(n: int) -> Submission:
        to = [f"race{n}-{i}-{uuid.uuid4().hex[:6]}@{DOMAIN}" for i in range(10)]
        with smtp_session(shop.username, shop.password, port=ports[n % len(ports)]) as s:
            start.wait(30)
            return transact(s, shop.address(), to, build_message(shop.address(), to))

    with ThreadPoolExecutor(max_workers=20) as pool:
        return list(pool.map(session, range(20)))
