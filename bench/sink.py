"""Postfix's smtp-sink as the relayhost: dumps every message so the bench can count and check.

One sink runs for the whole benchmark (restarting it would leave Postfix holding cached
connections to a dead port). Between scenarios, when the queue is empty, collect() moves the
dumps into the scenario's own directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.procs import ManagedProcess, free_port, port_open, wait_until

# Lines smtp-sink writes in front of the message (its dump format, see smtp-sink(1)).
SINK_RECORDS = (b"X-Client-Addr:", b"X-Client-Proto:", b"X-Helo-Args:", b"X-Mail-Args:",
                b"X-Rcpt-Args:")


class SmtpSink:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.spool = root / "sink-spool"
        self.spool.mkdir(mode=0o755, parents=True)
        shutil.chown(self.spool, "postfix", "postfix")
        self.daemon = ManagedProcess(["smtp-sink", "-u", "postfix", "-h", "sink.bench.test",
                              "-d", f"{self.spool}/m.", f"127.0.0.1:{self.port}", "256"],
                             root / "smtp-sink.log")

    def start(self) -> None:
        self.daemon.start()
        wait_until(lambda: port_open(self.port), 10, "smtp-sink", self.daemon.log)

    def stop(self) -> None:
        self.daemon.stop()

    def count(self) -> int:
        """Transactions started at the sink (a file is opened at MAIL FROM)."""
        with os.scandir(self.spool) as entries:
            return sum(1 for _ in entries)

    def collect(self, destination: Path) -> list[Path]:
        """Move every dump to `destination`; returns the moved files."""
        destination.mkdir(parents=True, exist_ok=True)
        moved = []
        for entry in list(os.scandir(self.spool)):
            target = destination / entry.name
            os.rename(entry.path, target)
            moved.append(target)
        return moved


def message_bytes(dump: bytes) -> bytes:
    """The message as Postfix delivered it (CRLF line ends), without the sink's records and
    the Received header the sink prepends. Trailing empty lines are dropped: DKIM's body
    canonicalisations ignore them, and the sink appends one."""
    lines = dump.split(b"\n")
    index = 0
    while index < len(lines) and lines[index].startswith(SINK_RECORDS):
        index += 1
    if (index + 1 < len(lines) and lines[index].startswith(b"Received: ")
            and b"(smtp-sink)" in lines[index + 1]):
        index += 1
        while index < len(lines) and lines[index][:1] in (b" ", b"\t"):
            index += 1
    end = len(lines)
    while end > index and lines[end - 1] == b"":
        end -= 1
    return b"\r\n".join(lines[index:end]) + b"\r\n"
