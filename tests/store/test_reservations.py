"""reserve.lua / commit.lua / release.lua against the real Redis (DB 9)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis

from txrelay.policy.quota import ReservationStatus
from txrelay.store.keys import AccountKeys
from txrelay.store.reservations import (
    RedisReservations,
    ReservationRequest,
    reservation_member,
)

ACCOUNT = 7
CONNECTION = 70


def reservations(client: redis.Redis, prefix: str, balance: int | None = None, *,
                 ttl: int = 60, loaded: list[int] | None = None) -> RedisReservations:
    def load_balance(account_id: int) -> int:
        if loaded is not None:
            loaded.append(account_id)
        return 5

    store = RedisReservations(client, prefix, ttl, load_balance)
    if balance is not None:
        client.set(AccountKeys(prefix, ACCOUNT).balance, balance)
    return store


def request(member: str, *, rate_limit: int = 0, paid: bool = False) -> ReservationRequest:
    return ReservationRequest(ACCOUNT, CONNECTION, member, rate_limit, paid)


def test_reservation_within_quota_holds_one_unit(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=10)
    result = store.reserve(request("t1|a@x.example"))
    assert result.status is ReservationStatus.RESERVED
    assert result.remaining == 9
    assert redis_client.zcard(AccountKeys(prefix, ACCOUNT).held) == 1


def test_missing_balance_is_loaded_from_postgresql_once(redis_client: redis.Redis,
                                                        prefix: str) -> None:
    loaded: list[int] = []
    store = reservations(redis_client, prefix, loaded=loaded)
    first = store.reserve(request("t1|a@x.example"))
    second = store.reserve(request("t1|b@x.example"))
    assert loaded == [ACCOUNT]
    assert (first.status, first.remaining) == (ReservationStatus.RESERVED, 4)
    assert second.remaining == 3
    assert redis_client.get(AccountKeys(prefix, ACCOUNT).balance) == b"5"


def test_demo_account_out_of_quota_is_refused(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=1)
    assert store.reserve(request("t1|a@x.example")).status is ReservationStatus.RESERVED
    refused = store.reserve(request("t1|b@x.example"))
    assert refused.status is ReservationStatus.QUOTA_EXHAUSTED
    assert redis_client.zcard(AccountKeys(prefix, ACCOUNT).held) == 1


def test_paid_account_out_of_quota_goes_on_as_overage(redis_client: redis.Redis,
                                                      prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=0)
    result = store.reserve(request("t1|a@x.example", paid=True))
    assert result.status is ReservationStatus.OVERAGE
    assert result.remaining == -1


def test_duplicate_recipient_in_one_transaction_counts_once(redis_client: redis.Redis,
                                                            prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=10)
    member = reservation_member("t1", "A@X.example")
    assert member == "t1|a@x.example"
    store.reserve(request(member, rate_limit=5))
    again = store.reserve(request(member, rate_limit=5))
    assert again.status is ReservationStatus.DUPLICATE
    keys = AccountKeys(prefix, ACCOUNT)
    assert redis_client.zcard(keys.held) == 1
    assert redis_client.zcard(keys.rate(CONNECTION)) == 1


def test_hourly_rate_refuses_beyond_the_limit_and_says_when(redis_client: redis.Redis,
                                                            prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=100)
    for n in range(3):
        assert store.reserve(request(f"t{n}|a@x.example", rate_limit=3)).status is \
            ReservationStatus.RESERVED
    limited = store.reserve(request("t9|a@x.example", rate_limit=3))
    assert limited.status is ReservationStatus.RATE_LIMITED
    assert 3590 < limited.retry_after <= 3600
    assert redis_client.zcard(AccountKeys(prefix, ACCOUNT).held) == 3


def test_rate_window_slides_old_members_out(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=100)
    keys = AccountKeys(prefix, ACCOUNT)
    server_now = float(redis_client.time()[0])
    redis_client.zadd(keys.rate(CONNECTION), {"old1|a@x": server_now - 3700,
                                              "old2|a@x": server_now - 3601})
    assert store.reserve(request("t1|a@x.example", rate_limit=1)).status is \
        ReservationStatus.RESERVED
    assert redis_client.zrange(keys.rate(CONNECTION), 0, -1) == [b"t1|a@x.example"]


def test_unlimited_rate_leaves_no_rate_key(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=100)
    store.reserve(request("t1|a@x.example", rate_limit=0))
    assert not redis_client.exists(AccountKeys(prefix, ACCOUNT).rate(CONNECTION))


def test_commit_consumes_balance_and_keeps_rate(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=10)
    members = ["t1|a@x.example", "t1|b@x.example"]
    for member in members:
        store.reserve(request(member, rate_limit=5))
    assert store.commit(ACCOUNT, members, units=2) == 2
    keys = AccountKeys(prefix, ACCOUNT)
    assert redis_client.get(keys.balance) == b"8"
    assert redis_client.zcard(keys.held) == 0
    assert redis_client.zcard(keys.rate(CONNECTION)) == 2


def test_commit_without_balance_key_leaves_it_to_the_next_load(redis_client: redis.Redis,
                                                               prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=10)
    store.reserve(request("t1|a@x.example"))
    redis_client.delete(AccountKeys(prefix, ACCOUNT).balance)
    assert store.commit(ACCOUNT, ["t1|a@x.example"], units=1) == 1
    assert not redis_client.exists(AccountKeys(prefix, ACCOUNT).balance)


def test_overage_commit_leaves_the_balance_at_zero_like_postgresql(
        redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=1)
    members = ["t1|a@x.example", "t1|b@x.example", "t1|c@x.example"]
    for member in members:
        store.reserve(request(member, paid=True))
    assert store.commit(ACCOUNT, members, units=1) == 3  # the ledger billed 1 to quota
    assert redis_client.get(AccountKeys(prefix, ACCOUNT).balance) == b"0"


def test_release_gives_back_quota_and_rate(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=1)
    store.reserve(request("t1|a@x.example", rate_limit=1))
    assert store.release(ACCOUNT, CONNECTION, ["t1|a@x.example"]) == 1
    again = store.reserve(request("t2|a@x.example", rate_limit=1))
    assert again.status is ReservationStatus.RESERVED
    assert redis_client.get(AccountKeys(prefix, ACCOUNT).balance) == b"1"


def test_orphaned_reservation_expires_by_itself(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=1, ttl=1)
    store.reserve(request("crashed|a@x.example"))
    assert store.reserve(request("t2|a@x.example")).status is \
        ReservationStatus.QUOTA_EXHAUSTED
    time.sleep(1.2)
    assert store.reserve(request("t2|a@x.example")).status is ReservationStatus.RESERVED
    assert redis_client.zrange(AccountKeys(prefix, ACCOUNT).held, 0, -1) == [b"t2|a@x.example"]


def test_racing_threads_get_exactly_the_balance(redis_client: redis.Redis, prefix: str) -> None:
    store = reservations(redis_client, prefix, balance=100)
    outcomes: Counter[ReservationStatus] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(20)

    def worker(n: int) -> None:
        start.wait()
        for i in range(10):
            status = store.reserve(request(f"t{n}|r{i}@x.example")).status
            with lock:
                outcomes[status] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {ReservationStatus.RESERVED: 100, ReservationStatus.QUOTA_EXHAUSTED: 100}
    assert redis_client.zcard(AccountKeys(prefix, ACCOUNT).held) == 100


def test_redis_down_is_a_service_unavailable_error(prefix: str) -> None:
    from txrelay.errors import ServiceUnavailable

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    store = RedisReservations(dead, prefix, 60, lambda account_id: 0)
    with pytest.raises(ServiceUnavailable, match="Redis"):
        store.reserve(request("t1|a@x.example"))
