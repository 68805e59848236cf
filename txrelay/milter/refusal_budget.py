"""Each connection's budget of refused messages per clock hour, shared by every node.

A message refused with 5xx gives its quota back, so without a bound a client could make the
relay parse hostile headers all day for free. Past [milter] refusal_budget_per_hour refused
messages in one clock hour (UTC), the connection's MAIL gets 421 4.7.0 until the hour moves
on. The count lives in Redis (one INCR per refusal, at most one GET per connection and
second at MAIL), so all nodes share it. While Redis is away (the reservations' degraded
mode, or an error here) each node counts in memory: the budget then holds per node.

It lives beside the milter rather than in txrelay/store/ while another change owns that
package; its two Redis commands need no Lua script, since INCR is atomic by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from txrelay.clock import Clock
from txrelay.policy.verdict import Verdict

log = logging.getLogger("txrelay.milter")
HOUR = 3600
SHARED_COUNT_SECONDS = 1.0


class Refusals(Protocol):
    """Each connection's refused messages this hour, and the 421 once it has had its fill."""

    def spent(self, connection_id: int) -> int | None:
        """The refusals counted this hour when they reach the budget, else None."""
        ...

    def count(self, connection_id: int) -> None:
        """One more refused message for this connection in this hour."""
        ...

    def refusal(self, connection_name: str, count: int) -> Verdict:
        """The MAIL reply for a connection that has spent its budget."""
        ...


def budget_refusal(connection_name: str, count: int, clock: Clock) -> Verdict:
    """421 until the next clock hour (UTC), when the connection's budget is back."""
    start = (int(clock.now().timestamp()) // HOUR + 1) * HOUR
    return Verdict.tempfail(
        "421",
        "4.7.0",
        f'connection "{connection_name}" had {count} messages refused '
        f"this hour, the most the relay takes: fix what those refusals said, then send "
        f"again after {start // HOUR % 24:02d}:00 UTC",
    )


class RefusalBudget:
    """Counts refusals per (connection, hour) and says when a connection has spent its
    budget. Thread-safe: Redis calls are, and the local counts sit behind a lock.

    The shared count read from Redis is kept for SHARED_COUNT_SECONDS, so MAIL costs at
    most one GET per connection per second and process, not one per message; a refusal
    on another node is seen within that second."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        budget: int,
        clock: Clock,
        redis_degraded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.budget = budget  # 0: no budget
        self.clock = clock
        self.redis_degraded = redis_degraded
        self._lock = threading.Lock()
        self._local: dict[tuple[int, int], int] = {}  # this process's refusals
        self._shared: dict[tuple[int, int], tuple[int, float]] = {}  # Redis count, read at

    def spent(self, connection_id: int) -> int | None:
        """The refusals counted this hour when they reach the budget, else None."""
        if self.budget <= 0:
            return None
        slot = (connection_id, self._hour())
        with self._lock:
            count = self._local.get(slot, 0)
            shared, read_at = self._shared.get(slot, (0, -SHARED_COUNT_SECONDS))
        if time.monotonic() - read_at >= SHARED_COUNT_SECONDS and not self.redis_degraded():
            try:
                shared = int(self.client.get(self._key(*slot)) or 0)
            except redis.RedisError as exc:
                log.warning(
                    "event=refusal_budget_unavailable error=%r (counting on this node)",
                    exc.__class__.__name__,
                )
            else:
                self._remember(slot, shared)
        count = max(count, shared)
        return count if count >= self.budget else None

    def count(self, connection_id: int) -> None:
        """One more refused message for this connection in this hour."""
        if self.budget <= 0:
            return
        slot = (connection_id, self._hour())
        with self._lock:
            self._local = {k: v for k, v in self._local.items() if k[1] >= slot[1]}
            self._local[slot] = self._local.get(slot, 0) + 1
        if self.redis_degraded():
            return
        key = self._key(*slot)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 2 * HOUR)
            shared, _ = pipe.execute()
        except redis.RedisError as exc:
            log.warning(
                "event=refusal_budget_unavailable error=%r (counting on this node)",
                exc.__class__.__name__,
            )
        else:
            self._remember(slot, int(shared))

    def _remember(self, slot: tuple[int, int], shared: int) -> None:
        with self._lock:
            self._shared = {k: v for k, v in self._shared.items() if k[1] >= slot[1]}
            self._shared[slot] = (shared, time.monotonic())

    def refusal(self, connection_name: str, count: int) -> Verdict:
        return budget_refusal(connection_name, count, self.clock)

    def _hour(self) -> int:
        return int(self.clock.now().timestamp()) // HOUR

    def _key(self, connection_id: int, hour: int) -> str:
        return f"{self.key_prefix}:refused:{connection_id}:{hour}"
