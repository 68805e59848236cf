"""Metrics and health as an operator sees them: curl on the milter's and tracker's endpoints
of a real stack while mail goes through it, and /healthz when a dependency is down."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness.complaints import report_complaint
from tests.harness.fixtures import RelayStack
from tests.harness.metrics import MetricsStack, http_get, metrics_stack, samples
from tests.harness.processes import TXRELAY, ManagedProcess, free_port, port_open, wait_until
from tests.harness.promql import exposed, problems
from tests.harness.provision import Provisioned
from tests.harness.smtp import build_message, submit

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
__all__ = ["metrics_stack"]  # the fixture, imported for pytest


def curl(url: str) -> str:
    """What `curl -sf URL` prints (fails the test on an HTTP error)."""
    done = subprocess.run(["curl", "-sS", "-f", "--max-time", "10", url], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, f"curl {url}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def shop(relay: RelayStack) -> Provisioned:
    """One demo account for the module (provisioning costs a few CLI runs)."""
    return relay.provision()


def decisions(stack: MetricsStack) -> dict[tuple[tuple[str, str], ...], float]:
    return samples(curl(f"{stack.milter_url}/metrics"), "txrelay_milter_decisions_total")


def stage_count(text: str, stage: str) -> float:
    return samples(text, "txrelay_milter_stage_seconds_count").get((("stage", stage),), 0.0)


def test_decision_counters_move_when_mail_is_sent(shop: Provisioned,
                                                  metrics_stack: MetricsStack) -> None:
    accepted = (("account", str(shop.account_id)), ("connection", shop.connection),
                ("verdict", "accept"))
    before = curl(f"{metrics_stack.milter_url}/metrics")
    assert samples(before, "txrelay_milter_decisions_total").get(accepted, 0.0) == 0.0

    for _ in range(2):
        rcpt = f"m-{secrets.token_hex(4)}@customer.example.net"
        result = submit(shop.username, shop.password, shop.address(), [rcpt],
                        build_message(shop.address(), [rcpt]), port=metrics_stack.port)
        assert result.accepted, f"{result.first_refusal()}\n{metrics_stack.milter.log()}"
    wrong = submit(shop.username, shop.password, "shop@not-theirs.example.org",
                   ["x@customer.example.net"], b"Subject: x\r\n\r\nx\r\n",
                   port=metrics_stack.port)
    assert not wrong.accepted

    after = curl(f"{metrics_stack.milter_url}/metrics")
    counted = samples(after, "txrelay_milter_decisions_total")
    assert counted[accepted] == 2.0
    refusals = {labels: value for labels, value in counted.items()
                if dict(labels)["verdict"].startswith("5")}
    assert sum(refusals.values()) >= 1.0, counted
    for stage in ("mail", "rcpt", "eom"):
        assert stage_count(after, stage) >= stage_count(before, stage) + 2, stage
    remaining = samples(after, "txrelay_quota_remaining")[(("account", str(shop.account_id)),)]
    assert remaining == 1000 - 2  # a demo account's quota, two recipients spent
    held = samples(after, "txrelay_reservations_outstanding")
    assert held[(("account", str(shop.account_id)),)] == 0.0


def test_tracker_metrics_show_it_caught_up_with_the_log(relay: RelayStack, shop: Provisioned,
                                                        metrics_stack: MetricsStack) -> None:
    rcpt = f"t-{secrets.token_hex(4)}@customer.example.net"
    assert submit(shop.username, shop.password, shop.address(), [rcpt],
                  build_message(shop.address(), [rcpt]), port=metrics_stack.port).accepted
    relay.sink.wait_for_recipient(rcpt)

    def caught_up() -> bool:
        text = curl(f"{metrics_stack.tracker_url}/metrics")
        unread = samples(text, "txrelay_tracker_unread_bytes")
        return unread == {(): 0.0} and samples(text, "txrelay_tracker_lag_seconds") == {(): 0.0}

    wait_until(caught_up, 20, "tracker caught up", metrics_stack.tracker.log)
    assert Path(metrics_stack.config.tracker.log_path).stat().st_size > 0


def test_tracker_exports_each_accounts_arrivals_and_complaints_of_the_last_day(
        relay: RelayStack, metrics_stack: MetricsStack) -> None:
    """Four recipients of a fresh account, one complains (an ARF report through `txrelay
    inbound deliver`): the tracker's /metrics says 4 arrived and 1 complained for that
    account, counted at its tick from PostgreSQL: the two halves the Complaint rate panel
    divides."""
    shop = relay.provision()
    token = secrets.token_hex(4)
    recipients = [f"c{index}-{token}@customer.example.net" for index in range(4)]
    for recipient in recipients:
        assert submit(shop.username, shop.password, shop.address(), [recipient],
                      build_message(shop.address(), [recipient]),
                      port=metrics_stack.port).accepted
        relay.sink.wait_for_recipient(recipient)
    label = (("account", str(shop.account_id)),)

    def gauges() -> tuple[float | None, float | None]:
        text = curl(f"{metrics_stack.tracker_url}/metrics")
        return (samples(text, "txrelay_account_arrived_last_day").get(label),
                samples(text, "txrelay_account_complained_last_day").get(label))

    wait_until(lambda: gauges() == (4.0, 0.0), 30, "4 arrived, none complained",
               metrics_stack.tracker.log)
    report_complaint(metrics_stack.config, metrics_stack.config_file, relay.database_url,
                     shop.account_id, recipients[0], shop.address())
    wait_until(lambda: gauges() == (4.0, 1.0), 30, "the complaint counted",
               metrics_stack.tracker.log)


def _webhook_worker_metrics(metrics_stack: MetricsStack, tmp_path: Path) -> str:
    """The /metrics of a webhook worker (`txrelay webhooks run`) of the same configuration."""
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "TXRELAY_METRICS_WEBHOOKS_LISTEN": listen}
    worker = ManagedProcess([TXRELAY, "--config", str(metrics_stack.config_file), "webhooks",
                             "run"], tmp_path / "webhooks.log", env=env)
    worker.start()
    try:
        wait_until(lambda: port_open(int(listen.rsplit(":", 1)[1])), 20, "worker metrics",
                   worker.log)
        return curl(f"http://{listen}/metrics")
    finally:
        worker.stop()


def test_grafana_dashboard_and_alerts_ask_only_for_what_milter_and_tracker_export(
        relay: RelayStack, shop: Provisioned, metrics_stack: MetricsStack,
        tmp_path: Path) -> None:
    """Every PromQL expression of deploy/grafana/txrelay.json (and of the alert rules) held
    against the real /metrics of a milter and a tracker that have seen mail delivered, and
    of a webhook worker."""
    rcpt = f"g-{secrets.token_hex(4)}@customer.example.net"
    assert submit(shop.username, shop.password, shop.address(), [rcpt],
                  build_message(shop.address(), [rcpt]), port=metrics_stack.port).accepted
    relay.sink.wait_for_recipient(rcpt)

    def delivered_counted() -> bool:
        text = curl(f"{metrics_stack.tracker_url}/metrics")
        ticked = (("account", str(shop.account_id)),) in samples(
            text, "txrelay_account_arrived_last_day")
        return ticked and samples(text, "txrelay_tracker_outcomes_total").get(
            (("state", "delivered"),), 0.0) >= 1.0

    wait_until(delivered_counted, 20, "tracker counted the delivery and ticked",
               metrics_stack.tracker.log)
    milter_text = curl(f"{metrics_stack.milter_url}/metrics")
    tracker_text = curl(f"{metrics_stack.tracker_url}/metrics")
    info = samples(milter_text, "txrelay_account_info")
    assert info[(("account_id", str(shop.account_id)), ("name", shop.account))] == 1.0
    assert set(samples(tracker_text, "txrelay_tracker_outcomes_total")) == {
        (("state", state),) for state in ("delivered", "deferred", "bounced")}

    metrics = exposed(milter_text, tracker_text, _webhook_worker_metrics(metrics_stack, tmp_path))
    board = json.loads((ROOT / "deploy" / "grafana" / "txrelay.json").read_text())
    expressions = [(panel["title"], target["expr"], target.get("legendFormat", ""))
                   for panel in board["panels"] for target in panel.get("targets", [])]
    expressions += [(variable["name"], variable["definition"], "")
                    for variable in board["templating"]["list"] if "definition" in variable]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    expressions += [(rule["alert"], rule["expr"], "")
                    for group in rules["groups"] for rule in group["rules"]]
    assert len(expressions) > 20
    wrong = {title: found for title, expr, legend in expressions
             if (found := problems(expr, metrics, legend))}
    assert wrong == {}


def test_healthz_is_ok_while_postgresql_and_redis_answer(metrics_stack: MetricsStack) -> None:
    for url in (metrics_stack.milter_url, metrics_stack.tracker_url):
        status, body = http_get(f"{url}/healthz")
        assert (status, body) == (200, "ok\npostgresql: ok\nredis: ok\n"
                                  + ("dovecot: ok\n" if url == metrics_stack.milter_url else ""))


def _healthz_of_a_milter_with(relay: RelayStack, tmp_path: Path,
                              **overrides: str) -> tuple[int, str, str]:
    """Start a milter of the relay's configuration with these environment overrides and
    return its /healthz status and body, and its /metrics."""
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "TXRELAY_METRICS_MILTER_LISTEN": listen, **overrides}
    milter = ManagedProcess([TXRELAY, "--config", str(relay.config_file), "milter", "--socket",
                             f"unix:{tmp_path}/health.sock"], tmp_path / "milter.log", env=env)
    milter.start()
    try:
        wait_until(lambda: port_open(int(listen.rsplit(":", 1)[1])), 20, "metrics endpoint",
                   milter.log)
        status, body = http_get(f"http://{listen}/healthz")
        return status, body, curl(f"http://{listen}/metrics")
    finally:
        milter.stop()


def test_healthz_is_200_degraded_while_only_redis_is_down(relay: RelayStack,
                                                          tmp_path: Path) -> None:
    """Mail still flows (rate and quota in PostgreSQL): a load balancer keeps the node."""
    status, body, _ = _healthz_of_a_milter_with(
        relay, tmp_path, TXRELAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    lines = body.splitlines()
    assert (status, lines[0]) == (200, "degraded"), body
    assert lines[1].startswith("redis down: rate and quota are decided in PostgreSQL")
    assert "postgresql: ok" in lines and "dovecot: ok" in lines


def test_healthz_answers_503_naming_each_dependency_that_is_down(relay: RelayStack,
                                                                tmp_path: Path) -> None:
    """A milter whose Redis and PostgreSQL are ports nobody listens on: mail would get 451."""
    status, body, metrics_text = _healthz_of_a_milter_with(
        relay, tmp_path, TXRELAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        TXRELAY_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/txrelay",
        TXRELAY_DATABASE_MILTER_URL="")  # the daemons' URL: empty, so url above
    assert status == 503
    lines = body.splitlines()
    assert lines[0] == "unavailable"
    assert lines[1].startswith("Redis and PostgreSQL are both down"), body
    assert lines[2].startswith("postgresql: OperationalError"), body
    assert lines[3].startswith("redis: ConnectionError"), body
    assert lines[4] == "dovecot: ok", body
    up = samples(metrics_text, "txrelay_dependency_up")
    assert up == {(("dependency", "postgresql"),): 0.0, (("dependency", "redis"),): 0.0,
                  (("dependency", "dovecot"),): 1.0}
