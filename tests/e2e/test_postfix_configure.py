"""`txrelay postfix configure` / `unconfigure` on real Postfix config directories (postconf
and `postfix check` do the work): txrelay's own services only, ports in use refused,
everything undone byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import PRISTINE_MASTER_CF, TXRELAY, free_port, run
from txrelay.config import Config
from txrelay.provisioning.postfix import plan_postfix

pytestmark = pytest.mark.e2e

POSTFIX_CONF = Path(__file__).resolve().parents[2] / "postfix-conf"
LISTEN = "127.0.0.1:10999"
SERVICE = f"{LISTEN}/inet"


@pytest.fixture()
def config_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "postfix"
    directory.mkdir()
    (tmp_path / "queue").mkdir()
    # Its own queue and data directories: `postfix check` creates what is missing there.
    (directory / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        f"queue_directory = {tmp_path / 'queue'}\n"
        f"data_directory = {tmp_path / 'data'}\n"
        "smtpd_tls_chain_files = /etc/ssl/private/relay.pem\n"
        "smtp_generic_maps = hash:/etc/postfix/generic\n"
        "maillog_file = /var/log/postfix-existing.log\n")
    shutil.copy(PRISTINE_MASTER_CF, directory / "master.cf")
    run(["postconf", "-c", str(directory), "-M",
         "submission/inet=submission inet n - n - - smtpd -o syslog_name=postfix/submission "
         "-o smtpd_sasl_auth_enable=yes -o smtpd_sasl_path=private/auth"])
    return directory


def txrelay(config_file: Path, directory: Path, *args: str) -> Any:
    # The run's database may hold domains with a return path of their own, which configure
    # would route to txrelay's pipe: these tests are about txrelay's submission service.
    routing = ["--no-inbound"] if "configure" in args or "show" in args else []
    return run([TXRELAY, "--config", str(config_file), *args, *routing, "--config-directory",
                str(directory)], check=False)


def configure(config_file: Path, directory: Path, *extra: str) -> dict[str, Any]:
    done = txrelay(config_file, directory, "--json", "postfix", "configure", *extra)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def postconf(directory: Path, *args: str) -> str:
    return run(["postconf", "-c", str(directory), *args]).stdout


def digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in ("main.cf", "master.cf")}


def test_dry_run_prints_a_unified_diff_and_writes_nothing(config_file: Path,
                                                          config_directory: Path) -> None:
    before = digests(config_directory)
    done = txrelay(config_file, config_directory, "postfix", "configure", "--dry-run",
                   "--listen", LISTEN)
    assert done.returncode == 0, done.stderr
    assert f"--- {config_directory}/master.cf" in done.stdout
    assert f"+{LISTEN} inet n" in done.stdout
    assert "+    -o smtpd_milters=" in done.stdout
    assert f"{config_directory}/main.cf" not in done.stdout
    assert digests(config_directory) == before
    assert not (config_directory / "txrelay-postfix.json").exists()


def test_configure_adds_only_its_service_and_is_idempotent(config_file: Path, config: Config,
                                                           config_directory: Path) -> None:
    main_before = (config_directory / "main.cf").read_bytes()
    services_before = postconf(config_directory, "-M")
    first = configure(config_file, config_directory, "--listen", LISTEN)
    assert (config_directory / "main.cf").read_bytes() == main_before
    assert [c["service"] for c in first["changes"]] == ["txrelay-cleanup/unix", SERVICE]
    assert len(first["backups"]) == 1 and Path(first["backups"][0]).exists()
    assert "smtp_generic_maps" in [w["setting"] for w in first["warnings"]]
    services_after = postconf(config_directory, "-M")
    for line in services_before.splitlines():
        assert line in services_after
    overrides = postconf(config_directory, "-P", SERVICE)
    socket_path = config.milter.socket.removeprefix("unix:")
    for expected in (f"smtpd_milters = unix:{socket_path}", "smtpd_tls_security_level = encrypt",
                     f"smtpd_sasl_path = {config.dovecot.auth_socket}", "content_filter =",
                     "milter_default_action = tempfail", "syslog_name = postfix/txrelay",
                     "cleanup_service_name = txrelay-cleanup"):
        assert f"{SERVICE}/{expected}" in overrides.splitlines()
    entry = postconf(config_directory, "-M", SERVICE).split()
    assert entry[:8] == ["127.0.0.1:10999", "inet", "n", "-", "n", "-", "-", "smtpd"]

    second = configure(config_file, config_directory, "--listen", LISTEN)
    assert second["changes"] == [] and second["backups"] == [] and second["diff"] == ""


def test_unconfigure_restores_both_files_byte_for_byte(config_file: Path,
                                                       config_directory: Path) -> None:
    before = digests(config_directory)
    configure(config_file, config_directory, "--listen", LISTEN, "--implicit-tls",
              "127.0.0.1:10465")
    assert digests(config_directory) != before
    dry = txrelay(config_file, config_directory, "postfix", "unconfigure", "--dry-run")
    assert dry.returncode == 0 and f"-{LISTEN} inet n" in dry.stdout
    done = txrelay(config_file, config_directory, "--json", "postfix", "unconfigure")
    assert done.returncode == 0, done.stderr
    assert digests(config_directory) == before
    again = txrelay(config_file, config_directory, "postfix", "unconfigure")
    assert again.returncode != 0
    assert again.stderr.count("\n") == 1 and "nothing to undo" in again.stderr


@pytest.mark.parametrize("listen", ["submission", "587", "127.0.0.1:587", "127.0.0.1:submission"])
def test_port_of_an_existing_service_is_refused_and_nothing_written(
        config_file: Path, config_directory: Path, listen: str) -> None:
    before = digests(config_directory)
    done = txrelay(config_file, config_directory, "postfix", "configure", "--listen", listen)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "master.cf service 'submission/inet'" in done.stderr
    for way_out in ("--listen 2587", "--listen 192.0.2.10:587", "--instance"):
        assert way_out in done.stderr
    assert digests(config_directory) == before
    assert not (config_directory / "txrelay-postfix.json").exists()


@pytest.fixture()
def bound_port() -> Iterator[int]:
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        yield port


@pytest.mark.parametrize("option", ["--listen", "--implicit-tls"])
def test_port_bound_by_another_process_is_refused_and_nothing_written(
        config_file: Path, config_directory: Path, bound_port: int, option: str) -> None:
    before = digests(config_directory)
    done = txrelay(config_file, config_directory, "postfix", "configure", option,
                   str(bound_port))
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "in use by another process" in done.stderr and f"{option} " in done.stderr
    assert digests(config_directory) == before


@pytest.mark.parametrize("listen", ["0", "70000", "mail.example.com:587", "127.0.0.1:",
                                    "::1:587", "no-such-service", "300.1.1.1:25"])
def test_bad_listen_address_is_one_line_and_exit_nonzero(config_file: Path,
                                                         config_directory: Path,
                                                         listen: str) -> None:
    before = digests(config_directory)
    done = txrelay(config_file, config_directory, "postfix", "configure", "--listen", listen)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "is not a listen address" in done.stderr
    assert "Traceback" not in done.stderr
    assert digests(config_directory) == before


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("TXRELAY_SMTP_TLS_CERT_FILE", "/nonexistent/cert.pem", "No such file"),
    ("TXRELAY_SMTP_TLS_CERT_FILE", "/etc/hostname", "is not a PEM file"),
    ("TXRELAY_SMTP_TLS_KEY_FILE", "/etc/ssl/private/key.pem", "tls_cert_file is empty"),
])
def test_missing_or_unreadable_certificate_is_one_line_and_nothing_written(
        config_file: Path, config_directory: Path, variable: str, value: str,
        says: str) -> None:
    before = digests(config_directory)
    done = run([TXRELAY, "--config", str(config_file), "postfix", "configure",
                "--config-directory", str(config_directory), "--listen", LISTEN],
               check=False, env={**os.environ, variable: value})
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert digests(config_directory) == before


def test_own_certificate_is_an_override_on_txrelays_service_only(
        config_file: Path, config_directory: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=own.txrelay.test", "-keyout", str(key), "-out",
         str(cert)])
    main_before = (config_directory / "main.cf").read_bytes()
    done = run([TXRELAY, "--config", str(config_file), "postfix", "configure",
                "--config-directory", str(config_directory), "--listen", LISTEN, "--no-inbound"],
               env={**os.environ, "TXRELAY_SMTP_TLS_CERT_FILE": str(cert),
                    "TXRELAY_SMTP_TLS_KEY_FILE": str(key)})
    assert done.returncode == 0
    assert f"{SERVICE}/smtpd_tls_chain_files = {key},{cert}" in postconf(
        config_directory, "-P").splitlines()
    assert (config_directory / "main.cf").read_bytes() == main_before


def test_configuration_postfix_check_rejects_is_restored(config_file: Path,
                                                        config_directory: Path) -> None:
    with (config_directory / "main.cf").open("a") as main_cf:
        main_cf.write("daemon_directory = /nonexistent/postfix\n")
    before = digests(config_directory)
    done = txrelay(config_file, config_directory, "postfix", "configure", "--listen", LISTEN)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "check rejected" in done.stderr and "restored" in done.stderr
    assert "/nonexistent/postfix" in done.stderr
    assert digests(config_directory) == before
    assert not (config_directory / "txrelay-postfix.json").exists()


def test_service_logs_inside_the_instances_own_syslog_name(config_file: Path,
                                                          config_directory: Path) -> None:
    with (config_directory / "main.cf").open("a") as main_cf:
        main_cf.write("multi_instance_name = postfix-out\n")
    configure(config_file, config_directory, "--listen", LISTEN)
    assert f"{SERVICE}/syslog_name = postfix-out/txrelay" in postconf(
        config_directory, "-P").splitlines()


def test_shipped_fragment_matches_what_configure_adds_by_default() -> None:
    plan = plan_postfix(Config())
    master = (POSTFIX_CONF / "master.cf.fragment").read_text().splitlines()
    assert not (POSTFIX_CONF / "main.cf.fragment").exists()
    (service,) = plan.services
    assert " ".join(service.entry().split()[:8]) in master
    for name, value in service.overrides:
        assert (f"  -o {name}={value}" in master
                or f"  -o {{ {name} = {value} }}" in master), name
    cleanup = master[master.index("txrelay-cleanup unix n - n - 0 cleanup"):]
    for name, value in plan.cleanup_overrides:
        assert f"  -o {name}={value}" in cleanup, name
