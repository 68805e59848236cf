"""/healthz of the milter: 503 only when this node would refuse mail, 200 while degraded."""

from __future__ import annotations

import pytest

from txrelay.policy.health import LoopStatus, judge_dependencies, judge_milter

UP = {"postgresql": None, "redis": None, "dovecot": None}
ROOM = 5000


def down(*names: str) -> dict[str, str | None]:
    return {**UP, **dict.fromkeys(names, "ConnectionError: refused")}


def test_everything_up_is_ok_with_a_line_per_dependency() -> None:
    health = judge_milter(UP, ROOM)
    assert (health.status, health.body()) == (
        200, "ok\npostgresql: ok\nredis: ok\ndovecot: ok\n")


@pytest.mark.parametrize("name, because", [
    ("redis", "rate and quota are decided in PostgreSQL"),
    ("postgresql", "ledger records go to the local journal"),
])
def test_one_store_down_is_degraded_but_serving(name: str, because: str) -> None:
    health = judge_milter(down(name), ROOM)
    assert (health.status, health.state) == (200, "degraded")
    assert because in health.lines[0]
    assert f"{name}: ConnectionError: refused" in health.lines


def test_both_stores_down_refuses_mail() -> None:
    health = judge_milter(down("redis", "postgresql"), ROOM)
    assert (health.status, health.state) == (503, "unavailable")
    assert "451 4.3.0" in health.lines[0]


def test_postgresql_down_with_a_full_journal_refuses_mail() -> None:
    assert judge_milter(down("postgresql"), 1).status == 200
    health = judge_milter(down("postgresql"), 0)
    assert health.status == 503
    assert "journal_max_per_hour" in health.lines[0]


def test_a_full_journal_does_not_matter_while_postgresql_answers() -> None:
    assert judge_milter(UP, 0).status == 200


def test_no_sasl_service_refuses_mail() -> None:
    health = judge_milter(down("dovecot"), ROOM)
    assert health.status == 503
    assert "SMTP logins fail" in health.lines[0]


def test_the_tracker_needs_every_dependency() -> None:
    assert judge_dependencies({"postgresql": None, "redis": None}).status == 200
    health = judge_dependencies({"postgresql": None, "redis": "ConnectionError: refused"})
    assert (health.status, health.body()) == (
        503, "unavailable\nredis: ConnectionError: refused\n")


def loop(name: str, *, alive: bool = True, since: float | None = 1.0,
         critical: bool = False) -> LoopStatus:
    return LoopStatus(name, alive, since, 60.0, 0, critical)


def test_working_loops_and_no_quarantine_change_nothing() -> None:
    health = judge_milter(UP, ROOM, [loop("policy-refresh", critical=True),
                                     loop("journal-replay")], 0)
    assert (health.status, health.body()) == (
        200, "ok\npostgresql: ok\nredis: ok\ndovecot: ok\n")


@pytest.mark.parametrize("status, problem", [
    (loop("policy-refresh", alive=False, critical=True), "its thread is not running"),
    (loop("policy-refresh", since=600.0, critical=True), "no successful run for 600 s"),
])
def test_a_dead_or_frozen_policy_refresh_is_503(status: LoopStatus, problem: str) -> None:
    """Its snapshot is frozen: a connection disabled since would still be accepted."""
    health = judge_milter(UP, ROOM, [status])
    assert (health.status, health.state) == (503, "unavailable")
    assert health.lines[0].startswith(f"background loop policy-refresh: {problem}")
    assert "disabled connection" in health.lines[0]


def test_another_dead_loop_is_a_degraded_line_and_mail_flows() -> None:
    health = judge_milter(UP, ROOM, [loop("journal-replay", alive=False)])
    assert (health.status, health.state) == (200, "degraded")
    assert health.lines[0] == ("background loop journal-replay: its thread is not running "
                               "(mail flows; see the milter's log)")


def test_journal_entries_set_aside_are_a_degraded_line() -> None:
    health = judge_milter(UP, ROOM, [], quarantined=2)
    assert (health.status, health.state) == (200, "degraded")
    assert health.lines[0].startswith("journal: 2 entries set aside")
    assert "txrelay journal list" in health.lines[0]


def test_entries_set_aside_still_show_when_the_node_refuses_mail() -> None:
    health = judge_milter(down("dovecot"), ROOM, [], quarantined=1)
    assert health.status == 503
    assert any(line.startswith("journal: 1 entries set aside") for line in health.lines)


def test_a_tracker_whose_loop_stopped_or_hangs_is_503() -> None:
    up = {"postgresql": None, "redis": None}
    assert judge_dependencies(up, [loop("tracker")]).status == 200
    health = judge_dependencies(up, [loop("tracker", since=1000.0)])
    assert (health.status, health.lines) == (503, ("tracker loop: no successful run for "
                                                   "1000 s",))
