"""Whether a node can accept mail now, judged from its dependencies: the /healthz verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# What each dependency's absence means for mail, in the words /healthz uses.
DEGRADED_BECAUSE = {
    "redis": "rate and quota are decided in PostgreSQL (degraded mode)",
    "postgresql": "ledger records go to the local journal until PostgreSQL is back",
}


@dataclass(frozen=True)
class NodeHealth:
    """The HTTP status, a one-word state (ok, degraded, unavailable) and one line per fact."""

    status: int
    state: str
    lines: tuple[str, ...]

    def body(self) -> str:
        return "".join(f"{line}\n" for line in (self.state, *self.lines))


def judge_dependencies(problems: Mapping[str, str | None]) -> NodeHealth:
    """Every dependency is required (the tracker: it cannot apply outcomes without them)."""
    lines = tuple(f"{name}: {problem or 'ok'}" for name, problem in problems.items())
    if any(problems.values()):
        return NodeHealth(503, "unavailable", tuple(line for line in lines
                                                    if not line.endswith(": ok")))
    return NodeHealth(200, "ok", lines)


def judge_milter(problems: Mapping[str, str | None], journal_room: int) -> NodeHealth:
    """Can this node accept mail now? 503 only when mail would be refused: Redis and
    PostgreSQL both down, PostgreSQL down with no room left in the local journal, or no SASL
    service to log in with. One of Redis or PostgreSQL down is 'degraded': 200, mail flows."""
    down = {name for name, problem in problems.items() if problem}
    lines = [f"{name}: {problems[name] or 'ok'}" for name in problems]
    refused = []
    if {"redis", "postgresql"} <= down:
        refused.append("Redis and PostgreSQL are both down: mail gets 451 4.3.0 at RCPT")
    elif "postgresql" in down and journal_room <= 0:
        refused.append("PostgreSQL is down and the local journal is full "
                       "([milter] journal_max_per_hour): mail gets 451 4.3.0")
    if "dovecot" in down:
        refused.append("txrelay's Dovecot auth socket does not answer: SMTP logins fail")
    if refused:
        return NodeHealth(503, "unavailable", (*refused, *lines))
    degraded = [f"{name} down: {DEGRADED_BECAUSE[name]}" for name in sorted(down)
                if name in DEGRADED_BECAUSE]
    if degraded:
        return NodeHealth(200, "degraded", (*degraded, *lines))
    return NodeHealth(200, "ok", tuple(lines))
