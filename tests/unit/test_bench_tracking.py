"""The bench's tracker figure and busy-machine warning: Postfix's log rate counted from the
lines a scenario logged, the tracker's ratio judged against the target of 3, and a run on a
busy machine saying so."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench.tracking import LogRate, LogSpan, TrackerFigure, TrackerRun, log_rate
from txrelay.store.tracking import Counters

PREFIX = "Dec  4 21:55:22 relay postfix/bench-txrelay-unix"
ONE_MESSAGE = [
    f"{PREFIX}/smtpd[14243]: connect from localhost[127.0.0.1]",
    f"{PREFIX}/smtpd[14243]: A72CC20F6BB: client=localhost[127.0.0.1]",
    f"{PREFIX}/cleanup[14250]: A72CC20F6BB: message-id=<1@bench.test>",
    f"{PREFIX}/qmgr[14001]: A72CC20F6BB: from=<shop@bench.test>, size=10542, nrcpt=1 "
    "(queue active)",
    f"{PREFIX}/smtpd[14243]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 "
    "data=1 quit=1 commands=5",
    f"{PREFIX}/smtp[14260]: A72CC20F6BB: to=<rcpt@sink.bench.test>, "
    "relay=127.0.0.1[127.0.0.1]:40000, delay=0.05, delays=0.01/0/0/0.04, dsn=2.0.0, "
    "status=sent (250 2.0.0 Ok: queued as 1)",
    f"{PREFIX}/qmgr[14001]: A72CC20F6BB: removed",
]


def test_the_log_rate_counts_only_the_lines_the_scenario_logged(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    before = "an earlier scenario's line\n"
    maillog.write_text(before + "\n".join(ONE_MESSAGE * 2) + "\n" + "a later line\n")
    end = len(before) + len("\n".join(ONE_MESSAGE * 2)) + 1
    rate = log_rate(LogSpan(maillog, len(before), end, elapsed_s=0.5))
    assert (rate.lines, rate.delivery_lines) == (14, 2)
    assert (rate.lines_per_s, rate.delivery_lines_per_s) == (28.0, 4.0)


def _figure(applied_lines_per_s: float) -> TrackerFigure:
    logged = LogRate(1400, 200, 1.0)
    applied = TrackerRun(LogRate(1400, 200, 1400 / applied_lines_per_s),
                         Counters(lines_read=1400, delivered=200), 1)
    return TrackerFigure("10KB/txrelay-unix", 200, 200.0, logged, applied)


def test_a_tracker_three_times_faster_than_the_log_passes_and_a_slower_one_misses() -> None:
    assert bench_main._tracker_target(_figure(4200)).startswith("PASS")
    missed = bench_main._tracker_target(_figure(2100))
    assert missed.startswith("MISS") and missed.endswith(": 1.50")
    assert bench_main._tracker_target(None).startswith("n.a.")
    report = _figure(2100).report()
    assert report[-1] == "   tracker / log rate = 1.50 (target >= 3)"
    assert "delivered 200, unmatched 0, unparsed 0" in report[1]


def test_a_busy_machine_is_named_with_its_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_main.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(bench_main.os, "getloadavg", lambda: (3.5, 2.0, 1.0))
    warning = bench_main._busy_warning()
    assert warning is not None
    assert warning.startswith("WARNING: the machine was busy")
    assert "load average 3.50 on 2 CPUs" in warning
    monkeypatch.setattr(bench_main.os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    assert bench_main._busy_warning() is None
