"""In-memory implementations of the milter's store Protocols, for tests that need no services.

Each keeps the rules of its real counterpart (tests/store/test_store_contract.py runs the same
cases against both): the ledger records a txn_id once and counts its recipients against the
account's units; the reservations follow reserve.lua, commit.lua and release.lua; the policy
hands out one snapshot; the refusal budget counts per connection and clock hour. Setting
`unavailable` on the ledger or the reservations makes every call fail as its service would.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.store.builders import Tenant, key_pair
from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.milter.refusal_budget import HOUR, budget_refusal
from txrelay.milter.runtime import Runtime
from txrelay.policy.quota import Reservation, ReservationStatus
from txrelay.policy.snapshot import (
    AccountPolicy,
    ConnectionPolicy,
    DomainPolicy,
    PolicySnapshot,
    effective_rate_limit,
)
from txrelay.policy.suppression import Suppressed
from txrelay.policy.verdict import Verdict
from txrelay.signing import load_signing_key
from txrelay.store.ledger import AcceptedMessage, Allocation, Recorded
from txrelay.store.recording import LedgerUnavailable
from txrelay.store.reservations import RedisUnavailable, ReservationRequest
from txrelay.store.sandbox import CapturedMessage, SandboxUnavailable
from txrelay.store.suppression_cache import bucket_of

RATE_WINDOW = 3600.0  # reserve.lua's sliding hour


class MemoryLedger:
    """The Ledger Protocol in memory: units granted per account, messages by txn_id."""

    def __init__(self) -> None:
        self.units: dict[int, int] = {}
        self.messages: dict[str, AcceptedMessage] = {}
        self.unavailable = False
        self._row_ids = itertools.count(1)
        self._lock = threading.Lock()

    def grant(self, account_id: int, units: int) -> None:
        """A quota block of `units` for the account (a booking, or its demo quota)."""
        with self._lock:
            self.units[account_id] = self.units.get(account_id, 0) + units

    def record(self, message: AcceptedMessage) -> Recorded:
        self._check()
        with self._lock:
            if str(message.txn_id) in self.messages:
                return Recorded(None, [])
            self.messages[str(message.txn_id)] = message
            row_id = next(self._row_ids)
        return Recorded(row_id, [Allocation(r, "pending", None) for r in message.recipients])

    def remaining_quota(self, account_id: int) -> int:
        self._check()
        with self._lock:
            return max(0, self.units.get(account_id, 0) - self._used(account_id))

    def overage_used(self, account_id: int, period: str) -> int:
        """Recipients beyond the account's units (one period: the memory ledger has no time)."""
        self._check()
        with self._lock:
            return max(0, self._used(account_id) - self.units.get(account_id, 0))

    def _used(self, account_id: int) -> int:
        return sum(len(m.recipients) for m in self.messages.values()
                   if m.account_id == account_id)

    def _check(self) -> None:
        if self.unavailable:
            raise LedgerUnavailable("PostgreSQL did not answer (memory ledger set unavailable)")


class MemoryReservations:
    """The ReservationStore Protocol in memory, with reserve.lua's statuses and numbers."""

    def __init__(self, load_balance: Callable[[int], int], ttl_seconds: int = 60,
                 now: Callable[[], float] = time.time,
                 load_overage: Callable[[int, str], int] | None = None) -> None:
        self.load_balance = load_balance
        self.load_overage = load_overage
        self.overage: dict[tuple[int, str], int] = {}  # (account, period) -> overage units
        self.ttl_seconds = ttl_seconds
        self.now = now
        self.unavailable = False
        self.balance: dict[int, int] = {}
        self.held: dict[int, dict[str, float]] = {}  # account -> member -> expiry
        self.rate: dict[tuple[int, int], dict[str, float]] = {}  # (account, conn) -> member -> at
        self._lock = threading.Lock()

    def reserve(self, request: ReservationRequest) -> Reservation:
        self._check()
        if not request.quota:
            with self._lock:
                return self._reserve_rate_only(request, self.now())
        if request.account_id not in self.balance:
            remaining = self.load_balance(request.account_id)
            with self._lock:
                self.balance.setdefault(request.account_id, remaining)
        slot = (request.account_id, request.period)
        if request.overage_cap is not None and slot not in self.overage:
            if self.load_overage is None:
                raise ValueError("this reservation store was built without an overage loader")
            used = self.load_overage(*slot)
            with self._lock:
                self.overage.setdefault(slot, used)
        with self._lock:
            return self._reserve(request, self.now())

    def _reserve_rate_only(self, request: ReservationRequest, now: float) -> Reservation:
        """reserve.lua with ARGV[7] '0' (a sandbox recipient): the rate, no quota unit."""
        rate = self.rate.setdefault((request.account_id, request.connection_id), {})
        if request.member in rate:
            return Reservation(ReservationStatus.DUPLICATE, 0, 0)
        if request.rate_limit > 0:
            for member in [m for m, at in rate.items() if at <= now - RATE_WINDOW]:
                del rate[member]
            if len(rate) >= request.rate_limit:
                return Reservation(ReservationStatus.RATE_LIMITED, 0,
                                   min(rate.values()) + RATE_WINDOW - now)
            rate[request.member] = now
        return Reservation(ReservationStatus.RESERVED, 0, 0)

    def _reserve(self, request: ReservationRequest, now: float) -> Reservation:
        held = self.held.setdefault(request.account_id, {})
        for member in [m for m, expiry in held.items() if expiry <= now]:
            del held[member]
        if request.member in held:
            return Reservation(ReservationStatus.DUPLICATE, 0, 0)
        available = self.balance[request.account_id] - len(held)
        if available <= 0 and not request.paid:
            return Reservation(ReservationStatus.QUOTA_EXHAUSTED, available, 0)
        cap = request.overage_cap
        used = self.overage.get((request.account_id, request.period), 0)
        if available <= 0 and cap is not None and used - available >= cap:
            return Reservation(ReservationStatus.OVERAGE_CAP, available, 0)
        if request.rate_limit > 0:
            rate = self.rate.setdefault((request.account_id, request.connection_id), {})
            for member in [m for m, at in rate.items() if at <= now - RATE_WINDOW]:
                del rate[member]
            if len(rate) >= request.rate_limit:
                retry = min(rate.values()) + RATE_WINDOW - now
                return Reservation(ReservationStatus.RATE_LIMITED, available, retry)
            rate[request.member] = now
        held[request.member] = now + self.ttl_seconds
        status = ReservationStatus.OVERAGE if available <= 0 else ReservationStatus.RESERVED
        return Reservation(status, available - 1, 0)

    def commit(self, account_id: int, members: Sequence[str], units: int,
               period: str = "") -> int:
        self._check()
        with self._lock:
            held = self.held.setdefault(account_id, {})
            removed = sum(1 for m in members if held.pop(m, None) is not None)
            slot = (account_id, period)
            if account_id in self.balance:
                left = self.balance[account_id] - units
                self.balance[account_id] = max(0, left)
                if left < 0 and slot in self.overage:
                    self.overage[slot] -= left
            else:
                self.overage.pop(slot, None)
            return removed

    def release(self, account_id: int, connection_id: int, members: Sequence[str]) -> int:
        self._check()
        with self._lock:
            held = self.held.setdefault(account_id, {})
            rate = self.rate.setdefault((account_id, connection_id), {})
            removed = sum(1 for m in members if held.pop(m, None) is not None)
            for member in members:
                rate.pop(member, None)
            return removed

    def held_count(self, account_id: int) -> int:
        return len(self.held.get(account_id, {}))

    def _check(self) -> None:
        if self.unavailable:
            raise RedisUnavailable("Redis did not answer (memory reservations set unavailable)")


class MemoryPolicy:
    """The PolicySource Protocol in memory: one snapshot, rebuilt when a tenant is added."""

    def __init__(self, demo_rate_limit: int) -> None:
        self.demo_rate_limit = demo_rate_limit
        self.current: PolicySnapshot | None = PolicySnapshot(0, {}, {}, {})
        self._ids = itertools.count(1)

    def snapshot_for_login(self, login: str | None) -> PolicySnapshot | None:
        return self.current

    def refresh(self) -> bool:
        return self.current is not None

    def add_tenant(self, unique: str, *, paid: bool = False, rate_limit: int | None = None,
                   enabled: bool = True, algorithm: str = "rsa",
                   connection_name: str = "Web shop", overage_cap: int | None = None,
                   disabled: bool = False, own_return_path: bool = False,
                   bounces: str = "relay", sandbox: bool = False,
                   published: bool = True) -> Tenant:
        """What tests/store/builders.make_tenant inserts, as a new snapshot."""
        current = self.current or PolicySnapshot(0, {}, {}, {})
        keys = key_pair(algorithm)
        account_id, connection_id = next(self._ids), next(self._ids)
        domain = f"shop-{unique}.example"
        tenant = Tenant(account_id, f"Account {unique}", connection_id, connection_name,
                        f"u{unique}", domain, "txr202611", f"https://{domain}/help", keys)
        connection = ConnectionPolicy(
            connection_id, connection_name, account_id, enabled, frozenset({domain}),
            effective_rate_limit(rate_limit, paid, self.demo_rate_limit),
            keep_bounces=bounces == "keep", sandbox=sandbox)
        signing_key = load_signing_key(algorithm, keys.private_key_pem)
        self.current = PolicySnapshot(
            current.version + 1,
            {**current.connections, tenant.username: connection},
            {**current.domains, domain: DomainPolicy(
                domain, account_id, tenant.list_help, tenant.selector, algorithm, signing_key,
                return_path=f"bounces.{domain}" if own_return_path else "",
                published=published)},
            {**current.accounts, account_id: AccountPolicy(account_id, paid, tenant.account_name,
                                                           disabled, overage_cap)})
        return tenant


class MemorySuppressions:
    """The SuppressionList Protocol in memory: what suppress/remove wrote, as the cache holds
    it after its next read, and the refused counts per (connection, 15-minute bucket)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.entries: dict[tuple[int, str], Suppressed] = {}
        self.counts: dict[tuple[int, dt.datetime], int] = {}
        self._lock = threading.Lock()

    def suppress(self, account_id: int, address: str, reason: str = "hard_bounce",
                 *, dsn: str | None = "5.1.1", expires_at: dt.datetime | None = None) -> None:
        self.entries[(account_id, address.lower())] = Suppressed(
            reason, self.clock.now(), expires_at, dsn)

    def remove(self, account_id: int, address: str) -> None:
        self.entries.pop((account_id, address.lower()), None)

    def lookup(self, account_id: int, address: str) -> Suppressed | None:
        entry = self.entries.get((account_id, address))
        return entry if entry is not None and entry.active(self.clock.now()) else None

    def count_refused(self, connection_id: int) -> None:
        with self._lock:
            key = (connection_id, bucket_of(self.clock.now()))
            self.counts[key] = self.counts.get(key, 0) + 1


class MemoryRefusals:
    """The Refusals Protocol in memory: refused messages per (connection, clock hour)."""

    def __init__(self, budget: int, clock: Clock) -> None:
        self.budget = budget  # 0: no budget
        self.clock = clock
        self.counts: dict[tuple[int, int], int] = {}

    def spent(self, connection_id: int) -> int | None:
        if self.budget <= 0:
            return None
        count = self.counts.get((connection_id, self._hour()), 0)
        return count if count >= self.budget else None

    def count(self, connection_id: int) -> None:
        if self.budget > 0:
            slot = (connection_id, self._hour())
            self.counts[slot] = self.counts.get(slot, 0) + 1

    def refusal(self, connection_name: str, count: int) -> Verdict:
        return budget_refusal(connection_name, count, self.clock)

    def _hour(self) -> int:
        return int(self.clock.now().timestamp()) // HOUR


class MemorySandbox:
    """The Sandbox Protocol in memory: captured messages by txn_id, the first one kept."""

    def __init__(self) -> None:
        self.messages: dict[str, CapturedMessage] = {}
        self.unavailable = False

    def capture(self, message: CapturedMessage) -> None:
        if self.unavailable:
            raise SandboxUnavailable("PostgreSQL did not answer (memory sandbox unavailable)")
        self.messages.setdefault(str(message.txn_id), message)


@dataclass
class MemoryStores:
    """One in-memory world: the stores a Runtime is made of, for the test to steer."""

    ledger: MemoryLedger
    reservations: MemoryReservations
    policy: MemoryPolicy
    refusals: MemoryRefusals
    suppressions: MemorySuppressions
    closed: list[bool] = field(default_factory=list)
    sandbox: MemorySandbox = field(default_factory=lambda: MemorySandbox())

    def add_tenant(self, unique: str, *, demo_quota: int = 1000, paid: bool = False,
                   **options: object) -> Tenant:
        tenant = self.policy.add_tenant(unique, paid=paid, **options)  # type: ignore[arg-type]
        self.ledger.grant(tenant.account_id, demo_quota)
        return tenant


def memory_stores(config: Config, clock: Clock, refusal_budget: int = 0) -> MemoryStores:
    ledger = MemoryLedger()
    return MemoryStores(ledger,
                        MemoryReservations(ledger.remaining_quota,
                                           config.milter.reservation_ttl_seconds,
                                           load_overage=ledger.overage_used),
                        MemoryPolicy(config.quota.demo_rate_limit),
                        MemoryRefusals(refusal_budget, clock),
                        MemorySuppressions(clock))


def memory_runtime(config: Config, clock: Clock, stores: MemoryStores) -> Runtime:
    """A Runtime with nothing behind it but these in-memory stores."""
    return Runtime(config, "test-node", clock, stores.policy, stores.reservations,
                   stores.ledger, stores.refusals, stores.suppressions,
                   lambda: stores.closed.append(True), sandbox=stores.sandbox)
