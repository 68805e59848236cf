"""Processes of the benchmark: run a tool, keep a daemon, wait for a port, read /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


class BenchFailure(RuntimeError):
    """The benchmark could not run or its result is wrong: the run must exit non-zero."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_socket_open(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               diagnose: Callable[[], str] | None = None, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    detail = f"\n{diagnose()}" if diagnose else ""
    raise BenchFailure(f"{what}: not done after {timeout:.0f}s{detail}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion; output through files (daemons keep inherited pipes open)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = subprocess.run(list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                              timeout=timeout, env=env, check=False).returncode
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(list(argv), code, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))
    if check and code != 0:
        raise BenchFailure(f"{' '.join(argv)} exited {code}\n{done.stdout}\n{done.stderr}")
    return done


class Daemon:
    """A foreground child writing to a log file; stop() is SIGTERM, then SIGKILL."""

    def __init__(self, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchFailure(f"{self.argv[0]} is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)


@dataclass(frozen=True)
class ProcSample:
    """CPU time (all threads) and resident memory of one process at one moment."""

    cpu_ms: float
    system_ms: float
    rss_kb: int
    hwm_kb: int


def sample(pid: int) -> ProcSample:
    # Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_ms = (int(stat[11]) + int(stat[12])) * CLOCK_TICK_MS
    system_ms = int(stat[12]) * CLOCK_TICK_MS
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ProcSample(cpu_ms, system_ms, _kb(status.get("VmRSS")), _kb(status.get("VmHWM")))


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh, so each scenario reports its own peak (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def machine_busy_ms() -> float:
    """CPU time used by the whole machine so far (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) * CLOCK_TICK_MS
