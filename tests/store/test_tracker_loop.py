"""The tracker's loop is supervised: an unexpected exception in a pass is logged at ERROR,
counted, the connection is dropped, and the tracker goes on reading the log."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pytest

from tests.store.tracking_fixtures import MailLog, RecordingMailer
from txrelay import metrics
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.tracker.daemon import RunSummary, TrackerDaemon


def test_a_tracker_pass_that_raises_logs_error_reconnects_and_goes_on(
        config: Config, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    maillog = MailLog(tmp_path / "postfix.log")
    config = dataclasses.replace(
        config, tracker=dataclasses.replace(config.tracker, poll_interval_seconds=0.01),
        metrics=dataclasses.replace(config.metrics, tracker_listen=""))
    daemon = TrackerDaemon(config, SystemClock(), log_path=maillog.path,
                           node=f"node-{unique}", mailer=RecordingMailer(), rotation_grace=0.0)
    real_run_once = daemon.run_once
    passes: list[bool] = []

    def run_once(summary: RunSummary, tick: bool) -> bool:
        passes.append(daemon.conn is None)  # True: this pass had to connect afresh
        if len(passes) == 1:
            real_run_once(summary, tick)  # connected, then a bug strikes
            raise KeyError("a field no log line should lack")
        if len(passes) == 3:
            daemon.stop.set()
        return real_run_once(summary, tick)

    monkeypatch.setattr(daemon, "run_once", run_once)
    before = metrics.REGISTRY.get_sample_value("txrelay_background_errors_total",
                                               {"loop": "tracker"}) or 0.0
    runner = threading.Thread(target=daemon.run)
    with caplog.at_level(logging.ERROR, logger="txrelay.loops"):
        runner.start()
        runner.join(timeout=20)
    assert not runner.is_alive()
    assert passes == [True, True, False]  # the pass after the error reconnected
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "loop=tracker" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert metrics.REGISTRY.get_sample_value("txrelay_background_errors_total",
                                             {"loop": "tracker"}) == before + 1
