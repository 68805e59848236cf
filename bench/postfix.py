"""The bench's own Postfix: a temp config directory, loopback listeners, smtp-sink as relayhost.

The submission service (STARTTLS + AUTH) is added by `txrelay postfix configure
--config-directory`, the code path an admin runs. For smtp-source, which cannot AUTH, each
milter under test gets a plain-SMTP listener of its own; the txrelay ones carry
`milter_macro_defaults = {auth_authen=USER}` so the milter sees an authenticated sender.
That setting exists on this bench instance only: in production it would make every
unauthenticated session look authenticated.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchFailure, free_port, port_open, run, tail, wait_until

HOSTNAME = "relay.bench.txrelay.test"


@dataclass(frozen=True)
class Listener:
    """A plain-SMTP smtpd on 127.0.0.1:port whose milter is `milter` ("" = none)."""

    name: str
    port: int
    milter: str
    auth_authen: str = ""


class BenchPostfix:
    def __init__(self, root: Path, *, sink_port: int, submission_port: int,
                 config_file: Path, txrelay: str) -> None:
        self.root = root
        self.etc = root / "etc"
        self.queue = root / "queue"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.sink_port = sink_port
        self.submission_port = submission_port
        self.config_file = config_file
        self.txrelay = txrelay
        self.listeners: dict[str, Listener] = {}

    def prepare(self, listeners: list[tuple[str, str, str]]) -> None:
        """main.cf and master.cf from scratch, txrelay's configure, then one listener per
        (name, milter, auth_authen)."""
        for directory in (self.etc, self.queue, self.data):
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        self._certificate()
        (self.etc / "main.cf").write_text(self._main_cf())
        shutil.copy("/etc/postfix/master.cf", self.etc / "master.cf")
        self.postconf("-F", "*/*/chroot = n")
        self.postconf("-MX", "smtp/inet")
        done = run([self.txrelay, "--config", str(self.config_file), "--json", "postfix",
                    "configure", "--config-directory", str(self.etc),
                    "--listen", f"127.0.0.1:{self.submission_port}"])
        self.configure_report = json.loads(done.stdout)
        for name, milter, auth_authen in listeners:
            self._add_listener(Listener(name, free_port(), milter, auth_authen))

    def _add_listener(self, listener: Listener) -> None:
        service = f"127.0.0.1:{listener.port}"
        self.postconf("-M", f"{service}/inet = {service} inet n - n - - smtpd")
        overrides = {"syslog_name": f"postfix/bench-{listener.name}",
                     "smtpd_milters": listener.milter,
                     "milter_macro_defaults":
                         f"{{auth_authen={listener.auth_authen}}}" if listener.auth_authen
                         else ""}
        for key, value in overrides.items():
            self.postconf("-P", f"{service}/inet/{key}={value}")
        self.listeners[listener.name] = listener

    def _certificate(self) -> None:
        self.cert = self.etc / "cert.pem"
        self.key = self.etc / "key.pem"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={HOSTNAME}",
             "-keyout", str(self.key), "-out", str(self.cert)])
        self.key.chmod(0o600)

    def _main_cf(self) -> str:
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            f"myhostname = {HOSTNAME}",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            f"relayhost = [127.0.0.1]:{self.sink_port}",
            "smtp_tls_security_level = none",
            f"smtpd_tls_cert_file = {self.cert}",
            f"smtpd_tls_key_file = {self.key}",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.root}",
            "",
        ])

    def postconf(self, *args: str) -> str:
        return run(["postconf", "-c", str(self.etc), *args]).stdout

    def start(self) -> None:
        done = run(["postfix", "-c", str(self.etc), "start"], check=False)
        if done.returncode != 0:
            raise BenchFailure(f"postfix start failed\n{tail(self.maillog)}")
        for port in [self.submission_port, *(lst.port for lst in self.listeners.values())]:
            wait_until(lambda p=port: port_open(p), 15, f"Postfix listener {port}",  # type: ignore[misc]
                       lambda: tail(self.maillog))

    def stop(self) -> None:
        run(["postfix", "-c", str(self.etc), "stop"], check=False)

    def queued(self) -> int:
        """Messages still in the queue (incoming, active, deferred, hold, maildrop)."""
        count = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _dirpath, _dirs, files in os.walk(self.queue / sub):
                count += len(files)
        return count

    def log_size(self) -> int:
        try:
            return self.maillog.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.maillog, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
