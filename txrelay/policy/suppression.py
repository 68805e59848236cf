"""When a failed or complained-about recipient is suppressed, and for how long."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from txrelay.policy.bounces import BounceKind


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
