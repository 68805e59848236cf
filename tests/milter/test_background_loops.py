"""The milter's background loops are supervised: an exception is logged at ERROR and the loop
goes on; a poisoned journal entry is set aside, and /healthz and the metrics show it."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness.metrics import http_get
from tests.harness.processes import wait_until
from tests.store.builders import Tenant, make_tenant
from tests.store.test_journal import accepted, poisoned
from txrelay import metrics
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.milter.runtime import Runtime
from txrelay.policy.snapshot import PolicySnapshot
from txrelay.store.journal import MAX_REPLAY_FAILURES, Journal, JournalEntry
from txrelay.store.policy import PolicyLoader, PolicyRows
from txrelay.store.policy_cache import PolicyCache
from txrelay.store.recording import PostgresLedger


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class BrokenTwice(PolicyLoader):
    """A loader that raises what no handler expects (a bad row, a bug), twice."""

    failures = 2

    def build(self, rows: PolicyRows, credentials_since: float | None = None) -> PolicySnapshot:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a row no snapshot can hold")
        return super().build(rows, credentials_since)


def test_a_policy_refresh_that_raises_logs_error_and_keeps_refreshing(
        runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    cache = PolicyCache(runtime.ledger.pool, BrokenTwice(runtime.config.quota), 0.05)
    with caplog.at_level(logging.ERROR, logger="txrelay.loops"):
        cache.start()
        try:
            wait_for(lambda: cache.current is not None)
            status = cache.loop.status()
        finally:
            cache.stop()
    assert status.alive and status.errors == 2 and status.problem() is None
    # Only the loop's own lines: this bare loader has no key-encryption key, so the run's
    # sealed DKIM keys (other tests' domains) are logged as unreadable by the policy logger.
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR and r.name == "txrelay.loops"]
    assert len(errors) == 2
    assert all("event=background_loop_error loop=policy-refresh" in e for e in errors)
    assert "a row no snapshot can hold" in errors[0]


def test_every_background_loop_of_the_runtime_is_supervised_and_running(
        runtime: Runtime) -> None:
    statuses = {s.name: s for s in runtime.loops.statuses()}
    assert set(statuses) == {"policy-refresh", "suppression-refresh", "ledger-settler",
                             "redis-recovery", "journal-replay"}
    assert all(s.alive and s.problem() is None for s in statuses.values())
    assert [name for name, s in statuses.items() if s.critical] == ["policy-refresh"]


@pytest.fixture()
def auth_socket(tmp_path: Path) -> Iterator[Path]:
    """Something listening where Dovecot's auth socket is: the dependency is up."""
    path = tmp_path / "auth"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    yield path
    server.close()


def milter_endpoint_answers(config: Config, auth_socket: Path, journal: Journal,
                            runtime: Runtime) -> tuple[int, str, str]:
    """The milter's /healthz (status, body) and /metrics for this journal and runtime."""
    here = dataclasses.replace(
        config, metrics=dataclasses.replace(config.metrics, milter_listen="127.0.0.1:0"),
        dovecot=dataclasses.replace(config.dovecot, auth_socket=str(auth_socket)))
    endpoint = metrics.start_milter_endpoint(here, journal.room, runtime.loops.statuses,
                                             journal.quarantined)
    assert endpoint is not None
    try:
        status, body = http_get(f"http://{endpoint.address}/healthz")
        scraped = http_get(f"http://{endpoint.address}/metrics")[1]
    finally:
        endpoint.close()
    return status, body, scraped


def test_a_poisoned_journal_entry_is_set_aside_and_healthz_and_the_metric_show_it(
        runtime: Runtime, config: Config, tenant: Tenant, db: psycopg.Connection,
        tmp_path: Path, auth_socket: Path) -> None:
    journal = Journal(tmp_path / "journal", runtime.config.database.url, 1000)
    ledger = PostgresLedger(runtime.ledger.pool, SystemClock(), journal)
    journal.append(JournalEntry(poisoned(tenant, db)))
    journal.append(JournalEntry(accepted(tenant, ["later@x.example"])))
    assert ledger.replay_journal() == 1  # the later entry is not blocked
    for _ in range(MAX_REPLAY_FAILURES - 1):
        assert ledger.replay_journal() == 0
    assert journal.quarantined() == 1 and journal.pending_files() == []
    metrics.watch_journal_quarantine(journal.quarantined)
    assert metrics.REGISTRY.get_sample_value("txrelay_journal_quarantined") == 1.0

    # This runtime's policy refresh has finished a run (the gauge is process-wide: an
    # earlier test's runtime may have set it, or none yet when this test runs first).
    wait_until(lambda: metrics.REGISTRY.get_sample_value(
        "txrelay_background_loop_last_success_timestamp_seconds",
        {"loop": "policy-refresh"}) is not None, 10, "a policy refresh run")
    status, body, scraped = milter_endpoint_answers(config, auth_socket, journal, runtime)
    lines = body.splitlines()
    assert (status, lines[0]) == (200, "degraded"), body
    assert lines[1].startswith("journal: 1 entries set aside after failing to replay")
    assert "txrelay_journal_quarantined 1.0" in scraped
    assert 'txrelay_background_loop_last_success_timestamp_seconds{loop="policy-refresh"}' \
        in scraped


def test_an_undecodable_journal_line_is_set_aside_and_healthz_and_the_metric_show_it(
        runtime: Runtime, config: Config, tenant: Tenant, tmp_path: Path,
        auth_socket: Path) -> None:
    """A whole line that does not decode was acknowledged (its mail relayed): it is set
    aside at once, as a poisoned entry is after its failures, never deleted unseen."""
    journal = Journal(tmp_path / "journal", runtime.config.database.url, 1000)
    ledger = PostgresLedger(runtime.ledger.pool, SystemClock(), journal)
    journal.append(JournalEntry(accepted(tenant, ["first@x.example"])))
    journal.close()
    [path] = journal.pending_files()
    with path.open("ab") as damaged:
        damaged.write(b'{"txn_id": "not-a-uuid", "recipients": 7}\n')
    journal.append(JournalEntry(accepted(tenant, ["later@x.example"])))
    assert ledger.replay_journal() == 2  # the others are not blocked
    assert journal.quarantined() == 1 and journal.pending_files() == []
    metrics.watch_journal_quarantine(journal.quarantined)
    assert metrics.REGISTRY.get_sample_value("txrelay_journal_quarantined") == 1.0

    status, body, _ = milter_endpoint_answers(config, auth_socket, journal, runtime)
    assert (status, body.splitlines()[0]) == (200, "degraded"), body
    assert "journal: 1 entries set aside" in body


class HeldFirstBuild(PolicyLoader):
    """A loader whose first build waits until the test lets it go, as a slow poll would."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.building = threading.Event()
        self.go_on = threading.Event()
        self.builds = 0

    def build(self, rows: PolicyRows, credentials_since: float | None = None) -> PolicySnapshot:
        self.builds += 1
        if self.builds == 1:
            self.building.set()
            assert self.go_on.wait(10)
        return super().build(rows, credentials_since)


def test_a_slow_reload_never_puts_back_a_snapshot_older_than_a_later_one(
        runtime: Runtime, db: psycopg.Connection, unique: str) -> None:
    """A poll that read its rows before a connection was made and a refresh that read them
    after: whichever finishes last, the connection is in the snapshot kept."""
    loader = HeldFirstBuild(runtime.config.quota)
    cache = PolicyCache(runtime.ledger.pool, loader, 60)
    slow = threading.Thread(target=cache.refresh)
    slow.start()
    assert loader.building.wait(10)
    made = make_tenant(db, unique)
    later = threading.Thread(target=cache.refresh)
    later.start()
    later.join(1.0)  # without one reload at a time, it is done here and kept first
    loader.go_on.set()
    slow.join(10)
    later.join(10)
    assert cache.current is not None and made.username in cache.current.connections
