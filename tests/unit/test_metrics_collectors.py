"""The metrics module without daemons: log line timestamps, tracker lag, the endpoint's
/healthz answers, and the alert rules naming only metrics that exist."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from txrelay import metrics

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


class FakePosition:
    def __init__(self, unread: tuple[int, bytes] | None) -> None:
        self._unread = unread

    def unread(self) -> tuple[int, bytes] | None:
        return self._unread


def scrape(*collectors: metrics.Collector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


def test_rfc3339_log_line_timestamp_is_read_with_its_offset() -> None:
    line = b"2026-03-01T13:58:30.123456+02:00 relay postfix/qmgr[12]: 4abc: removed"
    assert metrics.line_timestamp(line, NOW) == NOW - dt.timedelta(seconds=89.876544)


def test_syslog_timestamp_from_late_december_is_last_year_in_january() -> None:
    january = dt.datetime(2026, 1, 1, 0, 5, tzinfo=dt.UTC)
    stamp = metrics.line_timestamp(b"Dec 31 23:59:00 relay postfix/smtp[1]: x", january)
    assert stamp is not None and stamp.year == 2025


def test_tracker_lag_is_the_age_of_the_first_unread_line() -> None:
    old = (NOW - dt.timedelta(seconds=90)).isoformat().encode()
    text = scrape(metrics.TrackerCollector(lambda: FakePosition((4096, old + b" relay x")),
                                           now=lambda: NOW))
    assert "txrelay_tracker_unread_bytes 4096.0" in text
    assert "txrelay_tracker_lag_seconds 90.0" in text


def test_caught_up_tracker_has_no_lag_however_old_its_last_line() -> None:
    text = scrape(metrics.TrackerCollector(lambda: FakePosition((0, b"")), now=lambda: NOW))
    assert "txrelay_tracker_lag_seconds 0.0" in text


def test_disconnected_tracker_exposes_no_position() -> None:
    assert "txrelay_tracker" not in scrape(metrics.TrackerCollector(lambda: None))


def failing() -> None:
    raise OSError("connection refused")


def test_health_names_each_failing_dependency() -> None:
    endpoint = metrics.MetricsEndpoint("127.0.0.1:0", {"postgresql": lambda: None,
                                                       "redis": failing})
    try:
        health = endpoint.health()
        assert (health.status, health.body()) == (
            503, "unavailable\nredis: OSError: connection refused\n")
        assert 'txrelay_dependency_up{dependency="redis"} 0.0' in endpoint.metrics().decode()
    finally:
        endpoint.close()


def test_port_in_use_leaves_the_daemon_running_without_metrics(
        caplog: pytest.LogCaptureFixture) -> None:
    first = metrics.start_endpoint("127.0.0.1:0", "milter", {})
    assert first is not None
    try:
        assert metrics.start_endpoint(first.address, "milter", {}) is None
        assert "event=metrics_unavailable" in caplog.text
    finally:
        first.close()


def test_alert_rules_name_only_metrics_txrelay_exposes() -> None:
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"\btxrelay_[a-z_]+", rules)) - {"txrelay_milter", "txrelay_tracker"}
    source = (ROOT / "txrelay" / "metrics.py").read_text()
    exposed = set(re.findall(r'"(txrelay_[a-z_]+)"', source))
    exposed |= {f"{name}_total" for name in exposed} | {f"{name}_bucket" for name in exposed}
    assert used and used <= exposed, used - exposed
