"""Faults under load with the real services stopped or killed: nothing lost, nothing counted
twice, and in-limit mail keeps flowing where the design allows it.

Every test runs a few SMTP clients that keep submitting (each message to recipients unique
to it, retried after a 4xx like a well-behaved client), causes one fault mid-run, repairs
it, and then checks the invariants of docs/failure-modes.md:

- every message the client got a 250 for is at the sink exactly once and billed exactly once;
- nothing at the sink is missing from the ledger (non-void rows == recipients relayed);
- quota used == ledger rows billed to quota.

They run on a second stack (tests/harness/stack.py): a private Redis and PostgreSQL, two
milters behind one Postfix, a tracker. The machine's shared instances are never stopped;
each fault is repaired in a finally block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import smtplib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness.load import DOMAIN, SELECT_BILLING, Load, Relay, difference, race
from tests.harness.load import assert_exactly_once as load_assert_exactly_once
from tests.harness.load import ledger_recipients as load_ledger_recipients
from tests.harness.load import running_load as load_running
from tests.harness.load import sink_recipients as load_sink_recipients
from tests.harness.processes import wait_until
from tests.harness.provision import Provisioned, provision, txrelay_json, verify_dkim
from tests.harness.services import MilterProcess
from tests.harness.smtp import build_message, smtp_session, transact
from tests.harness.stack import FaultStack

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def shop(faults: FaultStack) -> Provisioned:
    made = provision(faults.config_file, f"fault-{uuid.uuid4().hex[:8]}", rate_limit=0)
    # Paid, so that the load never runs out (it sends a few thousand recipients in all).
    txrelay_json(faults.config_file, "quota", "book", made.account, "--amount", "25000")
    settle(faults)
    return made


def settle(faults: FaultStack) -> None:
    """Both milters learn of a new connection at their next policy poll."""
    time.sleep(2 * faults.config.milter.policy_refresh_seconds + 0.3)


# -- load and invariants (tests/harness/load.py), on the fault stack -----------------------


def relay_of(faults: FaultStack) -> Relay:
    return Relay(faults.config, faults.sink, faults.postfix.flush,
                 faults.postfix.queue_count, lambda: faults.milter.log(15))


def running_load(faults: FaultStack, shop: Provisioned, *, clients: int = 3,
                 second_node: bool = False) -> contextlib.AbstractContextManager[Load]:
    ports = [faults.port, faults.second_port] if second_node else [faults.port]
    return load_running(shop, ports, clients=clients)


def sink_recipients(faults: FaultStack, shop: Provisioned) -> Counter[str]:
    return load_sink_recipients(relay_of(faults), shop)


def ledger_recipients(faults: FaultStack, shop: Provisioned, *,
                      including_void: bool = False) -> Counter[str]:
    return load_ledger_recipients(relay_of(faults), shop, including_void=including_void)


def assert_exactly_once(faults: FaultStack, shop: Provisioned, load: Load) -> None:
    load_assert_exactly_once(relay_of(faults), shop, load)


def _difference(faults: FaultStack, shop: Provisioned, wanted: Counter[str]) -> str:
    return difference(relay_of(faults), shop, wanted)


def all_delivered(faults: FaultStack, shop: Provisioned) -> bool:
    """Every ledger row of the shop delivered: none voided, none left awaiting its lines."""
    with psycopg.connect(faults.config.database.url) as conn:
        rows = conn.execute(SELECT_BILLING, {"a": shop.account_id}).fetchall()
    return bool(rows) and all(state == "delivered" for _, _, state in rows)


def _states(faults: FaultStack, shop: Provisioned) -> str:
    with psycopg.connect(faults.config.database.url) as conn:
        rows = conn.execute(SELECT_BILLING, {"a": shop.account_id}).fetchall()
    return f"{Counter(state for _, _, state in rows)}\n{faults.tracker.log(20)}"


def accepted_between(load: Load, start: float, end: float) -> list[str]:
    return load.accepted_between(start, end)


# -- the faults ---------------------------------------------------------------------------


def test_redis_stopped_under_load_mail_flows_through_postgresql(
        faults: FaultStack, shop: Provisioned) -> None:
    with running_load(faults, shop) as load:
        faults.redis.stop()
        try:
            stopped = time.monotonic()
            time.sleep(3)
            during = accepted_between(load, stopped + 1, time.monotonic())
        finally:
            faults.redis.start()
    assert during, f"nothing accepted while Redis was down: {load.refusals}"
    assert_exactly_once(faults, shop, load)
    assert "event=redis_recovered" in faults.milter.log(400)


def test_redis_frozen_slower_than_the_deadline_mail_flows_through_postgresql(
        faults: FaultStack, shop: Provisioned) -> None:
    process = faults.redis.process.process
    assert process is not None
    with running_load(faults, shop) as load:
        process.send_signal(signal.SIGSTOP)
        try:
            frozen = time.monotonic()
            time.sleep(3)
            during = accepted_between(load, frozen + 1, time.monotonic())
        finally:
            process.send_signal(signal.SIGCONT)
    assert during, f"nothing accepted while Redis was frozen: {load.refusals}"
    assert_exactly_once(faults, shop, load)


def test_postgresql_stopped_under_load_journals_then_replays_exactly_once(
        faults: FaultStack, tmp_path: Path) -> None:
    shop = fresh_shop(faults, 1000, paid=True)
    journal_dir = Path(faults.config.milter.journal_dir)
    saved = tmp_path / "journal-copy"
    # The tracker runs through the outage, and the test makes sure it reads the journaled
    # messages' log lines BEFORE their rows are replayed (the milter is frozen until then):
    # it must keep them and apply them after the replay, never void those rows.
    try:
        with running_load(faults, shop) as load:
            faults.postgres.stop()
            stopped = time.monotonic()
            time.sleep(4)
            during = accepted_between(load, stopped + 0.5, time.monotonic())
        assert during, f"nothing accepted while PostgreSQL was down: {load.refusals}"
        faults.postfix.flush()
        wait_until(lambda: all(sink_recipients(faults, shop)[r] >= 1
                               for to in load.accepted.values() for r in to),
                   60, "everything accepted delivered while PostgreSQL is down",
                   lambda: _difference(faults, shop, Counter()))
        shutil.copytree(journal_dir, saved)  # for the second replay below
        journaled = journaled_queue_ids(saved)
        assert journaled, "PostgreSQL was down, yet nothing was journaled"
        with frozen(faults.milter):  # no replay until the tracker has read those lines
            faults.postgres.start()
            wait_until(lambda: kept_removals(faults, journaled) == len(journaled), 60,
                       "the tracker read the journaled messages' lines before the replay",
                       lambda: faults.tracker.log(20))
    finally:
        if not faults.postgres.running:
            faults.postgres.start()
    wait_until(lambda: not list(journal_dir.glob("journal-*.jsonl")), 30,
               "the journal replayed", lambda: faults.milter.log(20))
    assert_exactly_once(faults, shop, load)
    wait_until(lambda: all_delivered(faults, shop), 30,
               "every ledger row delivered, none voided", lambda: _states(faults, shop))
    # Signed and delivered while the database was away (the signature verifies).
    raw = faults.sink.wait_for_recipient(load.accepted[during[0]][0]).raw
    assert verify_dkim(raw, faults.config.database.url)
    # Replay the same journal a second time (a restarted milter replays what it finds).
    before = ledger_recipients(faults, shop, including_void=True)
    for copy in saved.glob("journal-*.jsonl"):
        shutil.copy(copy, journal_dir / copy.name)
    faults.milter.stop()
    faults.milter.start()
    wait_until(lambda: not list(journal_dir.glob("journal-*.jsonl")), 30,
               "the journal replayed at start", lambda: faults.milter.log(20))
    assert ledger_recipients(faults, shop, including_void=True) == before
    assert_exactly_once(faults, shop, load)
    assert all_delivered(faults, shop), _states(faults, shop)
    assert kept_removals(faults, journaled) == 0


def journaled_queue_ids(directory: Path) -> set[str]:
    return {json.loads(line)["queue_id"] for path in directory.glob("journal-*.jsonl")
            for line in path.read_text().splitlines() if line.endswith("}")}


def kept_removals(faults: FaultStack, queue_ids: set[str]) -> int:
    """How many of these queue ids have their qmgr 'removed' line kept by the tracker."""
    with psycopg.connect(faults.config.database.url) as conn:
        row = conn.execute("SELECT count(DISTINCT queue_id) FROM tracker_pending_events "
                           "WHERE queue_id = ANY(%s) AND line LIKE %s",
                           (list(queue_ids), "%: removed%")).fetchone()
    return int(row[0]) if row is not None else 0


@contextlib.contextmanager
def frozen(milter: MilterProcess) -> Iterator[None]:
    """The milter stopped (SIGSTOP) for the block: its journal replay waits."""
    process = milter.process.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


# Past the ~10 s at which Dovecot 2.3.19's auth process, with an SQL passdb, died at its
# failed PostgreSQL reconnect (docs/failure-modes.md): the logins below need no PostgreSQL.
OUTAGE_BEFORE_LOGIN_SECONDS = 22


def logins_in_file(faults: FaultStack) -> set[str]:
    """The user names in the fault stack's SMTP login file (Dovecot's passdb)."""
    text = Path(faults.config.dovecot.passdb_file).read_text()
    return {line.split(":", 1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def refused_login(faults: FaultStack, username: str, password: str) -> int:
    """The SMTP code a new session's AUTH gets (it must be refused)."""
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused, \
            smtp_session(username, password, port=faults.port):
        pass
    return refused.value.smtp_code


def test_a_connection_that_never_logged_in_logs_in_well_into_a_postgresql_outage(
        faults: FaultStack) -> None:
    """Dovecot checks the login against the node's login file (no cache, no PostgreSQL):
    a connection created before the outage logs in for the first time 20+ s into it; a wrong
    password and a connection disabled before the outage are refused for good (535).

    Another connection of the account sends first, so that Redis holds the account's balance
    (without it the milter refuses at RCPT while PostgreSQL is down: docs/failure-modes.md)."""
    sender = fresh_shop(faults, 1000, paid=True)
    created = txrelay_json(faults.config_file, "connection", "create", sender.account,
                           "Never logged in", "--domain", sender.domain)
    shop = dataclasses.replace(sender, connection=created["connection"],
                               username=created["username"], password=created["password"])
    disabled = fresh_shop(faults, 1000, paid=True)
    txrelay_json(faults.config_file, "connection", "disable", disabled.username)
    settle(faults)
    assert shop.username in logins_in_file(faults)
    assert disabled.username not in logins_in_file(faults)
    before = [f"login-before-{uuid.uuid4().hex[:8]}@{DOMAIN}"]
    during = [f"login-during-{uuid.uuid4().hex[:8]}@{DOMAIN}"]
    with smtp_session(sender.username, sender.password, port=faults.port) as session:
        assert transact(session, sender.address(), before,
                        build_message(sender.address(), before)).accepted
    log_start = faults.dovecot.log_path.stat().st_size
    faults.postgres.stop()
    try:
        time.sleep(OUTAGE_BEFORE_LOGIN_SECONDS)
        with smtp_session(shop.username, shop.password, port=faults.port) as session:
            result = transact(session, shop.address(), during,
                              build_message(shop.address(), during, subject="outage"))
        assert result.accepted, (result, faults.milter.log(20))
        assert refused_login(faults, shop.username, shop.password + "x") == 535
        assert refused_login(faults, disabled.username, disabled.password) == 535
        faults.postfix.flush()
        capture = faults.sink.wait_for_recipient(during[0], timeout=30)
    finally:
        faults.postgres.start()
    dovecot_log = faults.dovecot.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "killed with signal" not in dovecot_log, dovecot_log[-2000:]
    assert verify_dkim(capture.raw, faults.config.database.url)
    wait_until(lambda: ledger_recipients(faults, shop)[during[0]] == 1, 30,
               "the message accepted during the outage in the ledger",
               lambda: faults.milter.log(20))
    wait_until(lambda: all_delivered(faults, shop), 30, "both messages delivered",
               lambda: _states(faults, shop))
    assert ledger_recipients(faults, shop, including_void=True) == Counter(before + during)
    assert sink_recipients(faults, shop) == Counter(before + during)


def test_milter_killed_under_load_loses_and_double_counts_nothing(
        faults: FaultStack, shop: Provisioned) -> None:
    with running_load(faults, shop, clients=4) as load:
        for _ in range(2):
            faults.milter.kill()
            try:
                time.sleep(1)
            finally:
                faults.milter.start()
            time.sleep(1.5)
    assert load.refusals, "the kills were not noticed by any client"
    assert_exactly_once(faults, shop, load)


def test_tracker_killed_under_load_every_outcome_recorded_once(
        faults: FaultStack, shop: Provisioned) -> None:
    with running_load(faults, shop) as load:
        faults.tracker.kill()
        try:
            time.sleep(2)
        finally:
            faults.tracker.start()
    assert_exactly_once(faults, shop, load)

    def all_delivered_or_voided() -> bool:
        with psycopg.connect(faults.config.database.url) as conn:
            rows = conn.execute(SELECT_BILLING, {"a": shop.account_id}).fetchall()
        return all(state in ("delivered", "voided") for _, _, state in rows)

    wait_until(all_delivered_or_voided, 30, "every ledger row delivered",
               lambda: faults.tracker.log(20))


def test_postfix_reloaded_under_load(faults: FaultStack, shop: Provisioned) -> None:
    with running_load(faults, shop, second_node=True) as load:
        faults.postfix.reload()
        time.sleep(1)
        faults.postfix.reload()
    assert_exactly_once(faults, shop, load)


# -- races and retries --------------------------------------------------------------------


def fresh_shop(faults: FaultStack, quota: int, *, paid: bool = False) -> Provisioned:
    made = provision(faults.config_file, f"shop-{uuid.uuid4().hex[:8]}", rate_limit=0)
    with psycopg.connect(faults.config.database.url) as conn:
        conn.execute("UPDATE quota_blocks SET amount = %s WHERE account_id = %s",
                     (quota, made.account_id))
    if paid:
        txrelay_json(faults.config_file, "quota", "book", made.account, "--amount", "25000")
    settle(faults)
    return made


@pytest.mark.parametrize("nodes", [1, 2], ids=["one-milter", "two-milters"])
def test_last_unit_race_accepts_exactly_the_quota(faults: FaultStack, nodes: int) -> None:
    shop = fresh_shop(faults, 100)
    ports = [faults.port, faults.second_port][:nodes]
    results = race(shop, ports)
    replies = Counter(reply.code for r in results for reply in r.rcpts.values())
    assert replies[250] == 100 and replies[550] == 100, replies
    accepted = [rcpt for r in results for rcpt in r.delivered_to]
    assert len(accepted) == 100
    faults.postfix.flush()
    wait_until(lambda: sum(sink_recipients(faults, shop).values()) == 100, 30, "100 at sink")
    assert sum(ledger_recipients(faults, shop).values()) == 100


def test_client_retrying_after_a_4xx_is_billed_once(faults: FaultStack,
                                                    shop: Provisioned) -> None:
    to = [f"retry-{uuid.uuid4().hex[:8]}@{DOMAIN}"]
    message = build_message(shop.address(), to, subject="retry")
    with smtp_session(shop.username, shop.password, port=faults.port) as session:
        faults.milter.kill()  # Postfix answers the transaction with 4xx (tempfail)
        try:
            first = transact(session, shop.address(), to, message)
        finally:
            faults.milter.start()
    assert not first.accepted and first.first_refusal() is not None

    def retried() -> bool:  # the client tries again, in a new session, until accepted
        with smtp_session(shop.username, shop.password, port=faults.port) as session:
            return transact(session, shop.address(), to, message).accepted

    wait_until(retried, 30, "the retry accepted", lambda: faults.milter.log(30))
    faults.postfix.flush()
    wait_until(lambda: sink_recipients(faults, shop)[to[0]] == 1, 30, "retry at the sink")
    assert ledger_recipients(faults, shop)[to[0]] == 1


def test_duplicate_recipients_in_one_message_are_billed_once(faults: FaultStack,
                                                            shop: Provisioned) -> None:
    rcpt = f"dup-{uuid.uuid4().hex[:8]}@{DOMAIN}"
    to = [rcpt, rcpt, rcpt.upper().replace(DOMAIN.upper(), DOMAIN)]
    with smtp_session(shop.username, shop.password, port=faults.port) as session:
        result = transact(session, shop.address(), to, build_message(shop.address(), [rcpt]))
    assert result.data is not None and result.data.code == 250, (result, faults.milter.log(30))
    faults.postfix.flush()
    wait_until(lambda: sink_recipients(faults, shop)[rcpt] >= 1, 30, "dup at the sink")
    time.sleep(1)  # a second copy, had Postfix queued one, would be there by now
    # Postfix's duplicate filter keys on address + NOTIFY + ORCPT, case-folded: these three
    # RCPTs are one copy, and one copy is billed (tests/e2e/test_hostile_input.py has the
    # RCPTs that are several copies).
    assert sink_recipients(faults, shop)[rcpt] == 1
    assert ledger_recipients(faults, shop)[rcpt] == 1
