"""A soak through the real relay with every writer of the ledger at work at once: the milter
recording, its settler billing, the tracker applying delivered, deferred and bounced lines,
voiding and the quota tick. PostgreSQL must report no deadlock, and ledger, sink and quota
must agree exactly (issue 12, item 8; the lock order is migration 0014's)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.harness.bulk import Envelope, Outcome, send_parallel
from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, ManagedProcess, wait_until
from tests.harness.provision import Provisioned, txrelay_json
from tests.harness.smtp import build_message

pytestmark = pytest.mark.e2e

SHOPS = 4
MAILS_PER_SHOP = 600  # 2,400 in all: about a minute on two cores
SESSIONS_PER_SHOP = 2
RCPT_DOMAIN = "rcpt.example.net"


def query(relay: RelayStack, sql: str, *params: object) -> list[dict[str, Any]]:
    with psycopg.connect(relay.database_url, row_factory=dict_row, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def deadlocks(relay: RelayStack) -> int:
    return int(query(relay, "SELECT deadlocks FROM pg_stat_database "
                            "WHERE datname = current_database()")[0]["deadlocks"])


def recipient(token: str, shop: int, n: int) -> tuple[str, str]:
    """The n-th mail's recipient and the state the tracker must end with: the capture sink
    defers defer-*@ (451) and bounces bounce-*@ (550)."""
    if n % 10 == 3:
        return f"defer-{token}-{shop}-{n}@{RCPT_DOMAIN}", "deferred"
    if n % 15 == 7:
        return f"bounce-{token}-{shop}-{n}@{RCPT_DOMAIN}", "bounced"
    return f"soak-{token}-{shop}-{n}@{RCPT_DOMAIN}", "delivered"


@pytest.fixture()
def shops(relay: RelayStack) -> list[Provisioned]:
    """Paid accounts (a booked block of 25,000) with unlimited connections."""
    made = relay.provision_many(SHOPS, rate_limit=0)
    for shop in made:
        txrelay_json(relay.config_file, "quota", "book", shop.account, "--amount", "25000")
    relay.settle_policy()
    return made


@pytest.fixture()
def busy_tracker(relay: RelayStack, e2e_dir: Path) -> Iterator[ManagedProcess]:
    """`txrelay tracker` as the admin runs it, its quota tick every second instead of every
    minute, so that ticks settle and lock blocks while the lines are applied."""
    env = {**os.environ, "TXRELAY_TRACKER_TICK_INTERVAL_SECONDS": "1"}
    process = ManagedProcess([TXRELAY, "--config", str(relay.config_file), "tracker"],
                             e2e_dir / "soak-tracker.log", env=env)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def send_all(relay: RelayStack, shops: list[Provisioned],
             plan: dict[str, str], token: str) -> dict[str, Outcome]:
    def one_shop(index: int) -> dict[str, Outcome]:
        shop = shops[index]
        envelopes = []
        for n in range(MAILS_PER_SHOP):
            rcpt, state = recipient(token, index, n)
            plan[rcpt] = state
            envelopes.append(Envelope(rcpt, shop.address(), rcpt,
                                      build_message(shop.address(), [rcpt])))
        return send_parallel(shop.username, shop.password, relay.port, envelopes,
                             sessions=SESSIONS_PER_SHOP)

    with ThreadPoolExecutor(max_workers=SHOPS) as pool:
        results = list(pool.map(one_shop, range(SHOPS)))
    return {key: outcome for result in results for key, outcome in result.items()}


def ledger_states(relay: RelayStack, accounts: list[int]) -> dict[str, str]:
    rows = query(relay, "SELECT recipient, state FROM ledger WHERE account_id = ANY(%s)",
                 accounts)
    return {row["recipient"]: row["state"] for row in rows}


def drop_deferred(relay: RelayStack, recipients: set[str]) -> None:
    """The soak's deferred mails would be retried for the rest of the session: deleted."""
    ids = [str(entry["queue_id"]) for entry in relay.postfix.queue()
           if {r["address"] for r in entry["recipients"]} & recipients]  # type: ignore[attr-defined]
    if ids:
        subprocess.run(["postsuper", "-c", str(relay.postfix.config_directory), "-d", "-"],
                       input="\n".join(ids) + "\n", text=True, check=True, timeout=60,
                       capture_output=True)


def test_soak_with_tracker_and_settler_has_no_deadlock_and_ledger_sink_and_quota_agree(
        relay: RelayStack, shops: list[Provisioned], busy_tracker: ManagedProcess) -> None:
    token = uuid.uuid4().hex[:6]
    accounts = [shop.account_id for shop in shops]
    plan: dict[str, str] = {}
    before = deadlocks(relay)
    try:
        outcomes = send_all(relay, shops, plan, token)
        refused = {k: o.reply for k, o in outcomes.items() if not o.accepted}
        assert refused == {}
        wait_until(lambda: ledger_states(relay, accounts) == plan, 120,
                   "the tracker to record every outcome",
                   lambda: busy_tracker.log(20) + relay.postfix.log(10))
    finally:
        drop_deferred(relay, {r for r, state in plan.items() if state == "deferred"})

    assert deadlocks(relay) == before
    assert "deadlock" not in busy_tracker.log(100_000)
    assert "deadlock" not in relay.milter.log(100_000)

    delivered = sorted(r for r, state in plan.items() if state == "delivered")
    at_sink = sorted(rcpt for capture in relay.sink.captures() for rcpt in capture.rcpt_tos
                     if token in rcpt)
    assert at_sink == delivered  # each delivered recipient once; none deferred or bounced
    for shop in shops:
        usage = relay.usage(shop.account_id)  # once the settler has billed every row
        assert (usage.messages, usage.ledger_rows, usage.overage_rows, usage.used) == (
            MAILS_PER_SHOP, MAILS_PER_SHOP, 0, MAILS_PER_SHOP)
    billing = query(relay, "SELECT billing, count(*) AS n FROM ledger "
                           "WHERE account_id = ANY(%s) GROUP BY billing", accounts)
    assert {(row["billing"], row["n"]) for row in billing} == {("quota", SHOPS * MAILS_PER_SHOP)}
