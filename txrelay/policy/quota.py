"""Turns a recipient's quota/rate reservation outcome into the reply for that RCPT."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from txrelay.policy.verdict import Verdict


class ReservationStatus(enum.Enum):
    RESERVED = "reserved"  # within quota
    OVERAGE = "overage"  # paid account beyond its quota: accepted, billed as overage
    DUPLICATE = "duplicate"  # same recipient again in this transaction: counted once
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"  # demo account out of quota
    NEED_BALANCE = "need_balance"  # Redis holds no balance yet: load it from PostgreSQL
    OVERAGE_CAP = "overage_cap"  # paid account beyond quota and at its overage cap


@dataclass(frozen=True)
class Reservation:
    status: ReservationStatus
    remaining: int = 0  # units left after this reservation (negative: overage)
    retry_after: float = 0.0  # seconds until the hourly window frees one slot


def recipient_verdict(
    reservation: Reservation,
    rate_limit: int,
    connection_name: str,
    overage_cap: int | None = None,
) -> Verdict:
    """Accept the recipient, or say why not and what to do about it."""
    status = reservation.status
    if status in (
        ReservationStatus.RESERVED,
        ReservationStatus.OVERAGE,
        ReservationStatus.DUPLICATE,
    ):
        return Verdict.proceed()
    if status is ReservationStatus.RATE_LIMITED:
        minutes = max(1, math.ceil(reservation.retry_after / 60))
        return Verdict.tempfail(
            "451",
            "4.7.1",
            f'connection "{connection_name}" reached its limit of '
            f"{rate_limit} recipients per hour; try again in {minutes} minute"
            f"{'s' if minutes != 1 else ''}",
        )
    if status is ReservationStatus.QUOTA_EXHAUSTED:
        return Verdict.reject(
            "550",
            "5.7.1",
            "the account's demo quota is used up; book quota "
            "(txrelay quota book) to send more mail",
        )
    if status is ReservationStatus.OVERAGE_CAP:
        if not overage_cap:
            return Verdict.reject(
                "550",
                "5.7.1",
                "the account's quota is used up and it may not send beyond it (overage cap "
                "0); book quota (txrelay quota book) to send more mail",
            )
        return Verdict.reject(
            "550",
            "5.7.1",
            f"the account's quota is used up and so is its overage cap of {overage_cap:,} "
            "mails this billing month; book quota (txrelay quota book) or ask the relay "
            "administrator to raise the cap",
        )
    raise ValueError(f"no verdict for reservation status {status.value}")
