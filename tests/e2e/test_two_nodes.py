"""Two complete relay nodes (tests/harness/two_nodes.py) sharing PostgreSQL and Redis: mail
through both at once, the last-unit race across both, one node's Postfix killed with
SIGKILL under load and restarted. The ledger, the sink and the quota agree exactly, every
message is recorded by the node that took it, and each tracker records only its node's
mail."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness.load import (
    assert_exactly_once,
    ledger_recipients,
    race,
    running_load,
    sink_recipients,
)
from tests.harness.postfix_faults import kill_postfix
from tests.harness.processes import Stopper, wait_until
from tests.harness.provision import Provisioned, provision, txrelay_json
from tests.harness.two_nodes import TwoNodes, two_nodes
from txrelay.config import Config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(config: Config, e2e_dir: Path, stopper: Stopper) -> Iterator[TwoNodes]:
    directory = e2e_dir / "two-nodes"
    directory.mkdir(mode=0o755)
    with two_nodes(config, directory, stopper) as nodes:
        yield nodes


def new_shop(cluster: TwoNodes, *, quota: int | None = None) -> Provisioned:
    """An account provisioned through node A's CLI; ready once both nodes know it (node B
    learns of it from PostgreSQL: its milter's policy and its own SMTP login file)."""
    first = cluster.nodes[0]
    made = provision(first.config_file, f"nodes-{uuid.uuid4().hex[:8]}", rate_limit=0)
    if quota is None:
        txrelay_json(first.config_file, "quota", "book", made.account, "--amount", "25000")
    else:
        with psycopg.connect(cluster.postgres.url) as conn:
            conn.execute("UPDATE quota_blocks SET amount = %s WHERE account_id = %s",
                         (quota, made.account_id))
            conn.execute("UPDATE policy_version SET version = version + 1")
    with psycopg.connect(cluster.postgres.url) as conn:
        row = conn.execute("SELECT version FROM policy_version").fetchone()
    wanted = int(row[0]) if row else 0
    for node in cluster.nodes:
        wait_until(lambda node=node: node.milter.loaded_policy_version() >= wanted, 20,
                   f"{node.name}'s milter loaded policy version {wanted}", node.milter.log)
        login_file = Path(node.config.dovecot.passdb_file)
        wait_until(lambda f=login_file: made.username in f.read_text(), 20,
                   f"{node.name}'s login file lists the new connection", node.milter.log)
    return made


def recorded_nodes(cluster: TwoNodes, shop: Provisioned) -> dict[str, str]:
    """recipient -> the node its (non-void) ledger row was recorded on."""
    with psycopg.connect(cluster.postgres.url) as conn:
        rows = conn.execute(
            "SELECT l.recipient, m.node FROM ledger l JOIN messages m ON m.id = l.message_id"
            " WHERE l.account_id = %s AND l.billing <> 'void'", (shop.account_id,)).fetchall()
    return dict(rows)


def states(cluster: TwoNodes, shop: Provisioned) -> Counter[str]:
    with psycopg.connect(cluster.postgres.url) as conn:
        rows = conn.execute("SELECT state FROM ledger WHERE account_id = %s",
                            (shop.account_id,)).fetchall()
    return Counter(state for (state,) in rows)


OPEN_ROWS = """
SELECT count(*) FILTER (WHERE a.queue_id IS NULL), count(*) FILTER (WHERE a.queue_id IS NOT NULL)
  FROM ledger l JOIN messages m ON m.id = l.message_id
  LEFT JOIN (SELECT DISTINCT node, queue_id FROM tracker_anomalies
              WHERE kind = 'removed_without_outcome') a
         ON a.node = m.node AND a.queue_id = m.queue_id
 WHERE l.account_id = %s AND l.state NOT IN ('delivered', 'voided')"""


def unexplained(cluster: TwoNodes, shop: Provisioned) -> int:
    """Rows neither delivered nor voided, nor removed by Postfix with their line lost."""
    with psycopg.connect(cluster.postgres.url) as conn:
        row = conn.execute(OPEN_ROWS, (shop.account_id,)).fetchone()
    assert row is not None
    return int(row[0])


def lost_outcomes(cluster: TwoNodes, shop: Provisioned) -> int:
    with psycopg.connect(cluster.postgres.url) as conn:
        row = conn.execute(OPEN_ROWS, (shop.account_id,)).fetchone()
    assert row is not None
    return int(row[1])


def unfinished(cluster: TwoNodes, shop: Provisioned) -> str:
    """The rows not yet delivered or voided, with their queue id's lines in their node's log:
    what the tracker had to go on."""
    with psycopg.connect(cluster.postgres.url) as conn:
        rows = conn.execute(
            "SELECT l.recipient, l.state, m.node, m.queue_id FROM ledger l"
            " JOIN messages m ON m.id = l.message_id WHERE l.account_id = %s"
            " AND l.state NOT IN ('delivered', 'voided') ORDER BY m.queue_id",
            (shop.account_id,)).fetchall()
        positions = conn.execute("SELECT node, log_path, lines_read, unmatched_events"
                                 " FROM tracker_positions ORDER BY node").fetchall()
    logs = {node.name: Path(node.config.tracker.log_path) for node in cluster.nodes}
    lines = [f"states: {dict(states(cluster, shop))}; tracker positions: {positions}"]
    for recipient, state, node, queue_id in rows[:5]:
        log = logs[node].read_text(errors="replace") if logs[node].exists() else ""
        seen = [line for line in log.splitlines() if queue_id and queue_id in line]
        lines.append(f"{recipient} {state} node={node} queue_id={queue_id}: {seen}")
    return "\n".join(lines) + "\n" + cluster.logs()


def test_mail_through_both_nodes_is_recorded_by_the_node_that_took_it(
        cluster: TwoNodes) -> None:
    shop = new_shop(cluster)
    with running_load(shop, cluster.ports, clients=4) as load:
        time.sleep(4)
    relay = cluster.relay()
    assert_exactly_once(relay, shop, load)
    ports = Counter(load.accepted_on.values())
    assert set(ports) == set(cluster.ports), ports  # both nodes took mail
    node_of_port = {node.port: node.name for node in cluster.nodes}
    recorded = recorded_nodes(cluster, shop)
    for tag, recipients in load.accepted.items():
        for recipient in recipients:
            assert recorded[recipient] == node_of_port[load.accepted_on[tag]], recipient
    # Each tracker follows its own Postfix's log and matches only its node's queue ids:
    # every row ends delivered, and neither tracker saw a delivery it could not place.
    wait_until(lambda: set(states(cluster, shop)) == {"delivered"}, 30,
               "every ledger row delivered", cluster.logs)
    with psycopg.connect(cluster.postgres.url) as conn:
        positions = conn.execute("SELECT node, log_path, unmatched_events, lines_read "
                                 "FROM tracker_positions ORDER BY node").fetchall()
        anomalies = conn.execute("SELECT node, kind FROM tracker_anomalies").fetchall()
    assert [(node, path, unmatched) for node, path, unmatched, _ in positions] == [
        (node.name, node.config.tracker.log_path, 0) for node in cluster.nodes]
    assert all(lines > 0 for *_, lines in positions), positions
    assert anomalies == []


def test_last_unit_race_across_both_nodes_accepts_exactly_the_quota(cluster: TwoNodes) -> None:
    shop = new_shop(cluster, quota=100)
    results = race(shop, cluster.ports)
    replies = Counter(reply.code for r in results for reply in r.rcpts.values())
    assert replies[250] == 100 and replies[550] == 100, replies
    relay = cluster.relay()
    cluster.flush()
    wait_until(lambda: sum(sink_recipients(relay, shop).values()) == 100, 30, "100 at the sink")
    assert sum(ledger_recipients(relay, shop).values()) == 100
    assert set(recorded_nodes(cluster, shop).values()) == {n.name for n in cluster.nodes}


def test_one_nodes_postfix_killed_under_load_and_restarted_loses_nothing(
        cluster: TwoNodes) -> None:
    shop = new_shop(cluster)
    victim = cluster.nodes[0]
    with running_load(shop, cluster.ports, clients=4) as load:
        killed = kill_postfix(victim.postfix)
        assert len(killed) >= 3, killed  # master, qmgr, pickup at least
        try:
            time.sleep(2)  # the other node goes on taking mail meanwhile
        finally:
            victim.postfix.start()
    assert any(key.startswith("session:") for key in load.refusals), load.refusals
    assert_exactly_once(cluster.relay(), shop, load, postfix_killed=True)
    relay = cluster.relay()
    again = sum(sink_recipients(relay, shop).values()) - sum(
        sink_recipients(relay, shop, one_per_queue_file=True).values())
    print(f"recipients Postfix delivered twice after its SIGKILL (billed once): {again}")
    # Every row delivered or voided (recorded, never queued), except where the SIGKILL took
    # Postfix's logger (postlogd, for maillog_file) with a delivery line in flight: the
    # queue file shows the recipient done and Postfix removes it after the restart, and the
    # tracker records that removal as an anomaly instead of guessing the outcome.
    wait_until(lambda: unexplained(cluster, shop) == 0, 60,
               "every ledger row delivered (or voided: recorded, never queued)",
               lambda: unfinished(cluster, shop))
    print(f"rows whose outcome line the SIGKILL lost: {lost_outcomes(cluster, shop)}")
