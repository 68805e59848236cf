"""txrelay's service limits through real Postfix and the milter (issue 12, item 7): Postfix's
per-client connection, message and AUTH rates, NUL refused by txrelay's cleanup, the milter's
header and per-session caps, and the fail2ban filter run against this Postfix's own log."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import shutil
import smtplib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fail2ban import running_fail2ban
from tests.harness.fixtures import RelayStack
from tests.harness.processes import Stopper, free_port, run, wait_until
from tests.harness.provision import Provisioned
from tests.harness.services import (
    CaptureSink,
    DovecotService,
    MilterProcess,
    PostfixInstance,
)
from tests.harness.smtp import SUBMISSION_HOST, build_message, tls_context, transact
from txrelay.config import Config, LimitsConfig, render_toml

pytestmark = pytest.mark.e2e
FILTER = Path(__file__).resolve().parents[2] / "deploy" / "fail2ban" / "filter.d" / "txrelay.conf"
LIMITS = LimitsConfig(client_message_rate_limit=5, client_connection_rate_limit=5,
                      client_auth_rate_limit=10, max_headers=30, max_messages_per_session=3)
# Each test speaks from its own loopback address: anvil counts per client address, and the
# tests must not spend each other's allowance.
CONNECTION_CLIENT = "127.0.0.2"
AUTH_CLIENT = "127.0.0.3"
MESSAGE_CLIENT = "127.0.0.4"
FAIL2BAN_CLIENT = "127.0.0.5"
SESSION_CLIENT = "127.0.0.6"
HEADER_CLIENT = "127.0.0.7"
NUL_CLIENT = "127.0.0.8"
BANNED_CLIENT = "127.0.0.9"  # the jail's maxretry failures within its findtime
BELOW_CLIENT = "127.0.0.10"  # one failure fewer
STALE_CLIENT = "127.0.0.11"  # maxretry failures, all older than findtime


@pytest.fixture(scope="module")
def other_port() -> int:
    """A service of the admin's on the same Postfix, not txrelay's."""
    return free_port()


@pytest.fixture(scope="module")
def limited(e2e_config: Config, e2e_dir: Path, dovecot: DovecotService,
            capture_sink: CaptureSink, stopper: Stopper, other_port: int) -> Iterator[RelayStack]:
    """A relay path whose service has low limits, sharing the run's Dovecot, sink, database
    and Redis; the test Postfix's mynetworks (127.0.0.0/8) is not exempt from them here."""
    directory = e2e_dir / "limits"
    (directory / "milter").mkdir(mode=0o755, parents=True)
    port = free_port()
    config = dataclasses.replace(
        e2e_config, limits=LIMITS, smtp=dataclasses.replace(e2e_config.smtp, port=port),
        milter=dataclasses.replace(e2e_config.milter,
                                   socket=f"unix:{directory}/milter/milter.sock",
                                   journal_dir=str(directory / "journal")))
    config_file = directory / "txrelay.toml"
    config_file.write_text(render_toml(config))
    milter = MilterProcess(config, config_file, directory / "milter.log")
    postfix = PostfixInstance(directory / "postfix", sink_port=capture_sink.port,
                              submission_port=port, config_file=config_file)
    try:
        milter.start()
        postfix.prepare()
        service = f"{SUBMISSION_HOST}:{port}/inet"
        postfix.postconf("-P", f"{service}/smtpd_client_event_limit_exceptions=")
        # Another service of the admin's, logging as postfix/submission: the fail2ban filter
        # must not match its failed logins.
        postfix.postconf("-M", f"{SUBMISSION_HOST}:{other_port}/inet="
                         f"{SUBMISSION_HOST}:{other_port} "
                         "inet n - n - - smtpd -o syslog_name=postfix/submission "
                         "-o smtpd_sasl_auth_enable=yes -o smtpd_sasl_type=dovecot "
                         f"-o smtpd_sasl_path={config.dovecot.auth_socket}")
        postfix.start()
        yield RelayStack(config, config_file, config.database.url, dovecot, capture_sink,
                         postfix, milter)
    finally:
        stopper.stop_later(postfix.stop)
        stopper.stop_later(milter.stop)


@pytest.fixture(scope="module")
def shop(limited: RelayStack) -> Provisioned:
    return limited.provision()


def connect(port: int, client: str) -> smtplib.SMTP:
    return smtplib.SMTP(SUBMISSION_HOST, port, local_hostname="shop.client.test", timeout=30,
                        source_address=(client, 0))


def login(port: int, client: str, shop: Provisioned) -> smtplib.SMTP:
    session = connect(port, client)
    session.starttls(context=tls_context())
    session.login(shop.username, shop.password)
    return session


def auth_plain(session: smtplib.SMTP, username: str, password: str) -> tuple[int, bytes]:
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return session.docmd("AUTH", f"PLAIN {token}")


def test_connection_past_the_rate_limit_gets_421_4_7_0(limited: RelayStack) -> None:
    for _ in range(LIMITS.client_connection_rate_limit):
        connect(limited.port, CONNECTION_CLIENT).quit()
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect(limited.port, CONNECTION_CLIENT)
    assert refused.value.smtp_code == 421
    assert b"4.7.0" in refused.value.smtp_error
    assert b"too many connections" in refused.value.smtp_error


def test_auth_past_ten_a_minute_gets_450_4_7_1_even_with_the_right_password(
        limited: RelayStack, shop: Provisioned) -> None:
    replies = []
    for _ in range(4):  # 4 sessions of 3 AUTHs: within the connection rate of 5
        session = connect(limited.port, AUTH_CLIENT)
        session.starttls(context=tls_context())
        session.ehlo()
        replies += [auth_plain(session, shop.username, "wrong-password")[0] for _ in range(3)]
        session.close()
    assert replies[:10] == [535] * 10
    assert replies[10] == 450
    session = connect(limited.port, AUTH_CLIENT)
    session.starttls(context=tls_context())
    session.ehlo()
    code, text = auth_plain(session, shop.username, shop.password)
    session.close()
    assert (code, text.split()[0]) == (450, b"4.7.1"), text
    assert b"too many AUTH commands" in text


def test_messages_past_the_rate_limit_get_450_4_7_1(limited: RelayStack,
                                                     shop: Provisioned) -> None:
    codes = []
    for _ in range(2):  # the per-session cap (3) is the milter's: two sessions
        session = login(limited.port, MESSAGE_CLIENT, shop)
        for _ in range(3):
            code, text = session.mail(shop.address())
            codes.append((code, text.split()[0] if text else b""))
            session.rset()
        session.close()
    assert codes[:5] == [(250, b"2.1.0")] * 5
    assert codes[5] == (450, b"4.7.1")


def test_mail_past_the_per_session_cap_gets_421_4_7_0_and_the_session_ends(
        limited: RelayStack, shop: Provisioned) -> None:
    session = login(limited.port, SESSION_CLIENT, shop)
    sent = []
    for _ in range(LIMITS.max_messages_per_session):
        rcpt = f"cap-{uuid.uuid4().hex[:8]}@rcpt.example.net"
        sent.append(transact(session, shop.address(), [rcpt],
                             build_message(f"Shop <{shop.address()}>", [rcpt])))
    assert all(s.accepted for s in sent), [str(s.first_refusal()) for s in sent]
    code, text = session.mail(shop.address())
    assert (code, text.split()[0]) == (421, b"4.7.0"), text
    assert b"per session" in text
    with pytest.raises(smtplib.SMTPServerDisconnected):
        session.noop()


def test_message_over_the_header_cap_gets_550_5_6_0(limited: RelayStack,
                                                     shop: Provisioned) -> None:
    rcpt = f"headers-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    extra = [(f"X-Order-Line-{n}", str(n)) for n in range(LIMITS.max_headers)]
    session = login(limited.port, HEADER_CLIENT, shop)
    refused = transact(session, shop.address(), [rcpt],
                       build_message(f"Shop <{shop.address()}>", [rcpt], extra_headers=extra))
    session.close()
    assert refused.data is not None
    assert (refused.data.code, refused.data.enhanced) == (550, "5.6.0"), refused.data
    assert f"more than {LIMITS.max_headers} header fields" in refused.data.text
    assert limited.sink.for_recipient(rcpt) == []


def test_message_with_a_nul_in_a_header_is_refused_by_txrelays_cleanup(
        limited: RelayStack, shop: Provisioned) -> None:
    rcpt = f"nul-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    message = build_message(f"Shop <{shop.address()}>", [rcpt],
                            extra_headers=[("X-Order", "42\0hidden from the milter")])
    session = login(limited.port, NUL_CLIENT, shop)
    refused = transact(session, shop.address(), [rcpt], message)
    session.close()
    assert refused.data is not None
    assert (refused.data.code, refused.data.enhanced) == (550, "5.7.1"), refused.data
    assert "character" in refused.data.text
    assert limited.sink.for_recipient(rcpt) == []


def test_fail2ban_filter_matches_exactly_the_failed_logins_of_txrelays_service(
        limited: RelayStack, shop: Provisioned, other_port: int, tmp_path: Path) -> None:
    for port, failures in ((limited.port, 3), (other_port, 2)):
        session = connect(port, FAIL2BAN_CLIENT)
        if port == limited.port:
            session.starttls(context=tls_context())
        session.ehlo()
        codes = [auth_plain(session, shop.username, "wrong-password")[0]
                 for _ in range(failures)]
        session.close()
        assert codes == [535] * failures
    lines = [line for line in limited.postfix.maillog.read_text().splitlines()
             if f"[{FAIL2BAN_CLIENT}]" in line]
    assert sum("authentication failed" in line for line in lines) == 5  # both services
    log = tmp_path / "maillog"
    log.write_text("\n".join(lines) + "\n")
    # Laid out as installed: filter.d/ beside Debian's common.conf, which it includes.
    (tmp_path / "filter.d").mkdir()
    shutil.copy(FILTER, tmp_path / "filter.d" / "txrelay.conf")
    shutil.copy("/etc/fail2ban/filter.d/common.conf", tmp_path / "filter.d")
    done = run(["fail2ban-regex", "--print-all-matched", str(log),
                str(tmp_path / "filter.d" / "txrelay.conf")], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Lines: \d+ lines, 0 ignored, 3 matched", done.stdout), done.stdout
    matched = done.stdout.partition("Matched line(s):")[2].partition("Missed line(s):")[0]
    assert [line.count("postfix/txrelay/smtpd[") for line in matched.splitlines()
            if "authentication failed" in line] == [1, 1, 1], done.stdout


def fail_logins(port: int, client: str, username: str, failures: int) -> list[int]:
    session = connect(port, client)
    session.starttls(context=tls_context())
    session.ehlo()
    codes = [auth_plain(session, username, "wrong-password")[0] for _ in range(failures)]
    session.close()
    return codes


def failed_login_lines(maillog: Path, client: str) -> list[str]:
    return [line for line in maillog.read_text().splitlines()
            if f"[{client}]" in line and "authentication failed" in line]


def moved_back(line: str, minutes: int) -> str:
    """The same log line, its syslog time stamp (`Dec 04 21:55:16`) `minutes` earlier."""
    stamp = dt.datetime.strptime(f"{dt.date.today().year} {line[:15]}", "%Y %b %d %H:%M:%S")
    return (stamp - dt.timedelta(minutes=minutes)).strftime("%b %d %H:%M:%S") + line[15:]


def test_fail2ban_jail_bans_at_maxretry_failures_within_findtime_and_not_below(
        limited: RelayStack, shop: Provisioned, tmp_path: Path) -> None:
    """The shipped jail and filter, loaded by a real fail2ban-server of the test's own (ban
    action replaced by one that records the address), fed this Postfix's own lines of
    failed logins: 5 within 10 minutes ban, 4 do not, 5 older than 10 minutes do not."""
    failures = {BANNED_CLIENT: 5, BELOW_CLIENT: 4, STALE_CLIENT: 5}
    codes: dict[str, list[int]] = {}
    threads = [threading.Thread(target=lambda c=client, n=count: codes.__setitem__(
        c, fail_logins(limited.port, c, shop.username, n))) for client, count in failures.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert codes == {client: [535] * count for client, count in failures.items()}
    maillog = limited.postfix.maillog
    wait_until(lambda: all(len(failed_login_lines(maillog, client)) == count
                           for client, count in failures.items()), 10,
               "Postfix's log lines of the failed logins")

    with running_fail2ban(tmp_path / "fail2ban") as fail2ban:
        assert (fail2ban.get("maxretry"), fail2ban.get("findtime")) == ("5", "600")
        stale = [moved_back(line, 11) for line in failed_login_lines(maillog, STALE_CLIENT)]
        # The others first: once the last address is banned, every line before it was read.
        lines = [*stale, *failed_login_lines(maillog, BELOW_CLIENT),
                 *failed_login_lines(maillog, BANNED_CLIENT)]
        with fail2ban.log.open("a") as log:
            log.write("\n".join(lines) + "\n")
        wait_until(lambda: BANNED_CLIENT in fail2ban.banned(), 30,
                   "fail2ban's ban of the client with 5 failures", fail2ban.server_log)
        assert fail2ban.banned() == [BANNED_CLIENT], fail2ban.server_log()
        assert fail2ban.total_failed() == 9, fail2ban.server_log()  # the stale ones too old
