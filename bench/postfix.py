"""The bench's own Postfix: the e2e harness's instance (a temp config directory, loopback,
the submission service added by `txrelay postfix configure --config-directory`, the sink as
relayhost) plus a plain-SMTP listener per milter under test.

smtp-source cannot AUTH, so each milter gets a listener of its own; the txrelay ones carry
`milter_macro_defaults = {auth_authen=USER}` so the milter sees an authenticated sender.
That setting exists on this bench instance only: in production it would make every
unauthenticated session look authenticated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.procs import free_port, port_open, wait_until
from tests.harness.services import PostfixInstance


@dataclass(frozen=True)
class Listener:
    """A plain-SMTP smtpd on 127.0.0.1:port whose milter is `milter` ("" = none)."""

    name: str
    port: int
    milter: str
    auth_authen: str = ""


class BenchPostfix(PostfixInstance):
    def __init__(self, root: Path, *, sink_port: int, submission_port: int,
                 config_file: Path, txrelay: str) -> None:
        super().__init__(root, sink_port=sink_port, submission_port=submission_port,
                         config_file=config_file, txrelay=txrelay)
        self.listeners: dict[str, Listener] = {}

    def prepare_listeners(self, listeners: list[tuple[str, str, str]]) -> None:
        """The harness's instance, then one listener per (name, milter, auth_authen)."""
        self.prepare()
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
        # The same size limit as txrelay's own service (configure sets it there, not in
        # main.cf): the big scenario's 30 MB messages pass every listener alike.
        overrides.update(self._txrelay_size_settings())
        for key, value in overrides.items():
            self.postconf("-P", f"{service}/inet/{key}={value}")
        self.listeners[listener.name] = listener

    def _txrelay_size_settings(self) -> dict[str, str]:
        """message_size_limit and cleanup_service_name of txrelay's configured service."""
        values = self._txrelay_service_settings()
        return {key: values[key] for key in ("message_size_limit", "cleanup_service_name")
                if key in values}

    def _txrelay_service_settings(self) -> dict[str, str]:
        """Every -o of the submission service `txrelay postfix configure` added."""
        settings: dict[str, dict[str, str]] = {}
        for line in self.postconf("-P").splitlines():
            # "service/type/name = value"; an empty value is printed as "... name ="
            name, _, value = line.partition("=")
            service, _, key = name.strip().rpartition("/")
            settings.setdefault(service, {})[key] = value.strip()
        for values in settings.values():
            if values.get("syslog_name", "").endswith("/txrelay"):
                return values
        return {}

    def add_submission_copy(self, name: str, milter: str = "") -> int:
        """A copy of txrelay's submission service (STARTTLS, AUTH through the same Dovecot,
        the same limits) on a port of its own, with `milter` instead of txrelay's (""
        none): with none it is the ceiling the per-message session scenario is measured
        against, with OpenDKIM the reference milter on the same path. Returns its port."""
        port = free_port()
        service = f"127.0.0.1:{port}"
        self.postconf("-M", f"{service}/inet = {service} inet n - n - - smtpd")
        # txrelay's milter settings are not the other milter's (and one holds spaces).
        overrides = {key: value for key, value in self._txrelay_service_settings().items()
                     if not key.startswith(("milter_", "smtpd_milter"))}
        overrides.update({"syslog_name": f"postfix/bench-{name}", "smtpd_milters": milter})
        for key, value in overrides.items():
            self.postconf("-P", f"{service}/inet/{key}={value}")
        self.listeners[name] = Listener(name, port, milter)
        return port

    def start(self) -> None:
        super().start()
        for listener in self.listeners.values():
            wait_until(lambda p=listener.port: port_open(p), 15,  # type: ignore[misc]
                       f"Postfix listener {listener.port}", self.log)

    def queued(self) -> int:
        """Messages still in the queue (incoming, active, deferred, hold, maildrop): read
        from the directories, not with postqueue, because the bench polls it while measuring."""
        count = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _dirpath, _dirs, files in os.walk(self.queue_directory / sub):
                count += len(files)
        return count
