"""deploy/grafana/txrelay.json as Grafana reads it, and the PromQL checker that the e2e test
(tests/e2e/test_metrics.py) holds the dashboard's expressions to."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.harness.promql import exposed, problems, uses

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "txrelay.json"

EXPOSITION = """\
# TYPE txrelay_milter_decisions_total counter
txrelay_milter_decisions_total{account="1",connection="web",verdict="accept"} 3.0
txrelay_milter_stage_seconds_bucket{le="0.5",stage="eom"} 2.0
txrelay_quota_remaining{account="1"} 998.0
txrelay_account_info{account_id="1",name="Acme \\"Shop\\""} 1.0
txrelay_tracker_lag_seconds 0.0
"""


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in dashboard()["panels"]
            for target in panel.get("targets", [])]


def test_checker_accepts_what_the_exposition_has() -> None:
    metrics = exposed(EXPOSITION)
    assert problems('sum by (verdict) (rate(txrelay_milter_decisions_total{instance=~"$i"}'
                    '[$__rate_interval]))', metrics, "{{verdict}}") == []
    assert problems('histogram_quantile(0.99, sum by (le, stage) '
                    '(rate(txrelay_milter_stage_seconds_bucket[5m])))', metrics) == []
    assert problems('max by (account) (txrelay_quota_remaining) * on (account) group_left (name)'
                    ' label_replace(txrelay_account_info, "account", "$1", "account_id", "(.*)")',
                    metrics, "{{name}}") == []
    assert problems('up{job="txrelay-milter"}', metrics) == []


def test_checker_names_unknown_metrics_and_labels() -> None:
    metrics = exposed(EXPOSITION)
    assert problems("rate(txrelay_milter_decisions[5m])", metrics) == [
        "metric txrelay_milter_decisions is not exported"]
    assert problems('txrelay_quota_remaining{account_id="1"}', metrics) == [
        "txrelay_quota_remaining has no label 'account_id'"]
    assert problems("sum by (stage) (txrelay_tracker_lag_seconds)", metrics) == [
        "label 'stage' is on none of ['txrelay_tracker_lag_seconds']"]
    assert problems("txrelay_tracker_lag_seconds", metrics, "{{name}}") == [
        "label 'name' is on none of ['txrelay_tracker_lag_seconds']"]
    assert problems('label_replace(txrelay_quota_remaining, "x", "$1", "nope", "(.*)")',
                    metrics) == ["label 'nope' is on none of ['txrelay_quota_remaining']"]


def test_every_expression_names_at_least_one_metric() -> None:
    for title, target in targets():
        assert uses(target["expr"]).metrics, title


def test_panels_read_the_chosen_prometheus_and_fit_the_grid() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and panel["description"], panel["title"]
    kinds = {panel["type"] for panel in board["panels"]}
    assert {"heatmap", "timeseries", "stat", "bargauge"} <= kinds


def test_template_variable_queries_are_checked_too() -> None:
    metrics = exposed(EXPOSITION)
    assert problems("label_values(txrelay_tracker_lag_seconds, instance)", metrics) == []
    assert problems("label_values(txrelay_quota_remaining, stage)", metrics) == [
        "txrelay_quota_remaining has no label 'stage'"]


# The panels issue 16 names, by title: the kind of panel, the metrics it must read and the
# label its legend must show (names, not account numbers).
NAMED_PANELS = {
    "Decisions by verdict": ("timeseries", {"txrelay_milter_decisions_total"}, "{{verdict}}"),
    "Stage latency: mail": ("heatmap", {"txrelay_milter_stage_seconds_bucket"}, ""),
    "Stage latency: rcpt": ("heatmap", {"txrelay_milter_stage_seconds_bucket"}, ""),
    "Stage latency: eom": ("heatmap", {"txrelay_milter_stage_seconds_bucket"}, ""),
    "Quota remaining per account": (
        "bargauge", {"txrelay_quota_remaining", "txrelay_account_info"}, "{{name}}"),
    "Tracker lag": ("timeseries", {"txrelay_tracker_lag_seconds"}, ""),
    "Dependencies": ("stat", {"txrelay_dependency_up"}, "{{dependency}}"),
    "Bounce rate": ("timeseries", {"txrelay_tracker_outcomes_total"}, ""),
    "Complaint rate": ("timeseries", {"txrelay_account_complained_last_day",
                                      "txrelay_account_arrived_last_day",
                                      "txrelay_account_info"}, "{{name}}"),
    "Webhook backlog": ("timeseries", {"txrelay_webhook_backlog",
                                       "txrelay_webhook_oldest_pending_seconds"}, ""),
}


def test_the_panels_the_issue_names_are_there_and_read_their_metrics() -> None:
    panels = {panel["title"]: panel for panel in dashboard()["panels"]}
    missing = set(NAMED_PANELS) - set(panels)
    assert missing == set()
    for title, (kind, metrics, legend) in NAMED_PANELS.items():
        panel = panels[title]
        assert panel["type"] == kind, title
        read = set().union(*(uses(target["expr"]).metrics for target in panel["targets"]))
        assert metrics <= read, (title, metrics - read)
        legends = " ".join(target.get("legendFormat", "") for target in panel["targets"])
        assert legend in legends, title


def test_every_daemon_that_serves_metrics_is_in_the_scrape_panel() -> None:
    panels = {panel["title"]: panel for panel in dashboard()["panels"]}
    expr = panels["Daemons answering scrapes"]["targets"][0]["expr"]
    jobs = re.search(r'job=~"([^"]+)"', expr)
    assert jobs is not None
    assert set(jobs.group(1).split("|")) == {
        "txrelay-milter", "txrelay-tracker", "txrelay-webhooks"}
