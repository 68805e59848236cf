"""The systemd units, as scripts/install-systemd.sh installs them, proven by systemd's own
tools (systemd is not PID 1 on the test machines, so the units are verified, not started)."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.processes import TXRELAY

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("txrelay-milter.service", "txrelay-tracker.service", "txrelay-dovecot.service",
         "txrelay-webhooks.service", "txrelay-web.service")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units staged by the documented installer into an empty root."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/install-test-deps.sh installs systemd",
                    pytrace=False)
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["bash", str(ROOT / "scripts" / "install-systemd.sh"), "--no-start"],
                   env={**os.environ, "DESTDIR": str(root)}, check=True, capture_output=True)
    return root / "etc" / "systemd" / "system"


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True,
                          text=True, check=False)


def test_installer_stages_every_unit_and_the_tmpfiles_entry(installed: Path) -> None:
    assert sorted(p.name for p in installed.iterdir()) == sorted(UNITS)
    tmpfiles = (installed.parents[1] / "tmpfiles.d" / "txrelay.conf").read_text()
    assert re.search(r"^d /run/txrelay\s+2750 txrelay postfix", tmpfiles, re.M)
    assert re.search(r"^d /var/lib/txrelay-auth\s+2750 txrelay dovecot", tmpfiles, re.M)


def with_this_txrelay(installed: Path, directory: Path) -> list[Path]:
    """The staged units, their /usr/local/bin/txrelay pointed at the venv's txrelay: verify
    checks that each command exists on this machine, and the test run installs txrelay
    without that link (scripts/install.sh makes it on a relay node)."""
    copies = []
    for unit in UNITS:
        copy = directory / unit
        copy.write_text((installed / unit).read_text().replace("/usr/local/bin/txrelay",
                                                               TXRELAY))
        copies.append(copy)
    return copies


def test_units_pass_systemd_analyze_verify_without_a_warning(installed: Path,
                                                            tmp_path: Path) -> None:
    done = verify(*with_this_txrelay(installed, tmp_path))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_verify_catches_a_broken_unit(installed: Path, tmp_path: Path) -> None:
    """The check above can fail: a typo and a missing program are reported."""
    broken = tmp_path / "txrelay-milter.service"
    text = (installed / "txrelay-milter.service").read_text()
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=strictly")
                      .replace("/usr/local/bin/txrelay", "/nonexistent/txrelay"))
    done = verify(broken)
    assert done.returncode != 0
    assert "protect system value" in done.stderr and "/nonexistent/txrelay" in done.stderr


@pytest.mark.parametrize("unit", ["txrelay-milter.service", "txrelay-tracker.service",
                                  "txrelay-webhooks.service", "txrelay-web.service"])
def test_daemons_run_as_txrelay_with_a_low_exposure_score(installed: Path, unit: str) -> None:
    text = (installed / unit).read_text()
    for setting in ("User=txrelay", "NoNewPrivileges=yes", "ProtectSystem=strict",
                    "PrivateTmp=yes", "ProtectHome=yes"):
        assert re.search(rf"^{re.escape(setting)}$", text, re.M), setting
    done = subprocess.run(["systemd-analyze", "security", "--offline=true",
                           str(installed / unit)], capture_output=True, text=True, check=False)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert float(score[1]) <= 2.5, done.stdout[-2000:]


def test_milter_may_write_only_its_socket_and_state_directories(installed: Path) -> None:
    text = (installed / "txrelay-milter.service").read_text()
    assert re.findall(r"^ReadWritePaths=(.*)$", text, re.M) == [
        "/run/txrelay /var/lib/txrelay /var/lib/txrelay-auth"]
    assert "SupplementaryGroups=postfix" in text


def test_tracker_may_read_the_journal_and_the_mail_log_but_write_only_its_state(
        installed: Path) -> None:
    text = (installed / "txrelay-tracker.service").read_text()
    assert re.findall(r"^SupplementaryGroups=(.*)$", text, re.M) == ["systemd-journal"]
    assert re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.M) == ["CAP_DAC_READ_SEARCH"]
    assert re.findall(r"^ReadWritePaths=(.*)$", text, re.M) == ["/var/lib/txrelay"]
    assert "ProtectSystem=strict" in text.splitlines()


def test_webhook_worker_writes_nothing_on_disk_and_holds_no_capability(installed: Path) -> None:
    text = (installed / "txrelay-webhooks.service").read_text()
    assert re.findall(r"^ExecStart=(.*)$", text, re.M) == ["/usr/local/bin/txrelay webhooks run"]
    assert re.findall(r"^ReadWritePaths=(.*)$", text, re.M) == []
    assert re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.M) == [""]
    assert "ProtectSystem=strict" in text.splitlines()


def test_web_dashboard_is_installed_but_not_enabled(installed: Path) -> None:
    text = (installed / "txrelay-web.service").read_text()
    assert re.findall(r"^ExecStart=(.*)$", text, re.M) == ["/usr/local/bin/txrelay web"]
    assert re.findall(r"^ReadWritePaths=(.*)$", text, re.M) == []
    assert re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.M) == [""]
    script = (ROOT / "scripts" / "install-systemd.sh").read_text()
    enabled = re.search(r"^units=\((.*)\)$", script, re.M)
    assert enabled is not None and "txrelay-web.service" not in enabled[1]


# Directives through which stopping or restarting a unit stops or restarts another
# (systemd.unit(5)): none of txrelay's units may name Postfix in one of them.
PROPAGATING = ("Requires", "Requisite", "BindsTo", "PartOf", "Upholds", "PropagatesStopTo",
               "StopPropagatedFrom", "RequiredBy", "UpheldBy")


@pytest.mark.parametrize("unit", UNITS)
def test_no_unit_propagates_stop_or_restart_to_postfix(installed: Path, unit: str) -> None:
    text = (installed / unit).read_text()
    for directive in PROPAGATING:
        for value in re.findall(rf"^{directive}=(.*)$", text, re.M):
            assert "postfix" not in value, f"{unit}: {directive}={value}"


def unit_list(text: str, section: str, directive: str) -> list[str]:
    """The units a list directive of SECTION names, as systemd reads it: the values of every
    line add up, and an empty assignment ("Before=") clears what came before."""
    names: list[str] = []
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line.partition("=")[0].strip() == directive:
            value = line.partition("=")[2].split()
            names = names + value if value else []
    return names


@pytest.mark.parametrize("unit", ["txrelay-milter.service", "txrelay-dovecot.service"])
def test_milter_and_dovecot_are_ordered_before_postfix(installed: Path, unit: str) -> None:
    """At boot the milter socket and the auth socket exist when Postfix starts taking
    mail: ordering only (the test above proves no stop or restart reaches Postfix)."""
    text = (installed / unit).read_text()
    assert "postfix.service" in unit_list(text, "Unit", "Before"), unit
    assert "postfix.service" not in unit_list(text, "Unit", "After"), unit


def test_unit_list_reads_lines_and_resets_as_systemd_does() -> None:
    text = "[Unit]\nBefore=a.service\nBefore=\nBefore=b.service c.service\n[Install]\nBefore=x"
    assert unit_list(text, "Unit", "Before") == ["b.service", "c.service"]
    assert unit_list("[Service]\nBefore=postfix.service\n", "Unit", "Before") == []


def test_deployment_guide_lists_every_unit_the_installer_stages(installed: Path) -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    rows = re.findall(r"^\| `(txrelay-[a-z]+\.service)`", guide, re.M)
    assert sorted(rows) == sorted(p.name for p in installed.glob("*.service"))
    script = (ROOT / "scripts" / "install-systemd.sh").read_text()
    enabled = re.search(r"^units=\((.*)\)$", script, re.M)
    assert enabled is not None
    count = len(enabled[1].split())
    words = {4: "four", 5: "five", 6: "six"}
    assert f"installs {words[len(rows)]} units" in " ".join(guide.split())
    assert f"`systemctl enable --now` {words[count]} of them" in " ".join(guide.split())


def test_enabling_the_units_links_nothing_into_postfix(tmp_path: Path) -> None:
    """systemctl's own offline enable, next to Debian's Postfix units: the only links made
    are wants of multi-user.target, none under postfix.service.requires (which would make
    `systemctl restart txrelay-milter` restart Postfix, port 25 included)."""
    root = tmp_path / "root"
    subprocess.run(["bash", str(ROOT / "scripts" / "install-systemd.sh"), "--no-start"],
                   env={**os.environ, "DESTDIR": str(root)}, check=True, capture_output=True)
    debian = root / "lib" / "systemd" / "system"
    debian.mkdir(parents=True)
    for name in ("postfix.service", "postfix@.service"):
        shutil.copy(Path("/lib/systemd/system") / name, debian / name)
    done = subprocess.run(["systemctl", f"--root={root}", "enable", *UNITS],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    links = sorted(str(p.relative_to(root / "etc" / "systemd" / "system"))
                   for p in (root / "etc" / "systemd" / "system").rglob("*") if p.is_symlink())
    assert links == [f"multi-user.target.wants/{unit}" for unit in sorted(UNITS)]
    (tmp_path / "copies").mkdir()
    verified = verify(*with_this_txrelay(root / "etc" / "systemd" / "system",
                                         tmp_path / "copies"))
    assert verified.returncode == 0, verified.stderr


def test_installer_adds_fail2bans_filter_and_jail_and_keeps_an_edited_jail(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "fail2ban" / "jail.d").mkdir(parents=True)
    edited = root / "etc" / "fail2ban" / "jail.d" / "txrelay.conf"
    edited.write_text("[txrelay]\nenabled = true\nport = 2587\n")
    subprocess.run(["bash", str(ROOT / "scripts" / "install-systemd.sh"), "--no-start"],
                   env={**os.environ, "DESTDIR": str(root)}, check=True, capture_output=True)
    installed_filter = root / "etc" / "fail2ban" / "filter.d" / "txrelay.conf"
    assert installed_filter.read_bytes() == (
        ROOT / "deploy" / "fail2ban" / "filter.d" / "txrelay.conf").read_bytes()
    assert edited.read_text() == "[txrelay]\nenabled = true\nport = 2587\n"


def test_installer_leaves_fail2ban_alone_where_it_is_not_installed(installed: Path) -> None:
    assert not (installed.parents[2] / "etc" / "fail2ban").exists()


def install_into(root: Path) -> str:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install-systemd.sh"), "--no-start"],
                          env={**os.environ, "DESTDIR": str(root)}, check=True,
                          capture_output=True, text=True)
    return done.stdout + done.stderr


def test_where_fail2ban_is_installed_the_jail_is_installed_enabled(tmp_path: Path) -> None:
    """The jail is the cap on failed logins (Postfix's AUTH limit counts every AUTH)."""
    (tmp_path / "etc" / "fail2ban").mkdir(parents=True)
    output = install_into(tmp_path)
    jail = configparser.ConfigParser()
    jail.read(tmp_path / "etc" / "fail2ban" / "jail.d" / "txrelay.conf")
    assert jail.getboolean("txrelay", "enabled")
    assert (jail["txrelay"]["maxretry"], jail["txrelay"]["findtime"]) == ("5", "10m")
    assert "5 failed logins in 10 minutes" in output


def test_without_fail2ban_the_installer_says_failures_are_only_rate_limited(
        tmp_path: Path) -> None:
    output = install_into(tmp_path)
    assert "fail2ban is not installed: failed logins are limited only by Postfix's AUTH " \
        "rate limit" in output
    assert "auth_failure_delay" in output
