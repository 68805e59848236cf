"""A real systemd journal for tests: systemd-journald started here (no systemd as PID 1)
if none runs, /dev/log linked to its syslog socket, and everything it made removed after."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tests.harness.processes import HarnessError, ManagedProcess, run, wait_until

JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNAL_RUN = Path("/run/systemd/journal")
SOCKET = JOURNAL_RUN / "socket"
SYSLOG_SOCKET = JOURNAL_RUN / "dev-log"
DEV_LOG = Path("/dev/log")
# Where journald keeps a volatile journal; removed after only if the test's journald made it.
RUNTIME_STORE = Path("/run/log/journal")


@contextlib.contextmanager
def system_journal(directory: Path) -> Iterator[None]:
    """journald and /dev/log for the duration; a journald that already runs is used as it is.
    Always cleans up what it made, also when starting failed half-way."""
    journald: ManagedProcess | None = None
    made_runtime_store = not RUNTIME_STORE.exists()
    linked = False
    try:
        if not SOCKET.exists():
            if not JOURNALD.exists():
                raise HarnessError(f"{JOURNALD} is missing: scripts/install.sh installs systemd")
            journald = ManagedProcess([str(JOURNALD)], directory / "journald.log")
            journald.start()
            wait_until(lambda: SOCKET.exists() and SYSLOG_SOCKET.exists(), 15,
                       "systemd-journald's sockets", journald.log)
            # What boot does on a systemd host: the journal's files belong to group
            # systemd-journal, whose members may read them (the tracker's unit relies on it).
            run(["systemd-tmpfiles", "--create", f"--prefix={RUNTIME_STORE}"])
        if not os.path.lexists(DEV_LOG):
            DEV_LOG.symlink_to(SYSLOG_SOCKET)
            linked = True
        yield
    finally:
        if linked:
            DEV_LOG.unlink(missing_ok=True)
        if journald is not None:
            journald.stop()
            shutil.rmtree(JOURNAL_RUN, ignore_errors=True)
            if made_runtime_store:
                shutil.rmtree(RUNTIME_STORE, ignore_errors=True)


def journal_tail(identifier: str, lines: int = 60) -> str:
    """The last lines of the entries of one Postfix (syslog_name `identifier`), for failure
    messages."""
    done = run(["journalctl", "--no-pager", "--quiet", "-o", "short-iso", "-n", "5000"],
               check=False)
    picked = [line for line in done.stdout.splitlines() if f" {identifier}/" in line]
    return "\n".join(picked[-lines:])
