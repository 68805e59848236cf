"""Reserves, commits and releases per-recipient quota and rate units in Redis.

Each RCPT is one round trip to reserve.lua: it checks the connection's sliding-hour rate
and the account's live balance and holds one unit for "<txn>|<recipient>". At end of
message, after PostgreSQL has recorded the recipients, commit.lua turns the held units into
consumption; an aborted or refused transaction gives them back with release.lua.

Orphaned reservations — a milter that crashed or was killed between RCPT and end of
message — are never committed nor released: each held member carries its own expiry
([milter] reservation_ttl_seconds) and reserve.lua purges expired members before it
decides, so the units return by themselves. Their rate members age out of the hour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from txrelay.errors import ServiceUnavailable
from txrelay.policy.quota import Reservation, ReservationStatus
from txrelay.store.keys import AccountKeys
from txrelay.store.scripts import register

# reserve.lua's status numbers; the PostgreSQL fallback's RESERVE_HOLD answers with the same.
RESERVE_STATUSES = {
    1: ReservationStatus.RESERVED,
    2: ReservationStatus.OVERAGE,
    3: ReservationStatus.DUPLICATE,
    4: ReservationStatus.RATE_LIMITED,
    5: ReservationStatus.QUOTA_EXHAUSTED,
    6: ReservationStatus.NEED_BALANCE,
    7: ReservationStatus.OVERAGE_CAP,
}
NO_CAP = -1  # reserve.lua's ARGV[5] for an account without an overage cap
OVERAGE_KEY_TTL_SECONDS = 40 * 86400  # a period's counter outlives its month


@dataclass(frozen=True)
class ReservationRequest:
    account_id: int
    connection_id: int
    member: str  # "<txn>|<recipient lower-cased>"
    rate_limit: int  # 0 = unlimited
    paid: bool
    overage_cap: int | None = None  # recipients per period beyond quota; None = no cap
    period: str = ""  # the billing period "YYYY-MM" the recipient is accepted in
    # False: rate only (a sandbox connection: captured mail, never billed); no quota unit
    # is held, so commit has nothing to take and release gives back the rate unit.
    quota: bool = True


def reservation_member(txn_id: str, recipient: str) -> str:
    return f"{txn_id}|{recipient.lower()}"


class RedisUnavailable(ServiceUnavailable):
    """Redis did not answer in time ([redis] timeout_ms) or refused the script."""


class ReservationStore(Protocol):
    """Atomic rate and quota reservations across every relay node: reserve at RCPT, commit at
    end of message, release on abort. Redis normally, PostgreSQL while Redis is away.

    reserve holds a unit for one "<txn>|<recipient>" member (or says why not); commit drops
    a recorded message's holds and takes the units the ledger billed to quota (what does not
    fit counts toward `period`'s overage); release gives an unrecorded transaction's units
    back. Failures are ServiceUnavailable (451)."""

    def reserve(self, request: ReservationRequest) -> Reservation: ...

    def commit(
        self, account_id: int, members: Sequence[str], units: int, period: str = ""
    ) -> int: ...

    def release(self, account_id: int, connection_id: int, members: Sequence[str]) -> int: ...


class RedisReservations:
    """The Redis implementation; thread-safe (redis-py's client pools its connections)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_seconds: int,
        load_balance: Callable[[int], int],
        load_overage: Callable[[int, str], int] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.load_balance = load_balance  # account id -> remaining quota per PostgreSQL
        # (account id, period) -> overage recipients in the period per PostgreSQL; None: this
        # store refuses requests with an overage cap (stores built for tests without caps).
        self.load_overage = load_overage
        self._reserve = register(client, "reserve")
        self._commit = register(client, "commit")
        self._release = register(client, "release")

    def reserve(self, request: ReservationRequest) -> Reservation:
        """One unit for one recipient; loads the balance from PostgreSQL the first time."""
        result = self._run_reserve(request)
        if result.status is ReservationStatus.NEED_BALANCE and request.quota:
            self._load(request)
            result = self._run_reserve(request)
            if result.status is ReservationStatus.NEED_BALANCE:
                raise RedisUnavailable("Redis lost the quota balance it was just given")
        return result

    def _load(self, request: ReservationRequest) -> None:
        """The balance and, for a capped account, the period's overage count, from PostgreSQL
        (NX: a value another node loaded or moved meanwhile wins)."""
        keys = AccountKeys(self.prefix, request.account_id)
        remaining = self.load_balance(request.account_id)
        self._call(lambda: self.client.set(keys.balance, remaining, nx=True))
        if request.overage_cap is None:
            return
        if self.load_overage is None:
            raise ValueError("this reservation store was built without an overage loader")
        used = self.load_overage(request.account_id, request.period)
        self._call(lambda: self.client.hsetnx(keys.overage, request.period, used))
        self._call(lambda: self.client.expire(keys.overage, OVERAGE_KEY_TTL_SECONDS))

    def _run_reserve(self, request: ReservationRequest) -> Reservation:
        keys = AccountKeys(self.prefix, request.account_id)
        cap = NO_CAP if request.overage_cap is None else request.overage_cap
        args = [
            request.member,
            self.ttl_seconds,
            request.rate_limit,
            int(request.paid),
            cap,
            request.period,
            int(request.quota),
        ]
        raw = self._call(
            lambda: self._reserve(
                keys=[keys.balance, keys.held, keys.rate(request.connection_id), keys.overage],
                args=args,
            )
        )
        status, remaining, retry_ms = (int(x) for x in raw)
        return Reservation(RESERVE_STATUSES[status], remaining, retry_ms / 1000)

    def commit(self, account_id: int, members: Sequence[str], units: int, period: str = "") -> int:
        """The recipients are in the ledger: drop their holds and take the units the ledger
        billed to quota from the live balance (overage units were never in it; they count
        toward `period`'s overage)."""
        keys = AccountKeys(self.prefix, account_id)
        return int(
            self._call(
                lambda: self._commit(
                    keys=[keys.balance, keys.held, keys.overage], args=[units, period, *members]
                )
            )
        )

    def release(self, account_id: int, connection_id: int, members: Sequence[str]) -> int:
        """The transaction was not recorded: give back its quota and rate units."""
        if not members:
            return 0
        keys = AccountKeys(self.prefix, account_id)
        return int(
            self._call(
                lambda: self._release(
                    keys=[keys.held, keys.rate(connection_id)], args=list(members)
                )
            )
        )

    @staticmethod
    def _call(operation: Callable[[], Any]) -> Any:
        try:
            return operation()
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"Redis did not answer ({exc.__class__.__name__}: {exc})"
            ) from exc
