"""Billing arithmetic and billing periods, in exact decimals (no I/O, never a float)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from txrelay.errors import InvalidInput

CENT = Decimal("0.01")
_PERIOD = re.compile(r"^(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Period:
    """A calendar month in UTC: [start, end)."""

    label: str
    start: dt.datetime
    end: dt.datetime


def parse_period(text: str) -> Period:
    match = _PERIOD.match(text.strip())
    if match is None:
        raise InvalidInput(f"period {text!r} is not a month written YYYY-MM (e.g. 2026-03)")
    year, month = int(match["year"]), int(match["month"])
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
    return Period(f"{year:04d}-{month:02d}", start, end)


def period_of(moment: dt.datetime) -> Period:
    """The billing period (calendar month, UTC) that contains `moment`."""
    utc = moment.astimezone(dt.UTC)
    return parse_period(f"{utc.year:04d}-{utc.month:02d}")


@dataclass(frozen=True)
class BookedBlock:
    block_id: int
    kind: str  # booked | plan
    amount: int
    booked_at: dt.datetime


@dataclass(frozen=True)
class BillingInputs:
    """What the ledger and the quota blocks say about one account and one period."""

    blocks_booked: tuple[BookedBlock, ...]
    mails_from_blocks: int  # recipients billed to quota (delivered, bounced, in flight)
    overage_mails: int  # recipients beyond the quota
    expired_unused: int  # units of blocks that expired in the period unused
    voided: int  # recipients Postfix never queued: not billed


@dataclass(frozen=True)
class BillingReport:
    inputs: BillingInputs
    overage_price_eur: Decimal
    amount_due_eur: Decimal  # exact: overage mails x price (e.g. 3 x 0.00095 = 0.00285)
    amount_due_cents_eur: Decimal  # the same, rounded half up to the cent for an invoice

    @property
    def empty(self) -> bool:
        i = self.inputs
        return not (
            i.blocks_booked
            or i.mails_from_blocks
            or i.overage_mails
            or i.expired_unused
            or i.voided
        )

    @property
    def units_booked(self) -> int:
        return sum(block.amount for block in self.inputs.blocks_booked)


def bill(inputs: BillingInputs, overage_price_eur: Decimal) -> BillingReport:
    """Overage mails x price; blocks are paid when booked, so they add nothing here."""
    if not isinstance(overage_price_eur, Decimal):
        raise TypeError("prices are Decimal, never float")
    exact = overage_price_eur * inputs.overage_mails
    return BillingReport(
        inputs, overage_price_eur, exact, exact.quantize(CENT, rounding=ROUND_HALF_UP)
    )
