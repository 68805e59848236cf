"""txrelay dropped into a typical running Postfix: `txrelay postfix configure` adds its own
service and changes nothing the server's other users rely on; `unconfigure` takes it out
again byte for byte.

The server (tests/harness/dropin.py) has a submission service with its own SASL for
mailbox users, an OpenDKIM-style milter with default_action=accept, non_smtpd_milters =
$smtpd_milters, an after-queue content_filter (delivering to a sink of its own) and a
50 MB message_size_limit."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import smtplib
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.harness.dropin import MAILBOX_PASSWORD, MAILBOX_USER, ExistingServer, MailboxDovecot
from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, Stopper, free_port, port_open, run, wait_until
from tests.harness.provision import Provisioned, verify_dkim
from tests.harness.services import CaptureSink, DovecotService, MilterProcess
from tests.harness.smtp import build_message, smtp_session, submit, tls_context, transact
from tests.harness.stackconfig import write_stack_config
from txrelay.config import Config, load_config

pytestmark = pytest.mark.e2e

# txrelay's service gets a certificate of its own ([smtp] tls_cert_file, an -o override);
# the server's other services keep main.cf's (the harness's, CN=relay.txrelay.test).
OWN_CERTIFICATE_CN = "relay-own.txrelay.test"


@dataclass
class Snapshot:
    """The server as postconf shows it, and the two files' digests."""

    main: str
    services: str
    overrides: str
    digests: dict[str, str]


@dataclass
class DropIn:
    server: ExistingServer
    relay: RelayStack
    filter_sink: CaptureSink
    before: Snapshot
    configure_report: dict[str, object]
    txrelay_listen: str


def snapshot(server: ExistingServer) -> Snapshot:
    return Snapshot(server.postconf("-n"), server.postconf("-M"), server.postconf("-P"),
                    {name: hashlib.sha256((server.config_directory / name).read_bytes())
                     .hexdigest() for name in ("main.cf", "master.cf")})


def txrelay_postfix(server: ExistingServer, *args: str) -> dict[str, object]:
    done = run([TXRELAY, "--config", str(server.config_file), "--json", "postfix", *args,
                "--config-directory", str(server.config_directory)])
    report: dict[str, object] = json.loads(done.stdout)
    return report


@pytest.fixture(scope="module")
def dropin(config: Config) -> Iterator[DropIn]:
    directory = Path(tempfile.mkdtemp(prefix="txrelay-dropin-"))
    directory.chmod(0o755)
    stopper = Stopper()
    try:
        with contextlib.ExitStack() as cleanup:
            yield _start(config, directory, stopper, cleanup)
    finally:
        stopper.join()
        if not os.environ.get("E2E_KEEP_DIR"):
            shutil.rmtree(directory, ignore_errors=True)


def _start(config: Config, directory: Path, stopper: Stopper,
           cleanup: contextlib.ExitStack) -> DropIn:
    listen_port = free_port()
    tls = directory / "txrelay-tls"
    tls.mkdir()
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={OWN_CERTIFICATE_CN}", "-keyout",
         str(tls / "key.pem"), "-out", str(tls / "cert.pem")])
    (tls / "key.pem").chmod(0o600)
    own_certificate = dataclasses.replace(config.smtp, tls_cert_file=str(tls / "cert.pem"),
                                          tls_key_file=str(tls / "key.pem"))
    config_file = write_stack_config(dataclasses.replace(config, smtp=own_certificate),
                                     directory / "txrelay", submission_port=listen_port)
    stack_config = load_config(config_file, required=True, environ={})
    services = []
    for name in ("sink", "filter-sink"):
        (directory / name).mkdir()
        services.append(CaptureSink(directory / name))
    sink, filter_sink = services
    dovecot = DovecotService(stack_config)
    milter = MilterProcess(stack_config, config_file, directory / "milter.log")
    mailbox = MailboxDovecot(directory / "mailbox-dovecot")
    server = ExistingServer(directory / "postfix", sink_port=sink.port,
                            filter_port=filter_sink.port, submission_port=listen_port,
                            mailbox=mailbox, config_file=config_file)
    for service in (sink, filter_sink, dovecot, milter, mailbox):
        cleanup.callback(stopper.stop_later, service.stop)
        service.start()
    cleanup.callback(stopper.stop_later, server.stop)
    server.prepare()
    before = snapshot(server)
    listen = f"127.0.0.1:{listen_port}"
    # The admin's bounces are not this test's: the inbound route has tests of its own.
    report = txrelay_postfix(server, "configure", "--listen", listen, "--no-inbound")
    server.start()
    relay = RelayStack(stack_config, config_file, stack_config.database.url, dovecot, sink,
                       server, milter)
    return DropIn(server, relay, filter_sink, before, report, listen)


@pytest.fixture(scope="module")
def shop(dropin: DropIn) -> Provisioned:
    return dropin.relay.provision()


def unique_rcpt(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"


def test_configure_leaves_every_existing_setting_and_service_unchanged(dropin: DropIn) -> None:
    after = snapshot(dropin.server)
    assert after.main == dropin.before.main
    assert after.digests["main.cf"] == dropin.before.digests["main.cf"]
    for line in dropin.before.services.splitlines():
        assert line in after.services.splitlines()
    for line in dropin.before.overrides.splitlines():
        assert line in after.overrides.splitlines()
    added = {c["service"] for c in dropin.configure_report["changes"]}  # type: ignore[attr-defined]
    assert added == {f"{dropin.txrelay_listen}/inet", "txrelay-cleanup/unix"}
    new_services = set(after.services.splitlines()) - set(dropin.before.services.splitlines())
    assert sorted(line.split()[0] for line in new_services) == sorted(
        [dropin.txrelay_listen, "txrelay-cleanup"])


def test_check_passes_on_the_existing_server_with_txrelay(dropin: DropIn) -> None:
    done = run([TXRELAY, "--config", str(dropin.server.config_file), "--json", "postfix",
                "check", "--config-directory", str(dropin.server.config_directory)],
               check=False)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report
    assert report["problems"] == []


def test_mailbox_user_still_authenticates_and_relays_through_the_filter(dropin: DropIn) -> None:
    rcpt = unique_rcpt("mailbox")
    raw = build_message("Alice <alice@existing.test>", [rcpt], subject="from a mailbox user")
    result = submit(MAILBOX_USER, MAILBOX_PASSWORD, "alice@existing.test", [rcpt], raw,
                    port=dropin.server.mailbox_port)
    assert result.delivered_to == [rcpt], result
    captured = dropin.filter_sink.wait_for_recipient(rcpt)
    assert b"from a mailbox user" in captured.raw
    assert b"DKIM-Signature" not in captured.raw
    assert not dropin.relay.sink.for_recipient(rcpt)


def test_shop_credentials_do_not_work_on_the_mailbox_users_service(dropin: DropIn,
                                                                   shop: Provisioned) -> None:
    with pytest.raises(smtplib.SMTPAuthenticationError), \
            smtp_session(shop.username, shop.password, port=dropin.server.mailbox_port):
        pass


def test_txrelays_service_relays_signed_accounted_mail_past_the_filter(dropin: DropIn,
                                                                       shop: Provisioned) -> None:
    rcpt = unique_rcpt("shop")
    raw = build_message(shop.address(), [rcpt], subject="Order 2001")
    result = submit(shop.username, shop.password, shop.address(), [rcpt], raw,
                    port=dropin.relay.port)
    assert result.delivered_to == [rcpt], result
    captured = dropin.relay.sink.wait_for_recipient(rcpt)
    assert verify_dkim(captured.raw, dropin.relay.database_url)
    assert not dropin.filter_sink.for_recipient(rcpt)
    assert dropin.relay.usage(shop.account_id).ledger_rows == 1
    assert "postfix/txrelay/smtpd[" in dropin.server.log(400)


def certificate_cn(client: smtplib.SMTP) -> str:
    der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value)


def test_txrelays_service_presents_its_own_certificate_others_keep_main_cfs(
        dropin: DropIn) -> None:
    with smtp_session(None, None, port=dropin.relay.port) as client:
        assert certificate_cn(client) == OWN_CERTIFICATE_CN
    with smtp_session(None, None, port=dropin.server.mailbox_port) as client:
        assert certificate_cn(client) == "relay.txrelay.test"


def test_txrelays_service_refuses_mailbox_users(dropin: DropIn) -> None:
    with pytest.raises(smtplib.SMTPAuthenticationError), \
            smtp_session(MAILBOX_USER, MAILBOX_PASSWORD, port=dropin.relay.port):
        pass


def test_port_25_role_still_relays_for_mynetworks_through_the_filter(dropin: DropIn) -> None:
    rcpt = unique_rcpt("port25")
    raw = build_message("Bob <bob@existing.test>", [rcpt], subject="port 25")
    with smtp_session(None, None, port=dropin.server.port25, starttls=False) as client:
        result = transact(client, "bob@existing.test", [rcpt], raw)
    assert result.delivered_to == [rcpt], result
    assert dropin.filter_sink.wait_for_recipient(rcpt)


def test_configure_on_the_mailbox_users_port_is_refused_and_writes_nothing(
        dropin: DropIn) -> None:
    before = snapshot(dropin.server).digests
    done = run([TXRELAY, "--config", str(dropin.server.config_file), "postfix", "configure",
                "--config-directory", str(dropin.server.config_directory), "--listen",
                f"127.0.0.1:{dropin.server.mailbox_port}"], check=False)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"master.cf service '127.0.0.1:{dropin.server.mailbox_port}/inet'" in done.stderr
    assert "--listen 2587" in done.stderr and "--instance" in done.stderr
    assert snapshot(dropin.server).digests == before


def test_implicit_tls_service_relays_signed_mail_to_a_real_ssl_client(
        dropin: DropIn, shop: Provisioned) -> None:
    implicit_port = free_port()
    report = txrelay_postfix(dropin.server, "configure", "--listen", dropin.txrelay_listen,
                             "--implicit-tls", f"127.0.0.1:{implicit_port}", "--no-inbound")
    assert [c["service"] for c in report["changes"]] == [  # type: ignore[attr-defined]
        f"127.0.0.1:{implicit_port}/inet"]
    dropin.server.reload()
    wait_until(lambda: port_open(implicit_port), 15, "implicit-TLS port",
               lambda: dropin.server.log())
    rcpt = unique_rcpt("smtps")
    raw = build_message(shop.address(), [rcpt], subject="Order 2002 over implicit TLS")
    with smtplib.SMTP_SSL("127.0.0.1", implicit_port, local_hostname="shop.client.test",
                          context=tls_context(), timeout=60) as client:
        assert certificate_cn(client) == OWN_CERTIFICATE_CN
        client.login(shop.username, shop.password)
        refused = client.sendmail(shop.address(), [rcpt], raw)
    assert refused == {}
    captured = dropin.relay.sink.wait_for_recipient(rcpt)
    assert verify_dkim(captured.raw, dropin.relay.database_url)
    assert "postfix/txrelay_tls/smtpd[" in dropin.server.log(400)


def test_unconfigure_restores_main_cf_and_master_cf_byte_for_byte(dropin: DropIn) -> None:
    report = txrelay_postfix(dropin.server, "unconfigure")
    assert f"{dropin.txrelay_listen}/inet" in {
        c["service"] for c in report["changes"]}  # type: ignore[attr-defined]
    assert snapshot(dropin.server).digests == dropin.before.digests
    dropin.server.reload()
    wait_until(lambda: not port_open(dropin.relay.port), 15, "txrelay's port closed")
    assert port_open(dropin.server.mailbox_port)
