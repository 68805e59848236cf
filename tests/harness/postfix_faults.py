"""Faults of the tests' own Postfix: SIGKILL of the whole instance, options on txrelay's
submission service for one test, and a next hop (Postfix's smtp-sink) without 8BITMIME."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.harness.processes import (
    ManagedProcess,
    free_port,
    port_open,
    wait_until,
)
from tests.harness.services import SUBMISSION_HOST, PostfixInstance
from txrelay.sink import Capture


def postfix_processes(postfix: PostfixInstance) -> list[int]:
    """The pids of this instance's master and of its children (never another Postfix's)."""
    pid_file = postfix.queue_directory / "pid" / "master.pid"
    master = int(pid_file.read_text().split()[0])
    done = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                          text=True, check=False)
    return [master, *(int(pid) for pid in done.stdout.split())]


def kill_postfix(postfix: PostfixInstance) -> list[int]:
    """SIGKILL the master and every child at once, as a power cut would stop them."""
    pids = postfix_processes(postfix)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(_alive(pid) for pid in pids), 10, "Postfix processes gone")
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True, check=False).stdout.strip()
    return state not in ("", "Z")


@contextlib.contextmanager
def submission_options(postfix: PostfixInstance, port: int,
                       **options: str) -> Iterator[None]:
    """`-o name=value` on txrelay's submission service for the block, then removed again
    (postconf -P / -PX on the test's own master.cf, and a reload each time)."""
    service = f"{SUBMISSION_HOST}:{port}/inet"
    for name, value in options.items():
        postfix.postconf("-P", f"{service}/{name}={value}")
    postfix.reload()
    try:
        yield
    finally:
        for name in options:
            postfix.postconf("-PX", f"{service}/{name}")
        postfix.reload()


@contextlib.contextmanager
def main_cf(postfix: PostfixInstance, **settings: str) -> Iterator[None]:
    """main.cf settings of the test's own Postfix for the block, the old values restored."""
    old = {name: postfix.postconf("-h", name).strip() for name in settings}
    postfix.postconf("-e", *(f"{name}={value}" for name, value in settings.items()))
    postfix.reload()
    try:
        yield
    finally:
        postfix.postconf("-e", *(f"{name}={value}" for name, value in old.items()))
        postfix.reload()


class PlainSmtpSink:
    """Postfix's smtp-sink announcing no 8BITMIME (-8), dumping each message to a file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(directory, _postfix_uid(), -1)  # smtp-sink drops to user postfix
        self.process = ManagedProcess(
            ["smtp-sink", "-8", "-u", "postfix", "-d", f"{directory}/%H%M%S.",
             f"127.0.0.1:{self.port}", "10"], directory.parent / "smtp-sink.log")

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: port_open(self.port), 15, "smtp-sink", self.process.log)

    def stop(self) -> None:
        self.process.stop()

    def captures(self) -> list[Capture]:
        return [_read_dump(path.read_bytes()) for path in sorted(self.directory.iterdir())]

    def wait_for_recipient(self, rcpt: str, timeout: float = 30) -> Capture:
        def found() -> list[Capture]:
            return [c for c in self.captures() if rcpt in c.rcpt_tos]

        wait_until(lambda: bool(found()), timeout, f"mail for {rcpt} at smtp-sink",
                   lambda: self.process.log(10))
        return found()[-1]


def _read_dump(data: bytes) -> Capture:
    """smtp-sink's dump: X-Mail-Args / X-Rcpt-Args lines, then the message (its own
    Received: line on top), with LF line ends: given back with CRLF, as it was sent."""
    mail_from, rcpt_tos, rest = "", [], data
    while rest.startswith(b"X-"):
        line, _, rest = rest.partition(b"\n")
        name, _, value = line.decode("utf-8", "replace").partition(": ")
        if name == "X-Mail-Args":
            mail_from = value.split()[0].strip("<>") if value else ""
        elif name == "X-Rcpt-Args":
            rcpt_tos.append(value.split()[0].strip("<>"))
    return Capture(mail_from, tuple(rcpt_tos), rest.replace(b"\n", b"\r\n"))


def _postfix_uid() -> int:
    return pwd.getpwnam("postfix").pw_uid
