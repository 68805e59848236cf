"""A 30 MB message while small messages keep flowing (issue 12 item 9): the big one is
signed, delivered and verifies; a second client's small messages keep being accepted while
it is in flight. Timings are printed; the only time bounds are generous sanity checks."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.provision import Provisioned, txrelay_json, verify_dkim
from tests.harness.smtp import build_message, smtp_session, transact

pytestmark = pytest.mark.e2e

BIG_BYTES = 30 * 1000 * 1000  # 30 MB as received; under [milter] max_message_size (30 MiB)


def big_message(shop: Provisioned, rcpt: str) -> bytes:
    """About BIG_BYTES: a small text part, then 76-character base64-like lines, the way an
    attachment arrives."""
    head = build_message(shop.address(), [rcpt], subject="Your invoices (30 MB)",
                         body="The archive of your invoices.\r\n")
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    return head + line * ((BIG_BYTES - len(head)) // len(line))


@dataclass
class SmallClient:
    """One session sending small messages until told to stop: (start, end, accepted)."""

    shop: Provisioned
    port: int
    sent: list[tuple[float, float, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with smtp_session(self.shop.username, self.shop.password, port=self.port) as client:
            while not self.stop.is_set():
                rcpt = f"small-{uuid.uuid4().hex[:8]}@rcpt.example.net"
                started = time.monotonic()
                result = transact(client, self.shop.address(), [rcpt],
                                  build_message(self.shop.address(), [rcpt]))
                self.sent.append((started, time.monotonic(), result.accepted))
                time.sleep(0.05)

    def during(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [s for s in self.sent if start <= s[0] and s[1] <= end]


def test_thirty_megabyte_message_is_signed_and_delivered_while_small_ones_keep_flowing(
        relay: RelayStack) -> None:
    shop = relay.provision(rate_limit=0)
    txrelay_json(relay.config_file, "quota", "book", shop.account, "--amount", "25000")
    relay.settle_policy()
    rcpt = f"big-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    raw = big_message(shop, rcpt)
    small = SmallClient(shop, relay.port)
    thread = threading.Thread(target=small.run, name="small-client")
    thread.start()
    try:
        time.sleep(1)  # the small client is flowing before the big one starts
        with smtp_session(shop.username, shop.password, port=relay.port,
                          timeout=300) as client:
            started = time.monotonic()
            result = transact(client, shop.address(), [rcpt], raw)
            finished = time.monotonic()
        time.sleep(1)
    finally:
        small.stop.set()
        thread.join(timeout=120)
    assert result.delivered_to == [rcpt], result
    during = small.during(started, finished)
    latencies = [end - start for start, end, _ in small.sent]
    print(f"\n{len(raw) / 1e6:.1f} MB message: 250 after {finished - started:.1f} s; "
          f"small messages: {len(small.sent)} in all, {len(during)} accepted while it was "
          f"in flight; latency median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")
    assert all(accepted for _, _, accepted in small.sent), small.sent
    assert len(during) >= 2, "small messages stopped while the big one was in flight"
    assert finished - started < 300  # sanity only
    arrived_at = time.monotonic()
    captured = relay.sink.wait_for_recipient(rcpt, timeout=180)
    print(f"at the sink {time.monotonic() - arrived_at:.1f} s after the 250")
    assert len(captured.raw) >= BIG_BYTES - 1000
    verify_started = time.monotonic()
    assert verify_dkim(captured.raw, relay.database_url)
    print(f"dkimpy verified it in {time.monotonic() - verify_started:.1f} s")
