"""A typical existing mail server for the drop-in tests: a Postfix whose admin already has
a submission service with its own SASL (a Dovecot of the mailbox users), OpenDKIM-style
milter with default_action=accept on the port-25 role, non_smtpd_milters = $smtpd_milters,
an after-queue content_filter and a 50 MB message_size_limit — before txrelay is added."""

from __future__ import annotations

from pathlib import Path

from tests.harness.processes import (
    free_port,
    port_open,
    run,
    tail,
    unix_socket_open,
    wait_until,
)
from tests.harness.services import PostfixInstance

MAILBOX_USER = "alice"
MAILBOX_PASSWORD = "mailbox-password-1"
EXISTING_SIZE_LIMIT = 52428800


class MailboxDovecot:
    """The mailbox users' Dovecot (auth only here): its own instance, socket and users."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.conf_path = directory / "dovecot.conf"
        self.base_dir = directory / "run"
        self.auth_socket = self.base_dir / "auth-mailbox"
        self.log_path = directory / "dovecot.log"

    def start(self) -> None:
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        hashed = run(["openssl", "passwd", "-6", MAILBOX_PASSWORD]).stdout.strip()
        passwd = self.directory / "passwd"
        passwd.write_text(f"{MAILBOX_USER}:{{SHA512-CRYPT}}{hashed}\n")
        passwd.chmod(0o644)
        self.conf_path.write_text("\n".join([
            "instance_name = mailbox",
            "protocols =",
            f"base_dir = {self.base_dir}",
            f"state_dir = {self.base_dir}/state",
            "ssl = no",
            f"log_path = {self.log_path}",
            "auth_mechanisms = plain login",
            "disable_plaintext_auth = no",
            "passdb {",
            "  driver = passwd-file",
            f"  args = {passwd}",
            "}",
            "userdb {",
            "  driver = static",
            "  args = uid=dovecot gid=dovecot home=/nonexistent",
            "}",
            "service auth {",
            "  unix_listener auth-mailbox {",
            "    mode = 0660",
            "    user = postfix",
            "    group = postfix",
            "  }",
            "}",
            "",
        ]))
        run(["dovecot", "-c", str(self.conf_path)])
        wait_until(lambda: unix_socket_open(self.auth_socket), 15, "mailbox Dovecot socket",
                   lambda: tail(self.log_path))

    def stop(self) -> None:
        if self.conf_path.exists():
            run(["doveadm", "-c", str(self.conf_path), "stop"], check=False)


class ExistingServer(PostfixInstance):
    """The admin's Postfix as it is before txrelay: prepare() writes it, configure is run
    separately by the test (through the CLI, as the admin would)."""

    def __init__(self, directory: Path, *, sink_port: int, filter_port: int,
                 submission_port: int, mailbox: MailboxDovecot, config_file: Path) -> None:
        super().__init__(directory, sink_port=sink_port, submission_port=submission_port,
                         config_file=config_file)
        self.filter_port = filter_port
        self.mailbox = mailbox
        self.mailbox_port = free_port()
        self.port25 = free_port()
        self.dead_milter_port = free_port()

    def prepare(self) -> None:
        self._lay_out(self._existing_main_cf())
        # The port-25 role on a free loopback port, and the mailbox users' submission.
        self.postconf("-M", f"127.0.0.1:{self.port25}/inet=127.0.0.1:{self.port25} inet n - n "
                      "- - smtpd")
        service = f"127.0.0.1:{self.mailbox_port}"
        self.postconf("-M", f"{service}/inet={service} inet n - n - - smtpd "
                      "-o syslog_name=postfix/submission -o smtpd_tls_security_level=encrypt "
                      "-o smtpd_sasl_auth_enable=yes -o smtpd_sasl_type=dovecot "
                      f"-o smtpd_sasl_path={self.mailbox.auth_socket} "
                      "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject "
                      "-o smtpd_recipient_restrictions=permit_sasl_authenticated,reject")

    def _existing_main_cf(self) -> str:
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_directory}",
            f"data_directory = {self.data_directory}",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = mail.existing.test",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            f"relayhost = [127.0.0.1]:{self.sink_port}",
            "smtp_tls_security_level = none",
            f"smtpd_tls_cert_file = {self.cert}",
            f"smtpd_tls_key_file = {self.key}",
            "smtpd_tls_security_level = may",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.root}",
            # OpenDKIM on port 25, as Debian's guides set it up (nothing listens here: its
            # default_action=accept lets mail pass).
            f"smtpd_milters = {{ inet:127.0.0.1:{self.dead_milter_port}, "
            "default_action=accept }",
            "non_smtpd_milters = $smtpd_milters",
            "milter_default_action = accept",
            # An after-queue filter (amavis-like); here it delivers to a sink of its own.
            f"content_filter = smtp:[127.0.0.1]:{self.filter_port}",
            f"message_size_limit = {EXISTING_SIZE_LIMIT}",
            "queue_run_delay = 5s",
            "minimal_backoff_time = 5s",
            "maximal_backoff_time = 10s",
            "smtp_connect_timeout = 5s",
            "",
        ])

    def start(self) -> None:
        super().start()
        for port in (self.mailbox_port, self.port25):
            wait_until(lambda p=port: port_open(p), 15,  # type: ignore[misc]
                       f"Postfix port {port}", lambda: tail(self.maillog))
