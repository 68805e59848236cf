"""Each connection's budget of refused messages per clock hour, shared by every node.

A message refused with 5xx gives its quota back, so without a bound a client could make the
relay parse hostile headers all day for free. Past [milter] refusal_budget_per_hour refused
messages in one clock hour (UTC), the connection's MAIL gets 421 4.7.0 until the hour moves
on. The count lives in Redis (one INCR per refusal, one GET per MAIL), so all nodes share
it. While Redis is away (the reservations' degraded mode, or an error here) each node
counts in memory: the budget then holds per node, not across nodes.

It lives beside the milter rather than in txrelay/store/ while another change owns that
package; its two Redis commands need no Lua script, since INCR is atomic by itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from txrelay.clock import Clock
from txrelay.policy.verdict import Verdict

log = logging.getLogger("txrelay.milter")
HOUR = 3600


class RefusalBudget:
    """Counts refusals per (connection, hour) and says when a connection has spent its
    budget. Thread-safe: Redis calls are, and the local counts sit behind a lock."""

    def __init__(self, client: redis.Redis, key_prefix: str, budget: int, clock: Clock,
                 redis_degraded: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.budget = budget  # 0: no budget
        self.clock = clock
        self.redis_degraded = redis_degraded
        self._lock = threading.Lock()
        self._local: dict[tuple[int, int], int] = {}

    def spent(self, connection_id: int) -> int | None:
        """The refusals counted this hour when they reach the budget, else None."""
        if self.budget <= 0:
            return None
        hour = self._hour()
        count = self._local_count(connection_id, hour)
        if not self.redis_degraded():
            try:
                count = max(count, int(self.client.get(self._key(connection_id, hour)) or 0))
            except redis.RedisError as exc:
                log.warning("event=refusal_budget_unavailable error=%r (counting on this "
                            "node)", exc.__class__.__name__)
        return count if count >= self.budget else None

    def count(self, connection_id: int) -> None:
        """One more refused message for this connection in this hour."""
        if self.budget <= 0:
            return
        hour = self._hour()
        with self._lock:
            self._local = {k: v for k, v in self._local.items() if k[1] >= hour}
            self._local[(connection_id, hour)] = self._local.get((connection_id, hour), 0) + 1
        if self.redis_degraded():
            return
        key = self._key(connection_id, hour)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 2 * HOUR)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("event=refusal_budget_unavailable error=%r (counting on this node)",
                        exc.__class__.__name__)

    def next_hour(self) -> str:
        """When the budget is back, for the reply: e.g. '14:00 UTC'."""
        start = (self._hour() + 1) * HOUR
        return f"{start // HOUR % 24:02d}:00 UTC"

    def refusal(self, connection_name: str, count: int) -> Verdict:
        return Verdict.tempfail(
            "421", "4.7.0", f"connection \"{connection_name}\" had {count} messages refused "
            f"this hour, the most the relay takes: fix what those refusals said, then send "
            f"again after {self.next_hour()}")

    def _local_count(self, connection_id: int, hour: int) -> int:
        with self._lock:
            return self._local.get((connection_id, hour), 0)

    def _hour(self) -> int:
        return int(self.clock.now().timestamp()) // HOUR

    def _key(self, connection_id: int, hour: int) -> str:
        return f"{self.key_prefix}:refused:{connection_id}:{hour}"
