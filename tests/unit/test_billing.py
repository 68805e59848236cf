"""Billing arithmetic in exact decimals, and billing periods."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from txrelay.errors import InvalidInput
from txrelay.policy.billing import BillingInputs, BookedBlock, bill, parse_period

PRICE = Decimal("0.00095")


def inputs(overage: int = 0, **kwargs: object) -> BillingInputs:
    values: dict = {"blocks_booked": (), "mails_from_blocks": 0, "overage_mails": overage,
                    "expired_unused": 0, "voided": 0}
    values.update(kwargs)
    return BillingInputs(**values)


def test_overage_is_mails_times_price_exactly() -> None:
    report = bill(inputs(overage=3), PRICE)
    assert report.amount_due_eur == Decimal("0.00285")
    assert report.amount_due_cents_eur == Decimal("0.00")


def test_a_million_overage_mails_cost_950_euro_to_the_cent() -> None:
    report = bill(inputs(overage=1_000_000), PRICE)
    assert report.amount_due_eur == Decimal("950.00000")
    assert str(report.amount_due_cents_eur) == "950.00"


def test_rounding_to_the_cent_is_half_up() -> None:
    assert bill(inputs(overage=6), PRICE).amount_due_cents_eur == Decimal("0.01")  # 0.0057
    assert bill(inputs(overage=5), PRICE).amount_due_cents_eur == Decimal("0.00")  # 0.00475


def test_float_prices_are_refused() -> None:
    with pytest.raises(TypeError):
        bill(inputs(overage=1), 0.00095)  # type: ignore[arg-type]


def test_no_overage_means_nothing_due_even_with_blocks() -> None:
    block = BookedBlock(1, "booked", 25000, dt.datetime(2026, 3, 2, tzinfo=dt.UTC))
    report = bill(inputs(blocks_booked=(block,), mails_from_blocks=100), PRICE)
    assert report.amount_due_eur == Decimal("0")
    assert report.units_booked == 25000
    assert not report.empty


def test_a_period_without_anything_is_empty() -> None:
    assert bill(inputs(), PRICE).empty


def test_voided_only_period_is_not_empty_but_costs_nothing() -> None:
    report = bill(inputs(voided=2), PRICE)
    assert not report.empty and report.amount_due_eur == 0


@pytest.mark.parametrize(("text", "start", "end"), [
    ("2026-03", dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 4, 1, tzinfo=dt.UTC)),
    ("2026-12", dt.datetime(2026, 12, 1, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC)),
])
def test_period_is_a_utc_calendar_month(text: str, start: dt.datetime, end: dt.datetime) -> None:
    period = parse_period(text)
    assert (period.start, period.end, period.label) == (start, end, text)


@pytest.mark.parametrize("text", ["2026-13", "2026-3", "March", "2026-03-01", ""])
def test_bad_periods_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidInput, match="YYYY-MM"):
        parse_period(text)
