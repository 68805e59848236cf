"""Starting, waiting for and stopping the services the end-to-end tests run themselves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# The `txrelay` the services run: the one installed beside the Python running the tests
# (scripts/test.sh runs the venv's pytest), unless E2E_VENV_BIN names another venv.
VENV_BIN = Path(os.environ.get("E2E_VENV_BIN", Path(sys.executable).parent))
TXRELAY = str(VENV_BIN / "txrelay")
# Debian's master.cf as packaged: /etc/postfix/master.cf is the machine's, and an earlier test
# or the demo may have added txrelay's services to it.
PRISTINE_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")


class HarnessError(RuntimeError):
    """A service of the tests' own did not start or stop as expected."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now, and not one this process was
    given before: callers often take several before anything listens (the bench's Postfix
    writes all its listeners first), and the kernel may offer a port it just offered again,
    so two services got one port and `postconf -M` put the second over the first."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               diagnose: Callable[[], str] | None = None, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    detail = f"\n{diagnose()}" if diagnose else ""
    raise HarnessError(f"{what} not ready after {timeout:.0f}s{detail}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_socket_open(path: str | Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def open_path_for(path: Path, *, stop_at: Path = Path("/")) -> None:
    """Let other users (postfix, dovecot) traverse the directories above a socket.

    pytest's temp directories are 0700; Postfix's smtpd (user postfix) must reach the milter
    and Dovecot sockets in them.
    """
    for directory in [path, *path.parents]:
        if directory == stop_at or directory == Path("/"):
            break
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod((mode & 0o7777) | 0o011)


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        env: dict[str, str] | None = None,
        user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; a failure raises with its output (Postfix tools need a tty for stderr,
    so their messages are in the mail log instead)."""
    command = list(argv)
    if user:
        command = ["runuser", "-u", user, "--", *command]
    # Files, not pipes: daemons (dovecot, postfix) keep inherited pipes open forever.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        returncode = subprocess.run(command, stdout=out, stderr=err, timeout=timeout, env=env,
                                    stdin=subprocess.DEVNULL, check=False).returncode
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(command, returncode,
                                           out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))
    if check and done.returncode != 0:
        raise HarnessError(f"{' '.join(command)} exited {done.returncode}\n"
                           f"stdout: {done.stdout}\nstderr: {done.stderr}")
    return done


class ManagedProcess:
    """A foreground child with its output in a log file; stop() is SIGTERM then SIGKILL."""

    def __init__(self, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, umask: int = -1) -> None:
        self.argv = list(argv)
        self.umask = umask
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True, umask=self.umask)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise HarnessError(f"{self.argv[0]} is not running")
        return self.process.pid

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

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up of its own."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def log(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


class Stopper:
    """Stops services in background threads, so a session's teardown takes as long as its
    slowest service rather than the sum; join() waits for every stop and re-raises."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=12, thread_name_prefix="stop")
        self._futures: list[Future[None]] = []

    def stop_later(self, stop: Callable[[], None]) -> None:
        self._futures.append(self._pool.submit(stop))

    def join(self) -> None:
        try:
            for future in self._futures:
                future.result(timeout=60)
        finally:
            self._pool.shutdown(wait=True)
