"""Whether a node can accept mail now, judged from its dependencies: the /healthz verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# What each dependency's absence means for mail, in the words /healthz uses.
DEGRADED_BECAUSE = {
    "redis": "rate and quota are decided in PostgreSQL (degraded mode)",
    "postgresql": "ledger records go to the local journal until PostgreSQL is back",
}
# Why a critical loop that stopped working makes the node refuse to be used.
LOOP_CRITICAL_BECAUSE = (
    "the policy snapshot is frozen, so a disabled connection or a "
    "changed password would no longer reach MAIL (mail accepted wrongly)"
)


@dataclass(frozen=True)
class LoopStatus:
    """What /healthz needs to know of one loop, as plain values (policy/health.py is pure)."""

    name: str
    alive: bool  # its thread runs (False before start and after stop)
    since_success: float | None  # seconds since its last run that did not raise
    stale_after: float  # seconds without such a run after which it counts as frozen
    errors: int  # unexpected exceptions so far
    critical: bool  # a dead or frozen loop means mail would be accepted wrongly

    def problem(self) -> str | None:
        """Why this loop is not doing its work, or None while it is."""
        if not self.alive:
            return "its thread is not running"
        if self.since_success is not None and self.since_success > self.stale_after:
            return f"no successful run for {self.since_success:.0f} s"
        return None


@dataclass(frozen=True)
class NodeHealth:
    """The HTTP status, a one-word state (ok, degraded, unavailable) and one line per fact."""

    status: int
    state: str
    lines: tuple[str, ...]

    def body(self) -> str:
        return "".join(f"{line}\n" for line in (self.state, *self.lines))


def judge_dependencies(
    problems: Mapping[str, str | None], loops: Sequence[LoopStatus] = ()
) -> NodeHealth:
    """Every dependency is required (the tracker: it cannot apply outcomes without them),
    and so is every loop: a tracker whose loop stopped or hangs applies nothing either."""
    lines = tuple(f"{name}: {problem or 'ok'}" for name, problem in problems.items())
    stuck = tuple(f"{loop.name} loop: {problem}" for loop in loops if (problem := loop.problem()))
    if any(problems.values()) or stuck:
        return NodeHealth(
            503, "unavailable", (*stuck, *(line for line in lines if not line.endswith(": ok")))
        )
    return NodeHealth(200, "ok", lines)


def judge_milter(
    problems: Mapping[str, str | None],
    journal_room: int,
    loops: Sequence[LoopStatus] = (),
    quarantined: int = 0,
) -> NodeHealth:
    """Can this node accept mail now? 503 only when mail would be refused: Redis and
    PostgreSQL both down, PostgreSQL down with no room left in the local journal, or no SASL
    service to log in with; and when it would be accepted wrongly: a critical background
    loop (the policy refresh) dead or frozen. One of Redis or PostgreSQL down, another loop
    dead or frozen, or journal entries set aside is 'degraded': 200, mail flows."""
    down = {name for name, problem in problems.items() if problem}
    lines = [f"{name}: {problems[name] or 'ok'}" for name in problems]
    refused = []
    if {"redis", "postgresql"} <= down:
        refused.append("Redis and PostgreSQL are both down: mail gets 451 4.3.0 at RCPT")
    elif "postgresql" in down and journal_room <= 0:
        refused.append(
            "PostgreSQL is down and the local journal is full "
            "([milter] journal_max_per_hour): mail gets 451 4.3.0"
        )
    if "dovecot" in down:
        refused.append("txrelay's Dovecot auth socket does not answer: SMTP logins fail")
    stuck = [(loop, problem) for loop in loops if (problem := loop.problem())]
    refused += [
        f"background loop {loop.name}: {problem}: {LOOP_CRITICAL_BECAUSE}"
        for loop, problem in stuck
        if loop.critical
    ]
    notes = [
        f"background loop {loop.name}: {problem} (mail flows; see the milter's log)"
        for loop, problem in stuck
        if not loop.critical
    ]
    if quarantined:
        notes.append(
            f"journal: {quarantined} entries set aside after failing to replay, "
            "not in the ledger (txrelay journal list)"
        )
    if refused:
        return NodeHealth(503, "unavailable", (*refused, *notes, *lines))
    degraded = [
        f"{name} down: {DEGRADED_BECAUSE[name]}"
        for name in sorted(down)
        if name in DEGRADED_BECAUSE
    ]
    if degraded or notes:
        return NodeHealth(200, "degraded", (*degraded, *notes, *lines))
    return NodeHealth(200, "ok", tuple(lines))
