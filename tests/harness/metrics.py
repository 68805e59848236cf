"""A relay stack whose milter and tracker serve metrics, and reading them as Prometheus would.

The session's main stack runs its daemons with metrics off (tests/conftest.py), so several
milters never fight over a port. This stack shares the main stack's Dovecot, capture sink,
database and Redis, and has its own Postfix, milter and tracker, each on free ports, with a
node name of its own so the main stack's trackers never see its messages.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.processes import (
    TXRELAY,
    ManagedProcess,
    Stopper,
    free_port,
    port_open,
    wait_until,
)
from tests.harness.services import MilterProcess, PostfixInstance
from tests.harness.stackconfig import stack_config
from txrelay.config import Config, render_toml

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? "
                     r"(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    """Status and body of a GET to one of the tests' own loopback endpoints."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"not a loopback endpoint of the tests: {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 -- checked above
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of metric `name` in a Prometheus text exposition, by sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            labels = tuple(sorted(_LABEL.findall(match["labels"] or "")))
            found[labels] = float(match["value"])
    return found


@dataclass
class MetricsStack:
    """Submit to 127.0.0.1:<port>; scrape milter_url / tracker_url."""

    config: Config
    config_file: Path
    port: int
    postfix: PostfixInstance
    milter: MilterProcess
    tracker: ManagedProcess
    milter_metrics: str
    tracker_metrics: str

    @property
    def milter_url(self) -> str:
        return f"http://{self.milter_metrics}"

    @property
    def tracker_url(self) -> str:
        return f"http://{self.tracker_metrics}"


def _metrics_config(relay: RelayStack, directory: Path, port: int) -> Config:
    """The main stack's settings with its own milter socket, Postfix log and node name, and
    the main stack's Dovecot (one auth service can serve several Postfix instances)."""
    own = stack_config(relay.config, directory, submission_port=port)
    return dataclasses.replace(
        own, dovecot=relay.config.dovecot,
        milter=dataclasses.replace(own.milter, node_name=f"metrics-{secrets.token_hex(3)}"))


@pytest.fixture(scope="module")
def metrics_stack(relay: RelayStack, e2e_dir: Path, stopper: Stopper) -> Iterator[MetricsStack]:
    directory = e2e_dir / f"metrics-{secrets.token_hex(3)}"
    (directory / "milter").mkdir(mode=0o755, parents=True)
    port = free_port()
    config = _metrics_config(relay, directory, port)
    config_file = directory / "txrelay.toml"
    config_file.write_text(render_toml(config))
    milter_metrics, tracker_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    # Explicit in the environment: it overrides the suite's TXRELAY_METRICS_*_LISTEN="".
    # A tick every 2 s (not 60): the tracker's per-account gauges are counted at its tick.
    env = {**os.environ, "TXRELAY_METRICS_MILTER_LISTEN": milter_metrics,
           "TXRELAY_METRICS_TRACKER_LISTEN": tracker_metrics,
           "TXRELAY_TRACKER_TICK_INTERVAL_SECONDS": "2"}
    milter = MilterProcess(config, config_file, directory / "milter.log")
    milter.process = ManagedProcess(milter.process.argv, milter.process.log_path, env=env,
                                    umask=0o000)
    postfix = PostfixInstance(directory / "postfix", sink_port=relay.sink.port,
                              submission_port=port, config_file=config_file)
    tracker = ManagedProcess([TXRELAY, "--config", str(config_file), "tracker"],
                             directory / "tracker.log", env=env)
    try:
        milter.start()
        postfix.prepare()
        postfix.start()
        tracker.start()
        wait_until(lambda: port_open(int(tracker_metrics.rsplit(":", 1)[1])), 20,
                   "tracker metrics endpoint", tracker.log)
        yield MetricsStack(config, config_file, port, postfix, milter, tracker,
                           milter_metrics, tracker_metrics)
    finally:
        stopper.stop_later(tracker.stop)
        stopper.stop_later(postfix.stop)
        stopper.stop_later(milter.stop)
