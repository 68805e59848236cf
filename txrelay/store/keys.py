"""The Redis key layout, in one place: every key of an account shares one cluster hash tag."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccountKeys:
    """Keys of one account. The {a<id>} hash tag keeps them in one Redis Cluster slot, so a
    Lua script may touch all of them atomically.

    balance   string  quota units left according to PostgreSQL's ledger (may go negative
                      for overage); changed only by INCRBY/DECRBY deltas, never overwritten
                      while the milters run (txrelay quota reconcile is the exception)
    held      zset    reservations not yet committed: member "<txn>|<recipient>", score =
                      unix time at which the reservation expires by itself
    rate:<c>  zset    recipients accepted or held for connection <c> in the sliding hour:
                      member "<txn>|<recipient>", score = unix time of the reservation
    overage   hash    billing period "YYYY-MM" -> overage recipients committed in it (the
                      overage cap's counter; loaded from PostgreSQL's txrelay_overage_used,
                      then moved by commit.lua; only for accounts with a cap)
    """

    prefix: str
    account_id: int

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{a{self.account_id}}}"

    @property
    def balance(self) -> str:
        return f"{self.tag}:balance"

    @property
    def held(self) -> str:
        return f"{self.tag}:held"

    @property
    def overage(self) -> str:
        return f"{self.tag}:overage"

    def rate(self, connection_id: int) -> str:
        return f"{self.tag}:rate:{connection_id}"
