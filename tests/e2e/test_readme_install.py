"""The README's "Install next to an existing Postfix", run as written against a running Postfix
that already has a submission service of its own, then a first mail through txrelay's service.

The commands come from README.md itself, so the section cannot go stale. Only what a test
must change is changed, each in SUBSTITUTIONS or ENVIRONMENT below with its reason: the
test's own Postfix (MAIL_CONFIG), configuration file, database name, Redis DB, sockets and
free port; systemd is not PID 1 here, so the daemons start as the installed units'
ExecStart lines say.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import smtplib
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.conftest import ADMIN_DSN, REDIS_BASE, REDIS_DB
from tests.harness.processes import (
    PRISTINE_MASTER_CF,
    TXRELAY,
    VENV_BIN,
    ManagedProcess,
    free_port,
    unix_socket_open,
    wait_until,
)
from tests.harness.provision import verify_dkim
from tests.harness.services import CaptureSink, PostfixInstance
from txrelay.config import Config, load_config
from txrelay.provisioning.dovecot import dovecot_config_path

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Install next to an existing Postfix"
README_PORT = "2587"
README_HOST = "relay.example.net"
RECIPIENT = "you@example.org"
UNITS = ("txrelay-dovecot.service", "txrelay-milter.service", "txrelay-tracker.service",
         "txrelay-webhooks.service")


def readme_blocks() -> list[list[str]]:
    """The section's ```sh blocks, one list of command lines each."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end > 0 else None]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    return [[line for line in block.splitlines() if line.strip()
             and not line.lstrip().startswith("#")] for block in blocks]


@dataclass(frozen=True)
class Substitution:
    """Replace `old` by `new` in the README lines that contain `where`; `why` says why a
    test must. Every substitution must apply at least once, so none outlives the README."""

    where: str
    old: str
    new: str
    why: str


@dataclass
class Server:
    """The "existing" server: its Postfix with a submission service for mailbox users."""

    root: Path
    postfix: PostfixInstance
    sink: CaptureSink
    mailbox_service: str  # master.cf key of the pre-existing submission service

    def service(self, key: str) -> str:
        return self.postfix.postconf("-M", key) + self.postfix.postconf("-P", f"{key}/*")


@pytest.fixture()
def server() -> Iterator[Server]:
    # Outside pytest's temp tree (any pytest run resets it to 0700, and Postfix's and
    # Dovecot's users must reach the sockets) and short (a unix socket path has 108 bytes).
    root = Path(tempfile.mkdtemp(prefix="txr-readme-"))
    root.chmod(0o755)
    (root / "sink").mkdir()
    sink = CaptureSink(root / "sink")
    sink.start()
    mailbox_port = free_port()
    postfix = PostfixInstance(root / "postfix", sink_port=sink.port,
                              submission_port=mailbox_port, config_file=root / "unused.toml")
    _prepare_existing_postfix(postfix, mailbox_port)
    try:
        postfix.start()
        yield Server(root, postfix, sink, f"127.0.0.1:{mailbox_port}/inet")
    finally:
        postfix.stop()
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)


def _prepare_existing_postfix(postfix: PostfixInstance, mailbox_port: int) -> None:
    """A Postfix as an admin runs it before txrelay: main.cf, Debian's master.cf, and a
    submission service whose SASL is the mailbox users' Dovecot (not txrelay's)."""
    for directory in (postfix.config_directory, postfix.queue_directory,
                      postfix.data_directory):
        directory.mkdir(parents=True, exist_ok=True)
    os.chown(postfix.data_directory, *_postfix_ids())
    postfix._make_certificate()
    (postfix.config_directory / "main.cf").write_text(postfix._main_cf())
    (postfix.config_directory / "master.cf").write_text(PRISTINE_MASTER_CF.read_text())
    postfix.postconf("-F", "*/*/chroot = n")
    postfix.postconf("-MX", "smtp/inet")
    key = f"127.0.0.1:{mailbox_port}/inet"
    postfix.postconf("-M", f"{key}=127.0.0.1:{mailbox_port} inet n - n - - smtpd")
    for name, value in (("syslog_name", "postfix/submission"),
                        ("smtpd_tls_security_level", "encrypt"),
                        ("smtpd_sasl_auth_enable", "yes"),
                        ("smtpd_sasl_type", "dovecot"),
                        ("smtpd_sasl_path", "private/auth"),
                        ("smtpd_client_restrictions", "permit_sasl_authenticated,reject")):
        postfix.postconf("-P", f"{key}/{name}={value}")


def _postfix_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postfix")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture()
def database_name() -> Iterator[str]:
    """The role and database init makes (the README's 'txrelay' may exist on this machine)."""
    name = f"txrelay_readme_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_readme_install_section_works_as_written_next_to_an_existing_submission_service(
        server: Server, tmp_path: Path, database_name: str) -> None:
    install_block, first_mail_block = readme_blocks()
    state = server.root / "txrelay"
    state.mkdir()
    config_file = state / "etc" / "txrelay.toml"
    port = str(free_port())
    staged_root = tmp_path / "systemd-root"
    mailbox_service_before = server.service(server.mailbox_service)
    main_cf_before = _main_cf_settings(server.postfix)
    environment = {
        **os.environ,
        # The test's Postfix, not the machine's: postconf and postfix read MAIL_CONFIG.
        "MAIL_CONFIG": str(server.postfix.config_directory),
        "TXRELAY_CONFIG": str(config_file),  # not /etc/txrelay/txrelay.toml
        "TXRELAY_VENV": str(VENV_BIN.parent),  # install.sh installs into this run's venv
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        # The units are staged, not installed into the machine's /etc (systemd is not PID 1).
        "DESTDIR": str(staged_root),
    }
    paths = {
        "dovecot.config_dir": state / "dovecot",
        "dovecot.base_dir": state / "dovecot-run",
        "dovecot.auth_socket": state / "dovecot-run" / "auth-postfix",
        "dovecot.log_path": state / "dovecot.log",
        "dovecot.passdb_file": state / "passdb" / "passwd",
        "milter.socket": f"unix:{state / 'milter' / 'milter.sock'}",
        "milter.journal_dir": state / "journal",
        "tracker.log_path": server.postfix.maillog,
        # No DNS server publishes example.net's DKIM record here, so the README's test mail
        # would stay refused (pending domain); tests/e2e/test_dkim_publication.py covers that.
        "dkim.require_published": "false",
    }
    init_extra = " ".join([f"--database-name {database_name}",
                           f"--redis-url {REDIS_BASE}/{REDIS_DB}",
                           *(f"--set {key}={value}" for key, value in paths.items())])
    substitutions = [
        Substitution("", README_PORT, port, "a port free on this machine"),
        Substitution("scripts/install.sh", "scripts/install.sh", "scripts/install.sh --no-link",
                     "/usr/local/bin/txrelay is the machine's, not this test venv's"),
        Substitution("txrelay init", "txrelay init", f"txrelay init {init_extra}",
                     "this run's database name, Redis DB, sockets and log, not the node's"),
        Substitution("swaks", f"--server={README_HOST}", "--server=127.0.0.1",
                     "no DNS for the README's host name here"),
        Substitution("apt-get install", "apt-get install",
                     "apt-get install -o DPkg::Lock::Timeout=120",
                     "other test runs may hold the dpkg lock for a moment"),
    ]
    (state / "milter").mkdir()
    applied: set[int] = set()
    credentials: dict[str, str] = {}

    def run_line(line: str) -> str:
        for index, sub in enumerate(substitutions):
            if sub.where in line and sub.old in line:
                line = line.replace(sub.old, sub.new)
                applied.add(index)
        for placeholder, value in credentials.items():
            line = line.replace(placeholder, value)
        done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, (f"README line failed ({done.returncode}): {line}\n"
                                      f"{done.stdout}\n{done.stderr}\n"
                                      f"{server.postfix.log(20)}")
        return done.stdout

    daemons: list[ManagedProcess] = []
    try:
        for line in install_block:
            output = run_line(line)
            if "txrelay init" in line:
                assert "SELF-SIGNED certificate" in output
            if "--dry-run" in line:
                assert port in output  # shows the new service ...
                assert server.service(f"{port}/inet") == ""  # ... and writes nothing
                assert _main_cf_settings(server.postfix) == main_cf_before
        config = load_config(config_file, required=True, environ={})
        assert config.database.url.startswith(f"postgresql://{database_name}:")
        _start_as_units_say(staged_root, config_file, config, daemons, state)

        for line in first_mail_block:
            output = run_line(line)
            if "connection create" in line:
                credentials["USER"] = _access(output, "username")
                credentials["PASSWORD"] = _access(output, "password")
        assert applied == set(range(len(substitutions))), "a substitution no longer applies"

        capture = server.sink.wait_for_recipient(RECIPIENT, timeout=30)
        assert verify_dkim(capture.raw, config.database.url)
        assert b"\nList-Help: <mailto:postmaster@example.net>" in capture.raw.replace(
            b"\r\n", b"\n")
        # The tracker, started as its unit says, reads the test Postfix's log: delivered.
        wait_until(lambda: _delivered(config_file) == 1, 30, "the tracker's delivered count",
                   lambda: daemons[-1].log(20))
        # Only txrelay's own service changed: the mailbox users' one and every main.cf
        # parameter the server had are as they were.
        assert server.service(server.mailbox_service) == mailbox_service_before
        main_cf_after = _main_cf_settings(server.postfix)
        assert {key: main_cf_after.get(key) for key in main_cf_before} == main_cf_before
        txrelay_service = server.service(f"{port}/inet")
        assert f"smtpd_milters=unix:{state / 'milter' / 'milter.sock'}" in \
            txrelay_service.replace(" ", "")
        # The certificate init made is the one txrelay's service presents.
        made = x509.load_pem_x509_certificate(Path(config.smtp.tls_cert_file).read_bytes())
        assert _presented_certificate(int(port)) == made
        assert made.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == README_HOST
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


def _main_cf_settings(postfix: PostfixInstance) -> dict[str, str]:
    """main.cf's explicit settings (postconf -n), name to value."""
    settings: dict[str, str] = {}
    for line in postfix.postconf("-n").splitlines():
        name, _, value = line.partition("=")
        if name.strip():
            settings[name.strip()] = value.strip()
    return settings


def _presented_certificate(port: int) -> x509.Certificate:
    """The certificate the service on `port` shows after STARTTLS."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=context)
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _delivered(config_file: Path) -> int:
    done = subprocess.run([TXRELAY, "--config", str(config_file), "--json", "stats",
                           "--account", "Test"], capture_output=True, text=True, check=True)
    return sum(int(row["delivered"]) for row in json.loads(done.stdout))


def _access(output: str, field: str) -> str:
    match = re.search(rf"^\s*{field}:\s+(\S+)\s*$", output, re.M)
    assert match, f"no {field} in the output of connection create:\n{output}"
    return match.group(1)


def _unit_exec(unit: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart and Environment= of a unit file."""
    text = unit.read_text()
    command = re.search(r"^ExecStart=(.+)$", text, re.M)
    assert command, f"{unit} has no ExecStart"
    environment = dict(item.split("=", 1) for item in
                       re.findall(r"^Environment=(\S+)$", text, re.M))
    return command.group(1).split(), environment


def _start_as_units_say(staged_root: Path, config_file: Path, config: Config,
                        daemons: list[ManagedProcess], state: Path) -> None:
    """What systemctl start would run: each unit's ExecStart and Environment, with the
    node's paths replaced by this test's (the program and the two configuration files)."""
    node_paths: dict[str, str] = {
        "/usr/local/bin/txrelay": TXRELAY,
        "/etc/txrelay/txrelay.toml": str(config_file),
        "/etc/txrelay/dovecot/dovecot.conf": str(dovecot_config_path(config)),
    }

    def local(value: str) -> str:
        for node_path, test_path in node_paths.items():
            value = value.replace(node_path, test_path)
        return value

    units = staged_root / "etc" / "systemd" / "system"
    # The web dashboard's unit is installed too, not enabled (docs/dashboard.md).
    assert sorted(p.name for p in units.iterdir()) == sorted((*UNITS, "txrelay-web.service"))
    checks: dict[str, Callable[[], bool]] = {
        "txrelay-dovecot.service": lambda: unix_socket_open(config.dovecot.auth_socket),
        "txrelay-milter.service": lambda: unix_socket_open(
            config.milter.socket.removeprefix("unix:")),
        "txrelay-tracker.service": lambda: True,
        "txrelay-webhooks.service": lambda: True,
    }
    for unit in UNITS:
        argv, unit_env = _unit_exec(units / unit)
        process = ManagedProcess([local(arg) for arg in argv], state / f"{unit}.log",
                                 env={**os.environ, **{k: local(v) for k, v in
                                                       unit_env.items()}})
        daemons.append(process)
        process.start()
        ready = checks[unit]
        wait_until(lambda p=process, r=ready: r() and p.running,  # type: ignore[misc]
                   20, unit, process.log)
