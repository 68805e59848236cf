"""The bench's report of the submission and multi-recipient scenarios: the ratio to the
no-milter ceiling, AUTH CPU per login as the median over the runs, cost per recipient."""

from __future__ import annotations

from bench.report import (
    SUBMISSION,
    SUBMISSION_REUSE,
    medians,
    ratios,
    recipients_report,
    submission_report,
    targets,
)
from bench.scenarios import Measurement
from bench.stack import ODK_UNIX, SUBMIT_NONE, TX_UNIX


def _run(scenario: str, target: str, msg_per_s: float, **extra: object) -> Measurement:
    return Measurement(scenario, target, 10_000, 400, 400 / msg_per_s, msg_per_s,
                       milter_cpu_ms_per_msg=5.0 if target == TX_UNIX else None,
                       machine_cpu_ms_per_msg=20.0, extra={"load1": 3.0, **extra})


def _table() -> dict[tuple[str, str], dict[str, object]]:
    return medians([
        _run(SUBMISSION, TX_UNIX, 80, auth_cpu_ms_per_login=0.2, sessions=400),
        _run(SUBMISSION, TX_UNIX, 90, auth_cpu_ms_per_login=0.4, sessions=400),
        _run(SUBMISSION, TX_UNIX, 70, auth_cpu_ms_per_login=9.0, sessions=400),
        _run(SUBMISSION, SUBMIT_NONE, 100, auth_cpu_ms_per_login=0.2, sessions=400),
        _run(SUBMISSION, SUBMIT_NONE, 100, auth_cpu_ms_per_login=0.2, sessions=400),
        _run(SUBMISSION, SUBMIT_NONE, 100, auth_cpu_ms_per_login=0.2, sessions=400),
        _run(SUBMISSION_REUSE, TX_UNIX, 160, auth_cpu_ms_per_login=0.3, sessions=20),
        _run("rcpt10", TX_UNIX, 50, recipients=10),
    ])


def test_the_session_per_message_scenario_is_judged_against_its_ceiling() -> None:
    table = _table()
    assert table[(SUBMISSION, TX_UNIX)]["auth_cpu_ms_per_login"] == 0.4  # median, not last
    assert ("submission (session per message): txrelay-unix / postfix+dovecot = 0.80   "
            "(run by run: 0.80 0.90 0.70)") in ratios(table)
    lines = submission_report(table)
    assert "   session per message: txrelay / postfix+dovecot = 0.80" in lines
    assert "   session per message / sessions reused (txrelay) = 0.50" in lines
    verdicts = targets(table)
    assert "PASS  submission, a session per message: txrelay >= 0.8 x postfix+dovecot: " \
           "0.80" in verdicts
    assert "PASS  AUTH CPU per login (Dovecot) <= 1 ms: 0.40" in verdicts


def test_a_costly_login_misses_the_auth_target() -> None:
    table = medians([_run(SUBMISSION, TX_UNIX, 40, auth_cpu_ms_per_login=21.5)])
    assert "MISS  AUTH CPU per login (Dovecot) <= 1 ms: 21.50" in targets(table)


def test_multi_recipient_cost_is_per_recipient() -> None:
    [line] = recipients_report(_table())
    assert line.startswith("    10 recipients/msg: 50.0 msg/s = 500.0 recipients/s; "
                           "milter CPU 0.500 ms/recipient (5.0 ms/msg); host CPU 2.000 "
                           "ms/recipient")


def test_opendkim_on_the_submission_path_anchors_the_ceiling_ratio() -> None:
    """The same service with OpenDKIM instead of txrelay: what the reference milter reaches
    of the no-milter ceiling, and txrelay against it, run by run."""
    table = medians([
        _run(SUBMISSION, TX_UNIX, 60), _run(SUBMISSION, TX_UNIX, 66),
        _run(SUBMISSION, ODK_UNIX, 75), _run(SUBMISSION, ODK_UNIX, 66),
        _run(SUBMISSION, SUBMIT_NONE, 100), _run(SUBMISSION, SUBMIT_NONE, 110),
    ])
    lines = submission_report(table)
    assert "   session per message: OpenDKIM / postfix+dovecot = 0.67 (the reference milter " \
           "on the same path)" in lines
    assert "   session per message: txrelay / OpenDKIM = 0.89" in lines
    assert f"{SUBMISSION} (session per message): {ODK_UNIX} / {SUBMIT_NONE} = 0.67   " \
           "(run by run: 0.75 0.60)" in ratios(table)
