"""The real services of one e2e stack: Dovecot, the capture sink, Postfix and the milter."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from tests.harness.journal import journal_tail
from tests.harness.processes import (
    PRISTINE_MASTER_CF,
    TXRELAY,
    HarnessError,
    ManagedProcess,
    free_port,
    port_open,
    run,
    tail,
    unix_socket_open,
    wait_until,
)
from txrelay.config import Config
from txrelay.provisioning.dovecot import dovecot_config_path, write_dovecot_config
from txrelay.sink import Capture, read_capture

SUBMISSION_HOST = "127.0.0.1"


class DovecotService:
    """txrelay's auth-only Dovecot, configured by write_dovecot_config (the code init runs)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.conf_path = dovecot_config_path(config)
        self.auth_socket = Path(config.dovecot.auth_socket)
        self.log_path = Path(config.dovecot.log_path)

    def start(self) -> None:
        write_dovecot_config(self.config)
        run(["dovecot", "-c", str(self.conf_path)])
        wait_until(lambda: unix_socket_open(self.auth_socket), 15, "Dovecot auth socket",
                   lambda: tail(self.log_path))

    def stop(self) -> None:
        if not self.conf_path.exists():
            return
        run(["doveadm", "-c", str(self.conf_path), "stop"], check=False)
        pid_file = Path(self.config.dovecot.base_dir) / "master.pid"
        wait_until(lambda: not pid_file.exists(), 10, "Dovecot stop")

    def auth_test(self, username: str, password: str) -> bool:
        # A remote IP of its own per check: Dovecot's auth penalty (2 s, then 6 s, ...) is
        # kept per client IP, and would otherwise pile up over the whole session.
        remote_ip = f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.1"
        done = run(["doveadm", "-c", str(self.conf_path), "auth", "test", "-x",
                    f"rip={remote_ip}", "--", username, password], check=False)
        if done.returncode not in (0, 77):
            raise HarnessError(f"doveadm auth test exited {done.returncode}: {done.stderr}"
                               f"\n{tail(self.log_path)}")
        return done.returncode == 0


class CaptureSink:
    """`txrelay sink` on a free port with its own Maildir."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.maildir = directory / "Maildir"
        self.process = ManagedProcess(
            [TXRELAY, "sink", "--listen", f"127.0.0.1:{self.port}", "--maildir",
             str(self.maildir)], directory / "sink.log")

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: port_open(self.port), 15, "capture sink", self.process.log)

    def stop(self) -> None:
        self.process.stop()

    def captures(self) -> list[Capture]:
        """Every stored message, in order of arrival: envelope and the bytes as received."""
        new = self.maildir / "new"
        paths = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns) if new.exists() else []
        return [read_capture(path.read_bytes()) for path in paths]

    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(c.raw, policy=email.policy.default)  # type: ignore[misc]
                for c in self.captures()]

    def count(self) -> int:
        new = self.maildir / "new"
        return len(list(new.iterdir())) if new.exists() else 0

    def wait_for(self, count: int, timeout: float = 20) -> list[Capture]:
        wait_until(lambda: self.count() >= count, timeout, f"{count} message(s) at the sink",
                   lambda: f"sink has {self.count()}\n{self.process.log(10)}")
        return self.captures()

    def for_recipient(self, rcpt: str) -> list[Capture]:
        return [c for c in self.captures() if rcpt in c.rcpt_tos]

    def wait_for_recipient(self, rcpt: str, timeout: float = 20) -> Capture:
        """The message relayed to `rcpt` (use a recipient unique to the test)."""
        wait_until(lambda: bool(self.for_recipient(rcpt)), timeout, f"mail for {rcpt}",
                   lambda: self.process.log(10))
        return self.for_recipient(rcpt)[-1]

    def clear(self) -> None:
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            if folder.exists():
                for item in folder.iterdir():
                    item.unlink()


class PostfixInstance:
    """A Postfix of the tests' own in a temp directory, configured by `txrelay postfix
    configure --config-directory` (the code path an admin runs). It logs to its own
    maillog_file, or with `syslog_name` through syslog(3) (no maillog_file: the systemd
    journal when /dev/log is journald's, as on a Debian 12 server without rsyslog)."""

    def __init__(self, directory: Path, *, sink_port: int, submission_port: int,
                 config_file: Path, txrelay: str = TXRELAY,
                 syslog_name: str | None = None) -> None:
        self.txrelay = txrelay
        self.root = directory
        self.config_directory = directory / "etc"
        # Known before main.cf is written: main.cf names them, _lay_out then makes them.
        self.cert = self.config_directory / "cert.pem"
        self.key = self.config_directory / "key.pem"
        self.queue_directory = directory / "queue"
        self.data_directory = directory / "data"
        self.maillog = directory / "maillog"
        self.sink_port = sink_port
        self.submission_port = submission_port
        self.config_file = config_file
        self.syslog_name = syslog_name

    def prepare(self) -> None:
        """Directories, certificate, main.cf and master.cf from scratch, then txrelay's
        settings through the CLI.

        Without the pipe to `txrelay inbound deliver`: Postfix's own DSNs for the tests'
        bounces go to the capture sink like any mail (the relayhost). The pipe runs as an
        unprivileged user that cannot read the tests' configuration, so each DSN would be
        retried every few seconds for the whole run, a Python start each time;
        tests/e2e/test_inbound.py sets the pipe up on a Postfix of its own."""
        self._lay_out(self._main_cf())
        done = run([self.txrelay, "--config", str(self.config_file), "--json", "postfix",
                    "configure", "--config-directory", str(self.config_directory),
                    "--listen", f"{SUBMISSION_HOST}:{self.submission_port}", "--no-inbound"])
        self.configure_report = json.loads(done.stdout)

    def _lay_out(self, main_cf: str) -> None:
        """Directories, a certificate, this main.cf and Debian's master.cf without chroot and
        without the port-25 service (each test instance listens on its own free ports)."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        for directory in (self.config_directory, self.queue_directory, self.data_directory):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_directory, "postfix", "postfix")
        self._make_certificate()
        (self.config_directory / "main.cf").write_text(main_cf)
        shutil.copy(PRISTINE_MASTER_CF, self.config_directory / "master.cf")
        self.postconf("-F", "*/*/chroot = n")
        self.postconf("-MX", "smtp/inet")

    def _make_certificate(self) -> None:
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=relay.txrelay.test", "-keyout", str(self.key), "-out",
             str(self.cert)])
        self.key.chmod(0o600)

    def _main_cf(self) -> str:
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_directory}",
            f"data_directory = {self.data_directory}",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = relay.txrelay.test",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            f"relayhost = [127.0.0.1]:{self.sink_port}",
            "smtp_tls_security_level = none",
            f"smtpd_tls_cert_file = {self.cert}",
            f"smtpd_tls_key_file = {self.key}",
            # txrelay postfix configure never writes main.cf; what a relay that only
            # relays for txrelay wants globally (check warns without it) is set here.
            "disable_mime_output_conversion = yes",
            *self._logging(),
            # The sink answers at once; retries come quickly so deferral tests stay short.
            "queue_run_delay = 5s",
            "minimal_backoff_time = 5s",
            "maximal_backoff_time = 10s",
            "smtp_connect_timeout = 5s",
            "",
        ])

    def _logging(self) -> list[str]:
        if self.syslog_name is not None:
            return [f"syslog_name = {self.syslog_name}"]
        return [f"maillog_file = {self.maillog}", f"maillog_file_prefixes = {self.root}"]

    def postconf(self, *args: str) -> str:
        return run(["postconf", "-c", str(self.config_directory), *args]).stdout

    def start(self) -> None:
        done = run(["postfix", "-c", str(self.config_directory), "start"], check=False)
        if done.returncode != 0:
            raise HarnessError(f"postfix start failed\n{self.log()}")
        wait_until(lambda: port_open(self.submission_port), 15, "Postfix submission port",
                   self.log)

    def stop(self) -> None:
        run(["postfix", "-c", str(self.config_directory), "stop"], check=False)
        pid_file = self.queue_directory / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        try:
            wait_until(lambda: not _alive(pid), 10, "Postfix master exit")
        except HarnessError:
            os.kill(pid, signal.SIGKILL)

    def reload(self) -> None:
        run(["postfix", "-c", str(self.config_directory), "reload"])

    def queue(self) -> list[dict[str, object]]:
        done = run(["postqueue", "-c", str(self.config_directory), "-j"])
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def queue_count(self) -> int:
        return len(self.queue())

    def flush(self) -> None:
        run(["postqueue", "-c", str(self.config_directory), "-f"])

    def log(self, lines: int = 60) -> str:
        if self.syslog_name is not None:
            return journal_tail(self.syslog_name, lines)
        return tail(self.maillog, lines)


class MilterProcess:
    """`txrelay --config FILE milter` as a child process; start/stop/kill for fault tests."""

    def __init__(self, config: Config, config_file: Path, log_path: Path) -> None:
        self.config = config
        spec = config.milter.socket
        self.socket_path = Path(spec.split(":", 1)[1]) if spec.startswith("unix:") else None
        self.process = ManagedProcess([TXRELAY, "--config", str(config_file), "milter"],
                                      log_path)

    def start(self) -> None:
        self.process.start()
        wait_until(self.ready, 20, "milter socket", self.process.log)

    def ready(self) -> bool:
        if not self.process.running:
            raise HarnessError(f"the milter exited\n{self.process.log()}")
        if self.socket_path is None:
            port, _, host = self.config.milter.socket.split(":", 1)[1].partition("@")
            return port_open(int(port), host or "127.0.0.1")
        return unix_socket_open(self.socket_path)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    @property
    def running(self) -> bool:
        return self.process.running

    def log(self, lines: int = 60) -> str:
        return self.process.log(lines)

    def loaded_policy_version(self) -> int:
        """The newest policy version the milter logged as loaded (0 before the first)."""
        try:
            text = self.process.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        versions = re.findall(r"event=policy_loaded version=(\d+)", text)
        return int(versions[-1]) if versions else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                          text=True, check=False).stdout.strip() not in ("", "Z")
