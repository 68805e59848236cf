"""`txrelay postfix configure` on a real Postfix config directory (postconf does the work)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import TXRELAY, run
from txrelay.config import Config
from txrelay.provisioning.postfix import plan_postfix

pytestmark = pytest.mark.e2e

POSTFIX_CONF = Path(__file__).resolve().parents[2] / "postfix-conf"


@pytest.fixture()
def config_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        "smtpd_tls_chain_files = /etc/ssl/private/relay.pem\n"
        "smtp_generic_maps = hash:/etc/postfix/generic\n"
        "maillog_file = /var/log/postfix-existing.log\n")
    shutil.copy("/etc/postfix/master.cf", directory / "master.cf")
    return directory


def configure(config_file: Path, directory: Path, *extra: str) -> dict[str, Any]:
    done = run([TXRELAY, "--config", str(config_file), "--json", "postfix", "configure",
                "--config-directory", str(directory), "--listen", "127.0.0.1:10999", *extra])
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def postconf(directory: Path, *args: str) -> str:
    return run(["postconf", "-c", str(directory), *args]).stdout


def test_dry_run_lists_changes_and_writes_nothing(config_file: Path,
                                                  config_directory: Path) -> None:
    before = (config_directory / "main.cf").read_text()
    report = configure(config_file, config_directory, "--dry-run")
    assert report["dry_run"] is True
    assert report["backups"] == []
    assert any(c["setting"] == "milter_protocol" for c in report["changes"])
    assert (config_directory / "main.cf").read_text() == before
    assert not postconf(config_directory, "-M", "127.0.0.1:10999/inet").strip()


def test_configure_applies_backs_up_once_and_is_idempotent(config_file: Path, config: Config,
                                                           config_directory: Path) -> None:
    first = configure(config_file, config_directory)
    assert len(first["backups"]) == 2
    assert all(Path(p).exists() for p in first["backups"])
    warnings = " ".join(first["warnings"])
    assert "smtp_generic_maps" in warnings
    values = postconf(config_directory, "-h", "milter_protocol", "enable_long_queue_ids",
                      "disable_mime_output_conversion", "maillog_file").split()
    assert values == ["6", "yes", "yes", "/var/log/postfix-existing.log"]
    overrides = postconf(config_directory, "-P", "127.0.0.1:10999/inet")
    socket_path = config.milter.socket.removeprefix("unix:")
    assert f"127.0.0.1:10999/inet/smtpd_milters = unix:{socket_path}" in overrides
    assert "127.0.0.1:10999/inet/smtpd_tls_security_level = encrypt" in overrides
    assert (f"127.0.0.1:10999/inet/smtpd_sasl_path = {config.dovecot.auth_socket}"
            in overrides)
    entry = postconf(config_directory, "-M", "127.0.0.1:10999/inet").split()
    assert entry[:8] == ["127.0.0.1:10999", "inet", "n", "-", "n", "-", "-", "smtpd"]

    second = configure(config_file, config_directory)
    assert second["changes"] == [] and second["backups"] == []


def test_shipped_fragments_match_what_configure_sets_by_default() -> None:
    plan = plan_postfix(Config())
    main = (POSTFIX_CONF / "main.cf.fragment").read_text().splitlines()
    master = (POSTFIX_CONF / "master.cf.fragment").read_text().splitlines()
    for name, value in (*plan.main, *plan.main_if_unset):
        assert f"{name} = {value}".rstrip() in main
    assert plan.service_entry in master
    for name, value in plan.service_overrides:
        assert f"  -o {name}={value}" in master
