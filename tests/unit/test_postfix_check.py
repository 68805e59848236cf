"""`txrelay postfix check` against real config directories (postconf reads them): clean after
`configure`, one problem for each setting that reaches txrelay's mail, and silence about
settings of other services (port 25's OpenDKIM, content filter, local mail)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.processes import PRISTINE_MASTER_CF, TXRELAY
from txrelay.config import Config
from txrelay.provisioning.postfix import PostfixPlan, PostfixTarget, plan_postfix, read_settings
from txrelay.provisioning.postfix_apply import configure_postfix
from txrelay.provisioning.postfix_check import ERROR, WARNING, Problem, check_settings

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
    (directory.parent / "queue").mkdir()
    # Its own queue directory: configure's `postfix check` creates what is missing there.
    (directory / "main.cf").write_text("compatibility_level = 3.6\n"
                                       f"queue_directory = {directory.parent / 'queue'}\n"
                                       "smtpd_tls_chain_files = /etc/ssl/private/relay.pem\n"
                                       "disable_mime_output_conversion = yes\n")
    shutil.copy(PRISTINE_MASTER_CF, directory / "master.cf")
    configure_postfix(PostfixTarget(directory, "test"), plan)
    return directory


@pytest.fixture()
def copy(configured: Path, tmp_path: Path) -> Path:
    target = tmp_path / "etc"
    shutil.copytree(configured, target)
    return target


def postconf(directory: Path, *args: str) -> None:
    subprocess.run(["postconf", "-c", str(directory), *args], check=True, capture_output=True)


def check(directory: Path, plan: PostfixPlan) -> list[Problem]:
    return check_settings(read_settings(directory), plan)


def errors(directory: Path, plan: PostfixPlan) -> list[tuple[str, str]]:
    return [(p.where, p.setting) for p in check(directory, plan) if p.severity == ERROR]


def run_check(config_file: Path, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TXRELAY, "--config", str(config_file), *extra, "postfix", "check",
                           "--config-directory", str(directory), "--listen", LISTEN],
                          capture_output=True, text=True, check=False, timeout=60)


def test_configured_postfix_passes_the_check(config_file: Path, configured: Path) -> None:
    done = run_check(config_file, configured)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout


def test_check_reads_the_services_configure_recorded_without_listen(config_file: Path,
                                                                      copy: Path) -> None:
    postconf(copy, "-P", f"{SERVICE}/smtpd_tls_auth_only=no")
    done = subprocess.run([TXRELAY, "--config", str(config_file), "--json", "postfix",
                           "check", "--config-directory", str(copy)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["services"] == [SERVICE]
    assert [p["setting"] for p in report["problems"]] == ["smtpd_tls_auth_only"]


def test_check_reports_one_line_per_problem_and_exits_1(config_file: Path, copy: Path) -> None:
    postconf(copy, "-P", f"{SERVICE}/milter_default_action=accept",
             f"{SERVICE}/smtpd_tls_auth_only=no")
    done = run_check(config_file, copy)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"master.cf {SERVICE}: smtpd_tls_auth_only = 'no': ")
    assert lines[1].startswith(f"master.cf {SERVICE}: milter_default_action = 'accept': ")
    assert "tempfail" in lines[1]


def test_global_warning_alone_exits_0_and_says_what_to_run(config_file: Path,
                                                           copy: Path) -> None:
    postconf(copy, "-e", "disable_mime_output_conversion=no")
    done = run_check(config_file, copy, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert [w["setting"] for w in report["warnings"]] == ["disable_mime_output_conversion"]
    assert "postconf -e disable_mime_output_conversion=yes" in report["warnings"][0]["fix"]


OTHER_SERVICES_ONLY = [
    ("milter_default_action", "accept"),
    ("smtpd_milters", "{ inet:127.0.0.1:8891, default_action=accept }"),
    ("non_smtpd_milters", "$smtpd_milters"),
    ("content_filter", "smtp:[127.0.0.1]:10025"),
    ("receive_override_options", "no_milters"),
    ("smtpd_milter_maps", "cidr:/etc/postfix/milter_map"),
    ("message_size_limit", "52428800"),
]


@pytest.mark.parametrize(("name", "value"), OTHER_SERVICES_ONLY,
                         ids=[n for n, _ in OTHER_SERVICES_ONLY])
def test_main_cf_setting_that_txrelay_overrides_is_not_flagged(copy: Path, plan: PostfixPlan,
                                                                name: str, value: str) -> None:
    postconf(copy, "-e", f"{name}={value}")
    assert check(copy, plan) == []


MAIN_CF = [
    ("smtp_generic_maps", "hash:/etc/postfix/generic"),
    ("smtp_header_checks", "regexp:/etc/postfix/smtp_header_checks"),
    ("smtp_body_checks", "regexp:/etc/postfix/smtp_body_checks"),
    ("smtp_mime_header_checks", "regexp:/etc/postfix/mime"),
    ("lmtp_header_checks", "regexp:/etc/postfix/lmtp_header_checks"),
    ("milter_macro_defaults", "{auth_authen=bench}"),
    ("smtp_line_length_limit", "500"),
]


@pytest.mark.parametrize(("name", "value"), MAIN_CF, ids=[n for n, _ in MAIN_CF])
def test_main_cf_setting_that_reaches_txrelays_mail_is_a_problem(copy: Path, plan: PostfixPlan,
                                                                 name: str, value: str) -> None:
    postconf(copy, "-e", f"{name}={value}")
    problems = check(copy, plan)
    assert [(p.where, p.setting) for p in problems] == [("main.cf", name)], problems
    assert problems[0].fix and problems[0].severity == ERROR


def test_non_smtpd_milters_naming_txrelays_milter_is_a_problem(copy: Path,
                                                                plan: PostfixPlan) -> None:
    postconf(copy, "-e", f"non_smtpd_milters=inet:127.0.0.1:8891, {plan.milter}")
    assert errors(copy, plan) == [("main.cf", "non_smtpd_milters")]


def test_small_main_cf_size_limit_without_own_cleanup_is_a_problem(copy: Path,
                                                                   plan: PostfixPlan) -> None:
    postconf(copy, "-e", "message_size_limit=10240000")
    postconf(copy, "-PX", f"{SERVICE}/cleanup_service_name")
    assert errors(copy, plan) == [("master.cf cleanup/unix", "message_size_limit")]


def test_configure_gives_txrelay_its_own_cleanup_when_main_cf_limit_is_small(
        copy: Path, plan: PostfixPlan) -> None:
    # The fixture's main.cf keeps Postfix's default limit (10240000), below txrelay's need.
    settings = read_settings(copy)
    assert settings.effective(SERVICE, "cleanup_service_name") == "txrelay-cleanup"
    assert settings.effective("txrelay-cleanup/unix", "message_size_limit") == str(
        plan.message_size_limit)
    assert settings.main["message_size_limit"] == "10240000"


SUBMISSION = [
    ("milter_default_action", "accept"),
    ("milter_macro_defaults", "{auth_authen=bench}"),
    ("smtpd_tls_security_level", "may"),
    ("smtpd_tls_auth_only", "no"),
    ("smtpd_milters", "unix:/run/other-milter.sock"),
    ("smtpd_tls_mandatory_protocols", "!SSLv2,!SSLv3"),
    ("content_filter", "smtp:[127.0.0.1]:10025"),
    ("receive_override_options", "no_header_body_checks,no_milters"),
    ("smtpd_milter_maps", "cidr:/etc/postfix/milter_map"),
]


@pytest.mark.parametrize(("name", "value"), SUBMISSION, ids=[n for n, _ in SUBMISSION])
def test_dangerous_override_on_txrelays_service_is_a_problem(copy: Path, plan: PostfixPlan,
                                                             name: str, value: str) -> None:
    postconf(copy, "-P", f"{SERVICE}/{name}={value}")
    assert errors(copy, plan) == [(f"master.cf {SERVICE}", name)]


def test_per_milter_default_action_accept_for_txrelays_milter_is_a_problem(
        copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-M", f"{SERVICE}={LISTEN} inet n - n - - smtpd "
             f"-o {{ smtpd_milters = {{ {plan.milter}, default_action=accept }} }} "
             "-o smtpd_tls_security_level=encrypt -o smtpd_tls_auth_only=yes "
             "-o smtpd_tls_mandatory_protocols=>=TLSv1.2 -o cleanup_service_name=txrelay-cleanup "
             "-o smtpd_client_auth_rate_limit=60")
    problems = check(copy, plan)
    assert [(p.where, p.setting) for p in problems] == [(f"master.cf {SERVICE}",
                                                         "smtpd_milters")]
    assert "default_action=accept" in problems[0].fix


def test_other_service_on_txrelays_auth_socket_without_its_milter_is_a_problem(
        copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-M", "127.0.0.1:10997/inet=127.0.0.1:10997 inet n - n - - smtpd "
             f"-o smtpd_sasl_auth_enable=yes -o smtpd_sasl_type=dovecot "
             f"-o smtpd_sasl_path={plan.auth_socket}")
    assert errors(copy, plan) == [("master.cf 127.0.0.1:10997/inet", "smtpd_milters")]


def test_main_cf_sasl_on_txrelays_socket_is_a_problem_for_each_inheriting_service(
        copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-e", "smtpd_sasl_auth_enable=yes", f"smtpd_sasl_path={plan.auth_socket}")
    assert errors(copy, plan) == [("master.cf smtp/inet", "smtpd_milters")]


def test_mailbox_users_own_sasl_on_another_service_is_not_flagged(copy: Path,
                                                                  plan: PostfixPlan) -> None:
    postconf(copy, "-M", "submission/inet=submission inet n - n - - smtpd "
             "-o smtpd_sasl_auth_enable=yes -o smtpd_sasl_path=private/auth")
    assert check(copy, plan) == []


def test_removed_override_falls_back_to_main_cf_and_is_a_problem(copy: Path,
                                                                 plan: PostfixPlan) -> None:
    postconf(copy, "-PX", f"{SERVICE}/smtpd_tls_auth_only")
    problems = check(copy, plan)
    assert [(p.setting, p.value) for p in problems] == [("smtpd_tls_auth_only", "no")]


def test_rewriting_on_the_smtp_client_service_is_a_problem(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-P", "smtp/unix/smtp_header_checks=regexp:/etc/postfix/strip")
    assert errors(copy, plan) == [("master.cf smtp/unix", "smtp_header_checks")]


def test_missing_service_is_a_problem(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-MX", SERVICE)
    problems = check(copy, plan)
    assert [p.setting for p in problems] == [SERVICE]
    assert "txrelay postfix configure" in problems[0].fix


def test_no_certificate_for_txrelays_service_is_a_problem(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-X", "smtpd_tls_chain_files")
    assert errors(copy, plan) == [(f"master.cf {SERVICE}", "smtpd_tls_chain_files")]


def test_tls_1_2_and_up_in_exclusion_form_is_accepted(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-P", f"{SERVICE}/smtpd_tls_mandatory_protocols=!SSLv2,!SSLv3,!TLSv1,"
                         "!TLSv1.1")
    assert check(copy, plan) == []


def test_smtputf8_disabled_is_a_warning(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-e", "smtputf8_enable=no")
    assert [(p.setting, p.severity) for p in check(copy, plan)] == [("smtputf8_enable",
                                                                     WARNING)]


@pytest.mark.parametrize(("setting", "value"), [("smtpd_tls_session_cache_timeout", "0"),
                                              ("smtpd_tls_session_cache_timeout", "0s"),
                                              ("tls_session_ticket_cipher", "")])
def test_tls_session_tickets_turned_off_in_main_cf_is_a_warning(copy: Path, plan: PostfixPlan,
                                                                setting: str,
                                                                value: str) -> None:
    """tlsmgr's settings: an -o on txrelay's service cannot undo them (measured in
    tests/e2e/test_tls_resumption.py), so the check says what to run instead."""
    postconf(copy, "-e", f"{setting}={value}")
    found = check(copy, plan)
    assert [(p.setting, p.severity) for p in found] == [(setting, WARNING)]
    assert f"postconf -X {setting}" in found[0].fix


def test_shorter_tls_session_lifetime_is_not_flagged(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-e", "smtpd_tls_session_cache_timeout=5m")
    assert check(copy, plan) == []


def test_configure_sets_the_limits_on_txrelays_service_and_nul_on_its_cleanup(
        copy: Path) -> None:
    settings = read_settings(copy)
    assert settings.effective(SERVICE, "smtpd_client_auth_rate_limit") == "60"
    assert settings.effective(SERVICE, "smtpd_client_message_rate_limit") == "6000"
    assert settings.effective(SERVICE, "smtpd_client_connection_rate_limit") == "600"
    assert settings.effective("txrelay-cleanup/unix", "message_reject_characters") == "\\0"
    assert settings.effective("cleanup/unix", "message_reject_characters") == ""


def test_limits_come_from_the_limits_section(config: Config) -> None:
    limits = dataclasses.replace(config.limits, client_auth_rate_limit=5,
                                 client_message_rate_limit=30,
                                 client_connection_rate_limit=0)
    plan = plan_postfix(dataclasses.replace(config, limits=limits), listen=LISTEN)
    overrides = dict(plan.services[0].overrides)
    assert (overrides["smtpd_client_auth_rate_limit"],
            overrides["smtpd_client_message_rate_limit"],
            overrides["smtpd_client_connection_rate_limit"]) == ("5", "30", "0")


def test_auth_rate_limit_above_120_a_minute_is_a_warning(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-P", f"{SERVICE}/smtpd_client_auth_rate_limit=600")
    problems = check(copy, plan)
    assert [(p.where, p.setting, p.severity) for p in problems] == [
        (f"master.cf {SERVICE}", "smtpd_client_auth_rate_limit", WARNING)]
    assert "more than 120 times a minute" in problems[0].fix


def test_no_auth_rate_limit_is_a_warning(copy: Path, plan: PostfixPlan) -> None:
    postconf(copy, "-PX", f"{SERVICE}/smtpd_client_auth_rate_limit")
    assert [(p.setting, p.value, p.severity) for p in check(copy, plan)] == [
        ("smtpd_client_auth_rate_limit", "0", WARNING)]


def test_rate_limits_without_the_anvil_service_are_a_warning(copy: Path,
                                                             plan: PostfixPlan) -> None:
    postconf(copy, "-MX", "anvil/unix")
    problems = check(copy, plan)
    assert [(p.where, p.setting, p.severity) for p in problems] == [
        ("master.cf", "anvil/unix", WARNING)]


def test_txrelays_cleanup_without_nul_refused_is_a_warning(copy: Path,
                                                           plan: PostfixPlan) -> None:
    postconf(copy, "-PX", "txrelay-cleanup/unix/message_reject_characters")
    assert [(p.where, p.setting, p.severity) for p in check(copy, plan)] == [
        ("master.cf txrelay-cleanup/unix", "message_reject_characters", WARNING)]


def test_configure_keeps_the_characters_main_cf_refuses_and_adds_nul(
        tmp_path: Path, plan: PostfixPlan) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    (tmp_path / "queue").mkdir()
    (directory / "main.cf").write_text("compatibility_level = 3.6\n"
                                       f"queue_directory = {tmp_path / 'queue'}\n"
                                       "message_reject_characters = \\177\n")
    shutil.copy(PRISTINE_MASTER_CF, directory / "master.cf")
    configure_postfix(PostfixTarget(directory, "test"), plan)
    assert read_settings(directory).effective(
        "txrelay-cleanup/unix", "message_reject_characters") == "\\177\\0"


def test_postfix_show_lists_every_limit(config_file: Path) -> None:
    shown = subprocess.run([TXRELAY, "--config", str(config_file), "postfix", "show",
                            "--listen", LISTEN], capture_output=True, text=True, check=True,
                           timeout=60).stdout
    for line in ("-o smtpd_client_auth_rate_limit=60",
                 "-o smtpd_client_message_rate_limit=6000",
                 "-o smtpd_client_connection_rate_limit=600",
                 "-o cleanup_service_name=txrelay-cleanup",
                 "txrelay-cleanup unix n - n - 0 cleanup",
                 "-o message_reject_characters=\\0",
                 "max_headers = 1000, max_messages_per_session = 1000"):
        assert line in shown, shown
    data = json.loads(subprocess.run([TXRELAY, "--config", str(config_file), "--json", "postfix",
                                      "show", "--listen", LISTEN], capture_output=True,
                                     text=True, check=True, timeout=60).stdout)
    assert data["cleanup_service"]["overrides"]["message_reject_characters"] == "\\0"
    assert data["milter_limits"] == {"max_headers": 1000, "max_messages_per_session": 1000}


def test_no_inbound_routes_no_bounce_domain(config: Config) -> None:
    """`postfix configure --no-inbound` (a node that is not the bounce domain's MX, and the
    tests' own Postfix instances): no pipe service, main.cf's lists left alone."""
    bounce = dataclasses.replace(config.bounce, domain="bounces.relay.example")
    with_bounce = dataclasses.replace(config, bounce=bounce)
    routed = plan_postfix(with_bounce, listen=LISTEN, return_paths=("bounces.shop.example",))
    assert routed.inbound is not None
    assert routed.inbound.domains == ("bounces.relay.example", "bounces.shop.example")
    assert plan_postfix(with_bounce, listen=LISTEN, route_inbound=False).inbound is None
