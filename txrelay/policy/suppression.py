"""When a failed or complained-about recipient is suppressed, and for how long."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from txrelay.policy.bounces import BounceKind
from txrelay.policy.verdict import Verdict


@dataclass(frozen=True)
class SuppressionRules:
    soft_bounce_limit: int = 3  # soft bounces within the window that suppress; 0 = never
    soft_bounce_window_days: int = 7
    hard_bounce_days: int = 0  # how long each reason suppresses; 0 = until removed
    soft_bounces_days: int = 30
    complaint_days: int = 0


@dataclass(frozen=True)
class SuppressionDecision:
    reason: str
    expires_at: dt.datetime | None


def _expiry(days: int, now: dt.datetime) -> dt.datetime | None:
    return now + dt.timedelta(days=days) if days > 0 else None


def after_bounce(
    rules: SuppressionRules, kind: BounceKind, soft_bounces: int, now: dt.datetime
) -> SuppressionDecision | None:
    """soft_bounces: the recipient's soft bounces within the window, this one included."""
    if kind is BounceKind.HARD:
        return SuppressionDecision("hard_bounce", _expiry(rules.hard_bounce_days, now))
    if kind is BounceKind.SOFT and 0 < rules.soft_bounce_limit <= soft_bounces:
        return SuppressionDecision("soft_bounces", _expiry(rules.soft_bounces_days, now))
    return None  # a block is the message's or the relay's problem, not the address's


def after_complaint(rules: SuppressionRules, now: dt.datetime) -> SuppressionDecision:
    return SuppressionDecision("complaint", _expiry(rules.complaint_days, now))


REASON_WORDS = {
    "hard_bounce": "hard bounce",
    "soft_bounces": "repeated soft bounces",
    "complaint": "spam complaint",
    "manual": "added by the relay admin",
}


@dataclass(frozen=True)
class Suppressed:
    """One suppressed recipient as the milter holds it in memory."""

    reason: str
    since: dt.datetime
    expires_at: dt.datetime | None
    dsn: str | None = None

    def active(self, now: dt.datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


def suppressed_refusal(address: str, entry: Suppressed) -> Verdict:
    """550 5.1.1 at RCPT: why, since when, and what the shop can do about it."""
    why = REASON_WORDS.get(entry.reason, entry.reason)
    if entry.dsn:
        why = f"{why} {entry.dsn}"
    until = f" until {entry.expires_at:%Y-%m-%d}" if entry.expires_at else ""
    return Verdict.reject(
        "550",
        "5.1.1",
        f"<{address}> is suppressed for this account since {entry.since:%Y-%m-%d} ({why})"
        f"{until}; the relay does not send to it; ask your relay admin to remove it",
    )
