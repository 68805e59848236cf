"""Bounce → suppressed → refused, end to end through real Postfix, two milter nodes, the
capture sink (bounce-* gets 550 5.1.1, defer-* 451 4.2.0) and the tracker as the admin runs
it. The stack is this module's own: its Postfix gives up on a deferred message after
QUEUE_LIFETIME, and its [suppression] soft_bounce_limit is 1, so one expired recipient is
suppressed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, Stopper, free_port, port_open, run, wait_until
from tests.harness.provision import Provisioned
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from tests.harness.smtp import Submission, build_message, submit
from tests.harness.stack import _add_second_submission, _second_node_config
from tests.harness.stackconfig import write_stack_config
from txrelay.config import Config, SuppressionConfig, load_config

pytestmark = pytest.mark.e2e

RCPT_DOMAIN = "rcpt.example.net"
QUEUE_LIFETIME = "20s"  # Postfix's maximal_queue_lifetime in this module's instance


@dataclasses.dataclass
class TwoNodes:
    relay: RelayStack  # node 1: its milter behind the first submission port
    second: MilterProcess  # node 2: same databases, its own milter and submission port
    second_port: int


@pytest.fixture(scope="module")
def nodes(config: Config, e2e_dir: Path, stopper: Stopper) -> Iterator[TwoNodes]:
    directory = e2e_dir / "suppression"
    base = dataclasses.replace(
        config,
        suppression=SuppressionConfig(soft_bounce_limit=1),
        milter=dataclasses.replace(config.milter, node_name=f"supp-1-{uuid.uuid4().hex[:6]}"),
    )
    port = free_port()
    config_file = write_stack_config(base, directory, submission_port=port)
    first = load_config(config_file, required=True, environ={})
    second_file = _second_node_config(first, directory)
    second_config = load_config(second_file, required=True, environ={})
    started: list[Callable[[], None]] = []
    try:
        dovecot = DovecotService(first)
        started.append(dovecot.stop)
        dovecot.start()
        (directory / "sink").mkdir()
        sink = CaptureSink(directory / "sink")
        started.append(sink.stop)
        sink.start()
        milter = MilterProcess(first, config_file, directory / "milter.log")
        started.append(milter.stop)
        milter.start()
        second = MilterProcess(second_config, second_file, directory / "milter2.log")
        started.append(second.stop)
        second.start()
        postfix = PostfixInstance(directory / "postfix", sink_port=sink.port,
                                  submission_port=port, config_file=config_file)
        started.append(postfix.stop)
        postfix.prepare()
        postfix.postconf(f"maximal_queue_lifetime={QUEUE_LIFETIME}",
                         f"bounce_queue_lifetime={QUEUE_LIFETIME}")
        second_port = free_port()
        _add_second_submission(postfix, first, second_config, second_port)
        postfix.start()
        wait_until(lambda: port_open(second_port), 15, "second submission port")
        relay = RelayStack(first, config_file, first.database.url, dovecot, sink, postfix,
                           milter)
        yield TwoNodes(relay, second, second_port)
    finally:
        for stop in reversed(started):
            stopper.stop_later(stop)


def cli(relay: RelayStack, *args: str, check: bool = True) -> Any:
    done = run([TXRELAY, "--config", str(relay.config_file), "--json", *args],
               env=dict(os.environ), timeout=120, check=check)
    return json.loads(done.stdout) if check else done


def query(relay: RelayStack, sql: str, *params: object) -> list[dict[str, Any]]:
    with psycopg.connect(relay.database_url, row_factory=dict_row, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def state_of(relay: RelayStack, account_id: int, recipient: str) -> set[str]:
    return {r["state"] for r in query(
        relay, "SELECT state FROM ledger WHERE account_id = %s AND recipient = %s",
        account_id, recipient)}


def track_until(relay: RelayStack, done: Callable[[], bool], timeout: float = 60) -> None:
    def attempt() -> bool:
        cli(relay, "tracker", "--once")
        return done()

    wait_until(attempt, timeout, "the tracker to record the outcome",
               lambda: relay.postfix.log(30))


def suppression_row(relay: RelayStack, account_id: int, address: str) -> dict[str, Any] | None:
    rows = query(relay, "SELECT * FROM suppressions WHERE account_id = %s AND address = %s",
                 account_id, address)
    return rows[0] if rows else None


def node_learnt(milter: MilterProcess, relay: RelayStack, account_id: int,
                address: str) -> None:
    """Wait until this milter logged that it read the row's current version."""
    row = suppression_row(relay, account_id, address)
    assert row is not None
    wanted = f"event=suppression_changed account={account_id} change_id={row['change_id']} "

    def learnt() -> bool:
        return wanted in milter.process.log_path.read_text(errors="replace")

    wait_until(learnt, 20, f"the milter to read suppression change {row['change_id']}",
               milter.log)


def provision(nodes: TwoNodes) -> Provisioned:
    shop = nodes.relay.provision()
    wait_until(lambda: nodes.second.loaded_policy_version()
               >= nodes.relay.milter.loaded_policy_version(), 20,
               "the second milter to load the policy", nodes.second.log)
    return shop


def send(shop: Provisioned, recipients: list[str], port: int) -> Submission:
    return submit(shop.username, shop.password, shop.address(), recipients,
                  build_message(shop.address(), recipients), port=port)


def assert_suppressed_reply(result: Submission, address: str, reason: str) -> None:
    reply = result.rcpts[address]
    assert (reply.code, reply.enhanced) == (550, "5.1.1"), reply
    assert re.search(rf"<{re.escape(address)}> is suppressed for this account since "
                     rf"\d{{4}}-\d\d-\d\d \({re.escape(reason)}", reply.text), reply.text
    assert "ask your relay admin to remove it" in reply.text


def test_a_hard_bounce_is_suppressed_and_the_next_mail_refused_at_rcpt_unbilled(
        nodes: TwoNodes) -> None:
    relay = nodes.relay
    shop = provision(nodes)
    gone = f"bounce-{uuid.uuid4().hex[:8]}@{RCPT_DOMAIN}"
    assert send(shop, [gone], relay.port).delivered_to == [gone]
    track_until(relay, lambda: state_of(relay, shop.account_id, gone) == {"bounced"})
    row = suppression_row(relay, shop.account_id, gone)
    assert row is not None and (row["reason"], row["dsn"]) == ("hard_bounce", "5.1.1")
    assert "550 5.1.1" in row["detail"] and row["source_ledger_id"] is not None
    before = relay.usage(shop.account_id)
    node_learnt(relay.milter, relay, shop.account_id, gone)
    ok = f"still-fine-{uuid.uuid4().hex[:8]}@{RCPT_DOMAIN}"
    result = send(shop, [ok, gone], relay.port)
    assert_suppressed_reply(result, gone, "hard bounce 5.1.1")
    assert result.delivered_to == [ok]
    after = relay.usage(shop.account_id)
    assert (after.ledger_rows, after.used) == (before.ledger_rows + 1, before.used + 1)
    # The other node refuses it too, within its refresh interval.
    node_learnt(nodes.second, relay, shop.account_id, gone)
    alone = send(shop, [gone], nodes.second_port)
    assert_suppressed_reply(alone, gone, "hard bounce 5.1.1")
    assert alone.delivered_to == [] and relay.usage(shop.account_id) == after
    [stats] = cli(relay, "stats", "--account", shop.account)
    assert stats["bounced"] == 1
    wait_until(lambda: cli(relay, "stats", "--account", shop.account)[0]["suppressed"] == 2,
               20, "both milters to add their refused counts")


def test_a_deferred_recipient_bounces_after_the_queue_lifetime_billed_and_suppressed(
        nodes: TwoNodes) -> None:
    relay = nodes.relay
    shop = provision(nodes)
    later = f"defer-{uuid.uuid4().hex[:8]}@{RCPT_DOMAIN}"
    assert send(shop, [later], relay.port).delivered_to == [later]
    track_until(relay, lambda: state_of(relay, shop.account_id, later) == {"deferred"}, 15)
    [deferred] = query(relay, "SELECT dsn, last_event FROM ledger WHERE account_id = %s",
                       shop.account_id)
    assert deferred["dsn"] == "4.2.0" and "451 4.2.0" in deferred["last_event"]
    track_until(relay, lambda: state_of(relay, shop.account_id, later) == {"bounced"}, 120)
    [bounced] = query(relay, "SELECT dsn, last_event, bounce_kind, billing FROM ledger "
                             "WHERE account_id = %s", shop.account_id)
    assert (bounced["dsn"], bounced["bounce_kind"]) == ("4.2.0", "soft")
    assert bounced["last_event"] == "expired, returned to sender"
    assert "status=expired, returned to sender" in relay.postfix.log(200)
    # Billed: each recipient of an accepted message costs one mail, bounced ones too.
    assert bounced["billing"] == "quota" and relay.usage(shop.account_id).used == 1
    row = suppression_row(relay, shop.account_id, later)
    assert row is not None and row["reason"] == "soft_bounces"  # soft_bounce_limit = 1
    assert row["expires_at"] is not None  # [suppression] soft_bounces_days
    node_learnt(relay.milter, relay, shop.account_id, later)
    result = send(shop, [later], relay.port)
    assert_suppressed_reply(result, later, "repeated soft bounces 4.2.0")
    assert relay.usage(shop.account_id).used == 1


def test_suppression_add_and_remove_reach_both_nodes(nodes: TwoNodes) -> None:
    relay = nodes.relay
    shop = provision(nodes)
    address = f"unsubscribed-{uuid.uuid4().hex[:8]}@{RCPT_DOMAIN}"
    added = cli(relay, "suppression", "add", shop.account, address, "--note", "by phone")
    assert added["reason"] == "manual" and added["changed"] is True
    node_learnt(nodes.second, relay, shop.account_id, address)
    assert_suppressed_reply(send(shop, [address], nodes.second_port), address,
                            "added by the relay admin")
    node_learnt(relay.milter, relay, shop.account_id, address)
    assert_suppressed_reply(send(shop, [address], relay.port), address,
                            "added by the relay admin")
    shown = cli(relay, "suppression", "show", shop.account, address)
    assert (shown["status"], shown["detail"]) == ("active", "by phone")
    cli(relay, "suppression", "remove", shop.account, address)
    node_learnt(relay.milter, relay, shop.account_id, address)
    node_learnt(nodes.second, relay, shop.account_id, address)
    assert send(shop, [address], relay.port).delivered_to == [address]
    assert send(shop, [address], nodes.second_port).delivered_to == [address]
    relay.sink.wait_for_recipient(address)
    again = cli(relay, "suppression", "remove", shop.account, address, check=False)
    assert again.returncode == 3 and "is not suppressed" in again.stderr
