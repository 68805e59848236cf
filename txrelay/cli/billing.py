"""`txrelay billing report`: what an account booked, used, let expire and owes for a month."""

from __future__ import annotations

from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.policy.billing import BillingReport, Period, bill, parse_period
from txrelay.store import reporting


@click.group("billing")
def billing() -> None:
    """Billing reports (money in exact decimals, EUR)."""


@billing.command("report")
@click.argument("account")
@click.option("--period", required=True, metavar="YYYY-MM", help="The calendar month (UTC).")
@json_option
@pass_cli
def report(cli: CliContext, account: str, period: str) -> None:
    """Blocks booked in the month, mails sent from blocks, quota expired unused, and the
    overage mails x [quota] overage_price_eur = amount due. Bounced recipients are billed
    like delivered ones; recipients Postfix never queued (voided) are not billed.

    \b
    Example:
      txrelay billing report "Acme GmbH" --period 2026-03
    """
    month = parse_period(period)
    account_id = reporting.require_account(cli.db, account)
    inputs = reporting.billing_inputs(cli.db, account_id, month)
    cli.db.rollback()  # a report: nothing was written, end the read transaction
    result = bill(inputs, cli.config.quota.overage_price_eur)
    data = report_view(account, month, result)
    cli.emit(data, lambda: _print(account, month, result))


def report_view(account: str, period: Period, result: BillingReport) -> dict[str, Any]:
    """JSON form: money as strings, so no reader turns it into a float."""
    i = result.inputs
    return {
        "account": account,
        "period": period.label,
        "currency": "EUR",
        "empty": result.empty,
        "blocks_booked": [
            {
                "id": b.block_id,
                "kind": b.kind,
                "amount": b.amount,
                "booked_at": b.booked_at.isoformat(),
            }
            for b in i.blocks_booked
        ],
        "units_booked": result.units_booked,
        "mails_from_blocks": i.mails_from_blocks,
        "expired_unused": i.expired_unused,
        "overage_mails": i.overage_mails,
        "voided_not_billed": i.voided,
        "overage_price_eur": str(result.overage_price_eur),
        "amount_due_eur": str(result.amount_due_eur),
        "amount_due_rounded_eur": str(result.amount_due_cents_eur),
    }


def _print(account: str, period: Period, result: BillingReport) -> None:
    click.echo(f"Billing report for {account}, {period.label} (UTC)")
    if result.empty:
        click.echo("no data for this period: nothing booked, sent or expired")
        return
    i = result.inputs
    for block in i.blocks_booked:
        click.echo(
            f"  block booked  {block.booked_at:%Y-%m-%d}  {block.kind:<6} {block.amount:>12,}"
        )
    click.echo(
        f"  blocks booked            {len(i.blocks_booked):>12,} ({result.units_booked:,} mails)"
    )
    click.echo(f"  mails sent from blocks   {i.mails_from_blocks:>12,}")
    click.echo(f"  quota expired unused     {i.expired_unused:>12,}")
    click.echo(
        f"  overage mails            {i.overage_mails:>12,} x EUR {result.overage_price_eur}"
    )
    if i.voided:
        click.echo(f"  never queued, not billed {i.voided:>12,}")
    click.echo(
        f"  amount due               EUR {result.amount_due_eur} "
        f"(EUR {result.amount_due_cents_eur} rounded)"
    )
