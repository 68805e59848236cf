"""`txrelay postfix check` against real config directories (postconf reads them): clean after
`configure`, and one problem for each dangerous setting injected into a copy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.processes import TXRELAY
from txrelay.config import Config
from txrelay.provisioning.postfix import (
    PostfixPlan,
    PostfixTarget,
    check_postfix,
    configure_postfix,
    plan_postfix,
)

LISTEN = "127.0.0.1:10998"
SERVICE = f"{LISTEN}/inet"


@pytest.fixture(scope="module")
def plan(config: Config) -> PostfixPlan:
    return plan_postfix(config, listen=LISTEN)


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory, plan: PostfixPlan) -> Path:
    """A config directory as an admin has it after `txrelay postfix configure`."""
    directory = tmp_path_factory.mktemp("postfix") / "etc"
    directory.mkdir()
    (directory / "main.cf").write_text("compatibility_level = 3.6\n"
                                       "smtpd_tls_chain_files = /etc/ssl/private/relay.pem\n")
    shutil.copy("/etc/postfix/master.cf", directory / "master.cf")
    configure_postfix(PostfixTarget(directory, "test"), plan)
    return directory


@pytest.fixture()
def copy(configured: Path, tmp_path: Path) -> Path:
    target = tmp_path / "etc"
    shutil.copytree(configured, target)
    return target


def postconf(directory: Path, *args: str) -> None:
    subprocess.run(["postconf", "-c", str(directory), *args], check=True, capture_output=True)


def run_check(config_file: Path, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TXRELAY, "--config", str(config_file), *extra, "postfix", "check",
                           "--config-directory", str(directory), "--listen", LISTEN],
                          capture_output=True, text=True, check=False, timeout=60)


def test_configured_postfix_passes_the_check(config_file: Path, configured: Path) -> None:
    done = run_check(config_file, configured)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout


def test_check_reports_one_line_per_problem_and_exits_1(config_file: Path, copy: Path) -> None:
    postconf(copy, "-e", "milter_default_action=accept", "non_smtpd_milters=unix:/run/x.sock")
    done = run_check(config_file, copy)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("main.cf: milter_default_action = 'accept': ")
    assert "set it to tempfail" in lines[0]
    assert lines[1].startswith("main.cf: non_smtpd_milters")


def test_check_json_lists_problems(config_file: Path, copy: Path) -> None:
    postconf(copy, "-e", "disable_mime_output_conversion=no")
    done = run_check(config_file, copy, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert [p["setting"] for p in report["problems"]] == ["disable_mime_output_conversion"]


MAIN_CF = [
    ("milter_default_action", "accept"),
    ("non_smtpd_milters", "inet:127.0.0.1:8891"),
    ("disable_mime_output_conversion", "no"),
    ("smtp_generic_maps", "hash:/etc/postfix/generic"),
    ("smtp_header_checks", "regexp:/etc/postfix/smtp_header_checks"),
    ("smtp_body_checks", "regexp:/etc/postfix/smtp_body_checks"),
    ("smtp_mime_header_checks", "regexp:/etc/postfix/mime"),
    ("milter_macro_defaults", "{auth_authen=bench}"),
    ("content_filter", "smtp:[127.0.0.1]:10025"),
    ("smtp_line_length_limit", "500"),
]


@pytest.mark.parametrize(("name", "value"), MAIN_CF, ids=[n for n, _ in MAIN_CF])
def test_dangerous_main_cf_setting_is_a_problem(copy: Path, plan: PostfixPlan, name: str,
                                                value: str) -> None:
    postconf(copy, "-e", f"{name}={value}")
    problems = check_postfix(PostfixTarget(copy, "copy"), plan)
    assert [(p.where, p.setting) for p in problems] == [("main.cf", name)], problems
    assert problems[0].fix


SUBMISSION = [
    ("milter_default_action", "accept"),
    ("milter_macro_defaults", "{auth_authen=bench}"),
    ("smtpd_tls_security_level", "may"),
    ("smtpd_tls_auth_only", "no"),
    ("smtpd_milters", "unix:/run/other-milter.sock"),
    ("smtpd_tls_mandatory_protocols", "!SSLv2,!SSLv3"),
    ("content_filter", "smtp:[127.0.0.1]:10025"),
]


@pytest.mark.parametrize(("name", "value"), SUBMISSION, ids=[n for n, _ in SUBMISSION])
def test_dangerous_submission_override_is_a_problem(copy: Path, plan: PostfixPlan, name: str,
                                                    value: str) -> None:
    postconf(copy, "-P", f"{SERVICE}/{name}={value}")
    problems = check_postfix(PostfixTarget(copy, "copy"), plan)
    assert [(p.where, p.setting) for p in problems] == [(f"master.cf {SERVICE}", name)]


def test_removed_override_falls_back_to_main_cf_and_is_a_problem(copy: Path,
                                                                 plan: PostfixPlan) -> None:
    postconf(copy, "-PX", f"{SERVICE}/smtpd_tls_auth_only")
    problems = check_postfix(PostfixTarget(copy, "copy"), plan)
    assert [(p.setting, p.value) for p in problems] == [("smtpd_tls_auth_only", "no")]


def test_rewriting_on_the_smtp_client_service_is_a_problem(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-P", "smtp/unix/smtp_header_checks=regexp:/etc/postfix/strip")
    problems = check_postfix(PostfixTarget(copy, "copy"), plan)
    assert [(p.where, p.setting) for p in problems] == [("master.cf smtp/unix",
                                                         "smtp_header_checks")]


def test_missing_submission_service_is_a_problem(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-MX", SERVICE)
    problems = check_postfix(PostfixTarget(copy, "copy"), plan)
    assert [p.setting for p in problems] == [SERVICE]
    assert "txrelay postfix configure" in problems[0].fix


def test_tls_1_2_and_up_in_exclusion_form_is_accepted(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-P", f"{SERVICE}/smtpd_tls_mandatory_protocols=!SSLv2,!SSLv3,!TLSv1,"
                         "!TLSv1.1")
    assert check_postfix(PostfixTarget(copy, "copy"), plan) == []
