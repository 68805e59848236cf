"""Mail that comes back, through real Postfix: `txrelay postfix configure` with a bounce domain
makes the admin's port-25 service accept mail for it and pipe it to `txrelay inbound deliver`.
A DSN to a delivered message's return path bounces and suppresses the recipient; a complaint
report to the CFBL address records a complaint; forged tokens and another tenant's message
change nothing. main.cf's lists get txrelay's table appended, and unconfigure restores main.cf
byte for byte."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import site
import smtplib
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.processes import free_port, run, wait_until
from tests.harness.reports import arf, dsn, original_message
from tests.harness.services import PostfixInstance
from tests.store.tracking_fixtures import add_message, make_sender
from txrelay.bounce_secret import read_bounce_secret, write_bounce_secret
from txrelay.config import load_config, render_toml
from txrelay.policy.return_path import feedback_id, return_path

pytestmark = pytest.mark.e2e

BOUNCE_DOMAIN = "bounces.inbound.test"
TABLE = "texthash:${config_directory}/txrelay-inbound-domains"
ADMIN_TRANSPORT = "texthash:${config_directory}/admin-transport"
SYSTEM_PYTHON = Path("/usr/bin/python3")
# The user the test's pipe runs as (production: the txrelay user; Postfix's pipe never runs
# a command as root).
PIPE_USER = "nobody"


def system_python_txrelay(directory: Path) -> Path:
    """txrelay for a user other than root: the tests' venv is built on a Python under /root,
    which no other user may enter, so this command runs the venv's installed packages with
    the machine's python3 (same minor version). configure is run through it, so the pipe
    service it writes names it — the path an admin's installation takes."""
    packages = [p for p in site.getsitepackages() if Path(p, "txrelay").is_dir()]
    if not SYSTEM_PYTHON.exists() or not packages:
        pytest.skip("no /usr/bin/python3 or no installed txrelay package")
    version = run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"]).stdout
    if version.strip() != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {version.strip()}, the venv {sys.version_info[:2]}")
    command = directory / "bin" / "txrelay"
    command.parent.mkdir(mode=0o755)
    command.write_text(
        f"#!{SYSTEM_PYTHON}\n"
        "import sys\n"
        f"sys.path[:0] = {packages!r}\n"
        "if sys.version_info < (3, 11, 3):  # redis wants async_timeout before 3.11.3\n"
        "    import asyncio, types\n"
        "    sys.modules['async_timeout'] = types.SimpleNamespace(timeout=asyncio.timeout)\n"
        "from txrelay.cli.main import main\n"
        "main()\n")
    command.chmod(0o755)
    return command


class BounceServer(PostfixInstance):
    """The admin's Postfix with a port-25 service (no relaying for loopback: mynetworks is
    empty, so only relay_domains lets mail in), before txrelay is configured."""

    def __init__(self, directory: Path, *, config_file: Path, txrelay: str) -> None:
        super().__init__(directory, sink_port=free_port(), submission_port=free_port(),
                         config_file=config_file, txrelay=txrelay)
        self.port25 = free_port()

    def prepare(self) -> None:
        self._lay_out(self._main_cf().replace("mynetworks = 127.0.0.0/8", "mynetworks ="))
        (self.config_directory / "admin-transport").write_text(
            "admin-relayed.test smtp:[127.0.0.1]:1\n")
        with (self.config_directory / "main.cf").open("a") as main_cf:
            main_cf.write(f"transport_maps = {ADMIN_TRANSPORT}\n"
                          "relay_domains = admin-relayed.test\n")
        self.postconf("-M", f"127.0.0.1:{self.port25}/inet=127.0.0.1:{self.port25} inet n - n "
                      "- - smtpd")

    def txrelay_postfix(self, *args: str, check: bool = True) -> Any:
        return run([self.txrelay, "--config", str(self.config_file), "--json", "postfix",
                    *args, "--config-directory", str(self.config_directory)], check=check)

    def configure(self, *extra: str) -> dict[str, Any]:
        done = self.txrelay_postfix("configure", "--listen",
                                    f"127.0.0.1:{self.submission_port}", "--inbound-user",
                                    PIPE_USER, *extra)
        report: dict[str, Any] = json.loads(done.stdout)
        return report


@dataclass
class Inbound:
    server: BounceServer
    secret: bytes
    before: dict[str, bytes]
    report: dict[str, Any]


def file_bytes(server: BounceServer) -> dict[str, bytes]:
    return {name: (server.config_directory / name).read_bytes()
            for name in ("main.cf", "master.cf")}


@pytest.fixture(scope="module")
def inbound(config_file: Path) -> Iterator[Inbound]:
    directory = Path(tempfile.mkdtemp(prefix="txrelay-inbound-"))
    directory.chmod(0o755)
    server: BounceServer | None = None
    try:
        secret_file = directory / "bounce.key"
        write_bounce_secret(secret_file)
        secret_file.chmod(0o644)  # the pipe's user reads it (production: group txrelay)
        own_config = directory / "txrelay.toml"
        base = load_config(config_file, required=True, environ={})
        bounce = dataclasses.replace(base.bounce, domain=BOUNCE_DOMAIN,
                                     secret_file=str(secret_file))
        own_config.write_text(render_toml(dataclasses.replace(base, bounce=bounce)))
        own_config.chmod(0o644)
        server = BounceServer(directory / "postfix", config_file=own_config,
                              txrelay=str(system_python_txrelay(directory)))
        server.prepare()
        before = file_bytes(server)
        report = server.configure()
        server.start()
        yield Inbound(server, read_bounce_secret(secret_file), before, report)
    finally:
        if server is not None:
            server.stop()
        if not os.environ.get("E2E_KEEP_DIR"):
            shutil.rmtree(directory, ignore_errors=True)


def send(inbound: Inbound, recipient: str, raw: bytes, sender: str = "") -> None:
    try:
        with smtplib.SMTP("127.0.0.1", inbound.server.port25, timeout=30) as client:
            client.sendmail(sender, [recipient], raw)
    except OSError as error:
        raise AssertionError(f"{error}\n{inbound.server.postconf('-M')}\n"
                             f"{inbound.server.log(30)}") from error


def ledger(db: psycopg.Connection[Any], message_row: int) -> dict[str, dict[str, Any]]:
    rows = db.execute("SELECT * FROM ledger WHERE message_id = %s", (message_row,)).fetchall()
    return {r["recipient"]: r for r in rows}  # type: ignore[call-overload,index]


def txn(db: psycopg.Connection[Any], message_row: int) -> uuid.UUID:
    row = db.execute("SELECT txn_id FROM messages WHERE id = %s", (message_row,)).fetchone()
    assert row is not None
    return row["txn_id"]  # type: ignore[call-overload,no-any-return]


def suppressed(db: psycopg.Connection[Any], account_id: int) -> dict[str, str]:
    rows = db.execute("SELECT address, reason FROM suppressions WHERE account_id = %s",
                      (account_id,)).fetchall()
    return {r["address"]: r["reason"] for r in rows}  # type: ignore[call-overload,index]


def inbound_rows(db: psycopg.Connection[Any], recipient: str) -> list[dict[str, Any]]:
    return db.execute("SELECT * FROM inbound_mail WHERE envelope_recipient = %s ORDER BY id",
                      (recipient,)).fetchall()  # type: ignore[return-value]


def wait_for_row(inbound: Inbound, db: psycopg.Connection[Any], recipient: str,
                 count: int = 1) -> list[dict[str, Any]]:
    wait_until(lambda: len(inbound_rows(db, recipient)) >= count, 60,
               f"inbound_mail row for {recipient}", lambda: inbound.server.log(30))
    return inbound_rows(db, recipient)


def test_configure_appends_its_table_and_adds_the_pipe_service(inbound: Inbound) -> None:
    server = inbound.server
    main = server.postconf("-n")
    assert f"relay_domains = admin-relayed.test, {TABLE}" in main.splitlines()
    assert (f"transport_maps = {ADMIN_TRANSPORT}, {TABLE}"
            in main.splitlines())
    entry = server.postconf("-M", "txrelay-inbound/unix")
    assert "pipe flags=Rq user=nobody argv=" in entry
    assert "inbound deliver --sender ${sender} -- ${recipient}" in entry
    table = (server.config_directory / "txrelay-inbound-domains").read_text()
    assert f"{BOUNCE_DOMAIN}\ttxrelay-inbound:" in table.splitlines()
    changes = {(c["file"], c["service"]) for c in inbound.report["changes"]}
    assert {("main.cf", "relay_domains"), ("main.cf", "transport_maps"),
            ("master.cf", "txrelay-inbound/unix")} <= changes
    # The admin's other main.cf lines are untouched.
    before = inbound.before["main.cf"].decode().splitlines()
    after = (server.config_directory / "main.cf").read_text().splitlines()
    assert [line for line in before if not line.startswith(("relay_domains", "transport_maps"))
            ] == [line for line in after
                  if not line.startswith(("relay_domains", "transport_maps"))]
    again = server.configure()
    assert again["changes"] == [] and again["diff"] == ""


def test_a_dsn_to_a_delivered_messages_return_path_bounces_and_suppresses(
        inbound: Inbound, db: psycopg.Connection[Any], unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["gone@example.net", "fine@example.net"])
    db.execute("UPDATE ledger SET state = 'delivered' WHERE message_id = %s", (message,))
    address = return_path(inbound.secret, txn(db, message), BOUNCE_DOMAIN)
    send(inbound, address, dsn([("gone@example.net", "failed", "5.1.1",
                                 "550 5.1.1 <gone@example.net>: User unknown")],
                               return_path=address))
    (row,) = wait_for_row(inbound, db, address)
    assert (row["kind"], row["outcome"], row["recipients"]) == ("dsn", "recorded", 1)
    rows = ledger(db, message)
    assert (rows["gone@example.net"]["state"], rows["gone@example.net"]["bounce_source"]) == (
        "bounced", "dsn")
    assert rows["fine@example.net"]["state"] == "delivered"
    assert suppressed(db, sender.account_id) == {"gone@example.net": "hard_bounce"}
    # The same DSN again (a retry, or Postfix's own copy): recorded once.
    send(inbound, address, dsn([("gone@example.net", "failed", "5.1.1", "550 5.1.1")]))
    second = wait_for_row(inbound, db, address, 2)[1]
    assert (second["outcome"], second["recipients"]) == ("duplicate", 0)
    assert len(suppressed(db, sender.account_id)) == 1


def test_an_arf_report_to_the_cfbl_address_records_a_complaint(
        inbound: Inbound, db: psycopg.Connection[Any], unique: str) -> None:
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", [f"reader-{unique}@example.net"])
    fid = feedback_id(inbound.secret, sender.account_id, sender.connection_id, txn(db, message))
    report = arf(original_message(f"reader-{unique}@example.net", feedback_id=fid),
                 rcpt_to=f"reader-{unique}@example.net")
    send(inbound, f"fbl@{BOUNCE_DOMAIN}", report, sender="feedback@isp.example")
    wait_until(lambda: ledger(db, message)[f"reader-{unique}@example.net"]["complained_at"]
               is not None, 60, "complaint recorded", lambda: inbound.server.log(30))
    assert ledger(db, message)[f"reader-{unique}@example.net"]["complaint_type"] == "abuse"
    assert suppressed(db, sender.account_id) == {f"reader-{unique}@example.net": "complaint"}


def test_forged_tokens_and_another_tenants_message_are_dropped_and_counted(
        inbound: Inbound, db: psycopg.Connection[Any], unique: str) -> None:
    sender = make_sender(db, unique)
    other = make_sender(db, unique + "o")
    mine = add_message(db, sender, f"Q{unique}", ["a@example.net"])
    theirs = add_message(db, other, f"R{unique}", ["victim@example.net"])
    forged = return_path(bytes(32), txn(db, theirs), BOUNCE_DOMAIN)
    send(inbound, forged, dsn([("victim@example.net", "failed", "5.1.1", "x")]))
    # A valid return path of our message, reporting the other tenant's recipient.
    ours = return_path(inbound.secret, txn(db, mine), BOUNCE_DOMAIN)
    send(inbound, ours, dsn([("victim@example.net", "failed", "5.1.1", "x")]))
    # A complaint whose feedback id names our account for their message.
    fid = feedback_id(inbound.secret, sender.account_id, sender.connection_id,
                      txn(db, theirs))
    send(inbound, f"fbl@{BOUNCE_DOMAIN}",
         arf(original_message("victim@example.net", feedback_id=fid)))
    assert wait_for_row(inbound, db, forged)[0]["reason"] == "forged_token"
    assert wait_for_row(inbound, db, ours)[0]["reason"] == "unknown_recipient"
    wait_until(lambda: any(r["reason"] == "wrong_account" for r in
                           inbound_rows(db, f"fbl@{BOUNCE_DOMAIN}")), 60, "wrong_account row")
    assert ledger(db, theirs)["victim@example.net"]["state"] == "accepted"
    assert ledger(db, theirs)["victim@example.net"]["complained_at"] is None
    assert suppressed(db, sender.account_id) == {} == suppressed(db, other.account_id)
    stats = json.loads(run([inbound.server.txrelay, "--config", str(inbound.server.config_file),
                            "inbound", "stats", "--json"]).stdout)
    reasons = {(c["kind"], c["reason"]) for c in stats["counts"] if c["outcome"] == "dropped"}
    assert {("dsn", "forged_token"), ("dsn", "unknown_recipient"),
            ("arf", "wrong_account")} <= reasons


def test_mail_for_other_domains_is_not_relayed(inbound: Inbound) -> None:
    with smtplib.SMTP("127.0.0.1", inbound.server.port25, timeout=30) as client:
        client.mail("")
        code, text = client.rcpt("someone@elsewhere.example")
    assert code in (454, 554) and b"Relay access denied" in text


def test_deliver_exits_75_when_postgresql_is_away(inbound: Inbound, tmp_path: Path) -> None:
    away = f"postgresql://txrelay@127.0.0.1:{free_port()}/txrelay"
    done = run(["bash", "-c", f"{inbound.server.txrelay} --config {inbound.server.config_file} "
                f"inbound deliver -- fbl@{BOUNCE_DOMAIN} < /dev/null"], check=False,
               env={**os.environ, "TXRELAY_DATABASE_URL": away,
                    "TXRELAY_DATABASE_MILTER_URL": away})
    assert done.returncode == 75, done.stderr
    assert "event=inbound_tempfail" in done.stderr


def test_unconfigure_restores_main_cf_byte_for_byte(inbound: Inbound, tmp_path: Path) -> None:
    """On a copy of the server's files (the module's server keeps running)."""
    server = inbound.server
    copy = tmp_path / "etc"
    copy.mkdir()
    for name in ("main.cf", "master.cf"):
        (copy / name).write_bytes(inbound.before[name])
    with (copy / "main.cf").open("a") as main_cf:
        main_cf.write(f"queue_directory = {tmp_path / 'queue'}\n"
                      f"data_directory = {tmp_path / 'data'}\n")
    (tmp_path / "queue").mkdir()
    digests = {n: hashlib.sha256((copy / n).read_bytes()).hexdigest()
               for n in ("main.cf", "master.cf")}
    base = [server.txrelay, "--config", str(server.config_file), "postfix"]
    target = ["--config-directory", str(copy)]
    dry = run([*base, "configure", "--dry-run", "--listen", f"127.0.0.1:{free_port()}",
               "--inbound-user", PIPE_USER, *target]).stdout
    assert f"+relay_domains = admin-relayed.test, {TABLE}" in dry
    assert f"+{BOUNCE_DOMAIN}\ttxrelay-inbound:" in dry
    assert not (copy / "txrelay-inbound-domains").exists()
    run([*base, "configure", "--listen", f"127.0.0.1:{free_port()}", "--inbound-user",
         PIPE_USER, *target])
    undo = run([*base, "unconfigure", "--dry-run", *target]).stdout
    assert f"-transport_maps = {ADMIN_TRANSPORT}, {TABLE}" in undo
    run([*base, "unconfigure", *target])
    assert {n: hashlib.sha256((copy / n).read_bytes()).hexdigest()
            for n in ("main.cf", "master.cf")} == digests
    assert not (copy / "txrelay-inbound-domains").exists()
    assert not (copy / "txrelay-postfix.json").exists()


def test_configure_without_a_bounce_domain_takes_the_inbound_path_out(
        inbound: Inbound, tmp_path: Path) -> None:
    """Routing switched off (`--no-inbound`; so does a configuration without a bounce domain
    whose sending domains have no return path of their own): configure again removes the
    pipe service, the table and txrelay's entries in the two lists (on a copy of the
    server's files)."""
    server = inbound.server
    copy = tmp_path / "etc"
    copy.mkdir()
    (tmp_path / "queue").mkdir()
    for name in ("main.cf", "master.cf"):
        (copy / name).write_bytes(inbound.before[name])
    with (copy / "main.cf").open("a") as main_cf:
        main_cf.write(f"queue_directory = {tmp_path / 'queue'}\n"
                      f"data_directory = {tmp_path / 'data'}\n")
    main_before = (copy / "main.cf").read_bytes()
    command = [server.txrelay, "--config", str(server.config_file), "--json", "postfix",
               "configure", "--listen", f"127.0.0.1:{free_port()}", "--inbound-user", PIPE_USER,
               "--config-directory", str(copy)]
    run(command)
    assert (copy / "txrelay-inbound-domains").exists()
    off = json.loads(run([*command, "--no-inbound"]).stdout)
    assert {(c["service"], c["change"]) for c in off["changes"]} >= {
        ("txrelay-inbound/unix", "removed"), ("txrelay-inbound-domains", "removed")}
    assert (copy / "main.cf").read_bytes() == main_before
    assert not (copy / "txrelay-inbound-domains").exists()
    assert "txrelay-inbound" not in run(["postconf", "-c", str(copy), "-M"]).stdout
    state = json.loads((copy / "txrelay-postfix.json").read_text())
    assert "main_cf" not in state and "txrelay-inbound/unix" not in state["services"]
