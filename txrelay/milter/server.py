"""Runs the milter daemon: socket, negotiated actions, libmilter's main loop, clean stop."""

from __future__ import annotations

import logging
import os
import signal
import stat
from pathlib import Path

import Milter

from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.errors import ConfigError
from txrelay.metrics import start_milter_endpoint
from txrelay.milter.relay import ACTIONS, RelayMilter
from txrelay.milter.runtime import open_runtime

log = logging.getLogger("txrelay.milter")

MILTER_NAME = "txrelay"
# Seconds libmilter waits on Postfix; shorter than nothing we do (store timeouts are
# 0.5 s for Redis and 3 s for PostgreSQL, well under Postfix's 30 s milter_command_timeout).
LIBMILTER_TIMEOUT = 600
# libmilter's own thread stops the daemon on these; our threads must not catch them first.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def prepare_socket(spec: str) -> None:
    """For unix:PATH, create the parent directory and remove a stale socket file."""
    if not spec.startswith(("unix:", "local:")):
        return
    path = Path(spec.split(":", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"[milter] socket {path} exists and is not a socket; remove it or "
                          "choose another path")
    path.unlink()


def run(config: Config, clock: Clock, socket_spec: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; returns after libmilter stopped and handles are closed."""
    spec = socket_spec or config.milter.socket
    prepare_socket(spec)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by every thread
    runtime = open_runtime(config, clock)
    endpoint = start_milter_endpoint(config)  # [metrics] milter_listen; "" = none
    try:
        Milter.factory = lambda: RelayMilter(runtime)
        Milter.set_flags(ACTIONS)
        Milter.set_exception_policy(Milter.TEMPFAIL)
        log.info("event=milter_start socket=%s node=%s pid=%d", spec, runtime.node, os.getpid())
        Milter.runmilter(MILTER_NAME, spec, timeout=LIBMILTER_TIMEOUT, rmsock=True)
    finally:
        if endpoint is not None:
            endpoint.close()
        runtime.close()
        log.info("event=milter_stop socket=%s", spec)
