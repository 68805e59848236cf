"""Runs the milter daemon: socket, negotiated actions, libmilter's main loop, clean stop."""

from __future__ import annotations

import grp
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
from txrelay.milter.runtime import open_journal, open_runtime
from txrelay.supervised import Loops

log = logging.getLogger("txrelay.milter")

MILTER_NAME = "txrelay"
# Seconds libmilter waits for Postfix's next command before it drops the session. Far longer
# than any wait of ours (store timeouts are 0.5 s for Redis and 3 s for PostgreSQL, well under
# Postfix's 30 s milter_command_timeout), so it is never libmilter that gives up on a session.
LIBMILTER_TIMEOUT = 600
# libmilter's own thread stops the daemon on these; our threads must not catch them first.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def prepare_socket(spec: str, group_name: str) -> None:
    """For unix:PATH: create the parent directory, remove a stale socket file, and make sure
    the socket libmilter is about to create can be used by Postfix.

    smtpd runs as user postfix and needs write permission on the socket. The directory gets
    the group ([milter] socket_group) and the set-group-ID bit, so the socket inherits that
    group, and the umask gives it mode 0660: Postfix can connect, nobody else can.
    """
    if not spec.startswith(("unix:", "local:")):
        return
    path = Path(spec.split(":", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    _share_directory_with(path.parent, group_name)
    os.umask(0o117)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(
            f"[milter] socket {path} exists and is not a socket; remove it or choose another path"
        )
    path.unlink()


def _share_directory_with(directory: Path, group_name: str) -> None:
    if not group_name:
        return
    try:
        gid = grp.getgrnam(group_name).gr_gid
    except KeyError:
        raise ConfigError(
            f"[milter] socket_group {group_name!r} does not exist on this machine; "
            'set it to the group Postfix runs as (postfix), or "" to manage '
            "the socket's permissions yourself"
        ) from None
    info = directory.stat()
    if info.st_gid != gid:
        os.chown(directory, -1, gid)
    wanted = stat.S_IMODE(info.st_mode) | stat.S_ISGID | stat.S_IRGRP | stat.S_IXGRP
    if stat.S_IMODE(info.st_mode) != wanted:
        os.chmod(directory, wanted)


def run(config: Config, clock: Clock, socket_spec: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; returns after libmilter stopped and handles are closed."""
    spec = socket_spec or config.milter.socket
    prepare_socket(spec, config.milter.socket_group)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by every thread
    # The endpoint starts before the runtime, so /healthz answers from the first second.
    journal = open_journal(config)
    loops = Loops()  # filled by open_runtime; /healthz shows a dead or frozen one
    # On [metrics] milter_listen; "" = no endpoint (None).
    endpoint = start_milter_endpoint(config, journal.room, loops.statuses, journal.quarantined)
    try:
        runtime = open_runtime(config, clock, journal, loops)
    except BaseException:  # e.g. the bounce secret missing: stop with its reason, no thread left
        if endpoint is not None:
            endpoint.close()
        journal.close()
        raise
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
