"""Reading a milter's cost during a scenario: CPU and peak RSS from /proc, the per-message
log lines (ms=), and the stage histogram of its Prometheus endpoint."""

from __future__ import annotations

import math
import re
import threading
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.procs import ProcSample, machine_busy_ms, reset_peak_rss, sample, trees_cpu_ms

MESSAGE_LINE = re.compile(rb"event=message .*?verdict=(\S+).*? ms=([0-9.]+)")
BUCKET_LINE = re.compile(
    r'^txrelay_milter_stage_seconds_bucket\{le="([^"]+)",stage="([^"]+)"\} ([0-9.e+]+)$')


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Watched:
    """A milter process under measurement (pid 0: none, as for Postfix alone)."""

    pid: int = 0
    log_path: Path | None = None
    metrics_port: int = 0
    pg_waits: PgWaits | None = None  # for txrelay: its database sessions


@dataclass
class Window:
    """What a scenario cost, between start() and stop()."""

    watched: Watched
    before: ProcSample | None = None
    after: ProcSample | None = None
    machine_before: float = 0.0
    machine_after: float = 0.0
    log_offset: int = 0
    buckets_before: dict[tuple[str, str], float] | None = None
    buckets_after: dict[tuple[str, str], float] | None = None
    log_lines: list[tuple[str, float]] | None = None
    pg_waits: dict[str, float] | None = None
    # name -> root pids of the processes whose CPU the scenario reports (Stack.cpu_groups)
    groups: dict[str, tuple[int, ...]] | None = None
    groups_before: dict[str, float] | None = None
    groups_after: dict[str, float] | None = None

    def start(self) -> None:
        if self.watched.pid:
            reset_peak_rss(self.watched.pid)
            self.before = sample(self.watched.pid)
        if self.watched.log_path is not None:
            self.log_offset = self.watched.log_path.stat().st_size
        if self.watched.metrics_port:
            self.buckets_before = scrape_buckets(self.watched.metrics_port)
        if self.watched.pg_waits is not None:
            self.watched.pg_waits.start()
        if self.groups:
            self.groups_before = trees_cpu_ms(self.groups)
        self.machine_before = machine_busy_ms()

    def stop(self) -> None:
        self.machine_after = machine_busy_ms()
        if self.groups:
            self.groups_after = trees_cpu_ms(self.groups)
        if self.watched.pg_waits is not None:
            self.pg_waits = self.watched.pg_waits.stop()
        if self.watched.pid:
            self.after = sample(self.watched.pid)
        if self.watched.metrics_port:
            self.buckets_after = scrape_buckets(self.watched.metrics_port)
        if self.watched.log_path is not None:
            with open(self.watched.log_path, "rb") as log:
                log.seek(self.log_offset)
                text = log.read()
            self.log_lines = [(m.group(1).decode(), float(m.group(2)))
                              for m in MESSAGE_LINE.finditer(text)]

    def cpu_ms(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after.cpu_ms - self.before.cpu_ms

    def system_ms(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after.system_ms - self.before.system_ms

    def peak_rss_mb(self) -> float | None:
        return self.after.hwm_kb / 1024 if self.after else None

    def machine_cpu_ms(self) -> float:
        return self.machine_after - self.machine_before

    def cpu_by_group_ms(self) -> dict[str, float]:
        """CPU of each group during the window, and "rest": the machine's busy time that no
        group accounts for (other processes, interrupts)."""
        if self.groups_before is None or self.groups_after is None:
            return {}
        spent = {name: self.groups_after[name] - self.groups_before.get(name, 0.0)
                 for name in self.groups_after}
        spent["rest"] = max(0.0, self.machine_cpu_ms() - sum(spent.values()))
        return spent

    def verdicts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for verdict, _ms in self.log_lines or []:
            counts[verdict] = counts.get(verdict, 0) + 1
        return counts

    def transaction_ms(self) -> list[float]:
        return [ms for _verdict, ms in self.log_lines or []]

    def stage_quantile(self, stage: str, fraction: float) -> float | None:
        """From the histogram's bucket deltas, interpolated inside the bucket (ms)."""
        if self.buckets_before is None or self.buckets_after is None:
            return None
        return histogram_quantile(self.buckets_before, self.buckets_after, stage, fraction)


def scrape_buckets(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    buckets = {}
    for line in text.splitlines():
        match = BUCKET_LINE.match(line)
        if match:
            buckets[(match.group(2), match.group(1))] = float(match.group(3))
    return buckets


def histogram_quantile(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float],
                       stage: str, fraction: float) -> float | None:
    bounds = sorted(((float(le), after[(s, le)] - before.get((s, le), 0.0))
                     for (s, le) in after if s == stage), key=lambda item: item[0])
    if not bounds or bounds[-1][1] <= 0:
        return None
    wanted = fraction * bounds[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= wanted:
            if math.isinf(bound):
                return lower_bound * 1000
            share = (wanted - lower_count) / (count - lower_count) if count > lower_count else 1
            return (lower_bound + share * (bound - lower_bound)) * 1000
        lower_bound, lower_count = bound, count
    return None


class PgWaits:
    """Samples what the bench database's sessions are doing (pg_stat_activity) while a
    scenario runs: row-lock waits, WAL fsync, idle in transaction (waiting on the client)."""

    QUERY = r"""
SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-') AS wait,
       state, (regexp_match(query, '^\s*(\w+)'))[1] AS verb
  FROM pg_stat_activity
 WHERE datname = %s AND state <> 'idle' AND pid <> pg_backend_pid()"""

    def __init__(self, admin_dsn: str, database: str, interval: float = 0.05) -> None:
        self.admin_dsn = admin_dsn
        self.database = database
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.counts.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pg-waits", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Share (%) of sampled busy sessions per 'wait (state, statement)', biggest first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        total = sum(self.counts.values())
        return {key: round(100 * n / total, 1) for key, n in self.counts.most_common(6)} \
            if total else {}

    def _run(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                for wait, state, verb in conn.execute(self.QUERY, (self.database,)):
                    self.counts[f"{wait} ({state}, {verb})"] += 1
