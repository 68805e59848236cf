"""A fail2ban server of a test's own: its own configuration directory holding the filter and
jail txrelay ships (unchanged), its own socket, pid file and in-memory database, and a ban
action that only writes the banned address to a file. It never touches the host's fail2ban
or firewall: the shipped jail's ban action is replaced, and its log path points at the
test's log file."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import run, wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "fail2ban"
COMMON = Path("/etc/fail2ban/filter.d/common.conf")  # Debian's, which the filter includes
JAIL = "txrelay"


@dataclass(frozen=True)
class Fail2ban:
    directory: Path
    log: Path  # the jail's logpath: append mail log lines here
    bans: Path  # one banned address per line, written by the test's ban action

    def client(self, *args: str) -> str:
        return run(_client(self.directory, *args), timeout=30).stdout

    def get(self, setting: str) -> str:
        return self.client("get", JAIL, setting).strip()

    def banned(self) -> list[str]:
        return self.bans.read_text().split() if self.bans.exists() else []

    def total_failed(self) -> int:
        status = self.client("status", JAIL)
        return int(status.partition("Total failed:")[2].split()[0])

    def server_log(self) -> str:
        path = self.directory / "fail2ban.log"
        return path.read_text()[-4000:] if path.exists() else "(no fail2ban.log)"


def _write_configuration(directory: Path, log: Path, bans: Path) -> None:
    for sub in ("filter.d", "action.d", "jail.d"):
        (directory / sub).mkdir(parents=True)
    shutil.copy(DEPLOY / "filter.d" / "txrelay.conf", directory / "filter.d")
    shutil.copy(COMMON, directory / "filter.d")
    shutil.copy(DEPLOY / "jail.d" / "txrelay.conf", directory / "jail.d")
    (directory / "fail2ban.conf").write_text(
        "[Definition]\nloglevel = INFO\n"
        f"logtarget = {directory}/fail2ban.log\nsyslogsocket = auto\n"
        f"socket = {directory}/fail2ban.sock\npidfile = {directory}/fail2ban.pid\n"
        "dbfile = :memory:\ndbpurgeage = 1d\nallowipv6 = auto\n")
    # The tests' clients speak from loopback addresses, which fail2ban ignores by default.
    (directory / "jail.conf").write_text(
        "[DEFAULT]\nignoreself = false\nignoreip =\nbanaction = record\naction = record\n")
    (directory / "action.d" / "record.conf").write_text(
        "[Definition]\nactionstart = touch " + str(bans) + "\n"
        "actionban = echo <ip> >> " + str(bans) + "\n"
        "actionunban =\nactioncheck =\nactionstop =\n")
    # Only where the log is and how it is read differ from the shipped jail (a .local file
    # overrides the .conf, as an admin's would).
    (directory / "jail.d" / "txrelay.local").write_text(
        f"[{JAIL}]\nlogpath = {log}\nbackend = polling\n")


@contextmanager
def running_fail2ban(directory: Path) -> Iterator[Fail2ban]:
    """fail2ban-server in the foreground, as this process's child; stopped (killed if need
    be) on the way out, whatever happened."""
    log, bans = directory / "mail.log", directory / "bans"
    _write_configuration(directory, log, bans)
    log.touch()
    server = Fail2ban(directory, log, bans)
    process = subprocess.Popen(_client(directory, "-x", "-f", "start"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: process.poll() is not None or _jail_runs(directory), 30,
                   "fail2ban's jail started", server.server_log, interval=0.2)
        assert process.poll() is None, f"fail2ban exited: {server.server_log()}"
        yield server
    finally:
        if process.poll() is None:
            try:
                subprocess.run(_client(directory, "stop"), capture_output=True, timeout=30,
                               check=False)
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _client(directory: Path, *args: str) -> list[str]:
    return ["fail2ban-client", "-c", str(directory), "-s", str(directory / "fail2ban.sock"),
            "-p", str(directory / "fail2ban.pid"), *args]


def _jail_runs(directory: Path) -> bool:
    done = subprocess.run(_client(directory, "status", JAIL), capture_output=True, timeout=30,
                          check=False)
    return done.returncode == 0
