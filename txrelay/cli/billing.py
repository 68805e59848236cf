"""`txrelay billing report|export`: what accounts booked, used, let expire and owe for a month."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import click

from txrelay.atomic_file import write_atomically
from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.errors import InvalidInput
from txrelay.policy.billing import BillingReport, Period, bill, parse_period
from txrelay.provisioning.views import table
from txrelay.store import reporting


@click.group("billing")
def billing() -> None:
    """Billing reports (money in exact decimals, EUR): one account's month ('report', also as
    an HTML page for the account owner with --html) or every account's month at once
    ('export', for invoicing).

    \b
    Example:
      txrelay billing report "Acme GmbH" --period 2026-03 --html acme-2026-03.html
      txrelay billing export --period 2026-03 --csv > invoices-2026-03.csv
    """


@billing.command("report")
@click.argument("account")
@click.option("--period", required=True, metavar="YYYY-MM", help="The calendar month (UTC).")
@click.option(
    "--html",
    "html_file",
    metavar="FILE",
    help="Also write the report as one self-contained HTML page for the account owner (daily "
    "chart, quota blocks, overage and its price) to FILE, replacing FILE if it exists; '-' "
    "writes the page to standard output instead of the text report.",
)
@json_option
@pass_cli
def report(cli: CliContext, account: str, period: str, html_file: str | None) -> None:
    """Blocks booked in the month, mails sent from blocks, quota expired unused, and the
    overage mails x [quota] overage_price_eur = amount due. Bounced recipients are billed
    like delivered ones; recipients Postfix never queued (voided) are not billed.

    --html FILE writes the same figures as an HTML page that needs nothing else (no
    script, nothing loaded from elsewhere): open it in any browser, mail it on, or make a
    PDF of it:

    \b
      chromium --headless --no-pdf-header-footer --print-to-pdf=REPORT.pdf REPORT.html

    \b
    Example:
      txrelay billing report "Acme GmbH" --period 2026-03
      txrelay billing report "Acme GmbH" --period 2026-03 --html acme-2026-03.html
    """
    if html_file == "-" and cli.as_json:
        raise InvalidInput("--html - and --json both write to standard output: name a file")
    month = parse_period(period)
    account_id = reporting.require_account(cli.db, account)
    inputs = reporting.billing_inputs(cli.db, account_id, month)
    cap = reporting.overage_cap(cli.db, account_id)
    usage = None
    if html_file is not None:
        from txrelay.web.report import monthly_usage

        usage = monthly_usage(cli.db, account, account_id, month, cli.clock.now())
    cli.db.rollback()  # a report: nothing was written, end the read transaction
    result = bill(inputs, cli.config.quota.overage_price_eur)
    data = report_view(account, month, result, cap)
    if html_file is not None and usage is not None:
        from txrelay.web.report import render

        page = render(data, usage)
        if html_file == "-":
            click.echo(page, nl=False)
            return
        write_replacing(Path(html_file), page)
    cli.emit(data, lambda: _print(account, month, result, cap))


def write_replacing(path: Path, text: str) -> None:
    """Replace `path` whole (a reader never sees half a page), readable by its owner only: the
    page holds a customer's figures."""
    try:
        write_atomically(path, text, mode=0o600)
    except OSError as exc:
        raise InvalidInput(f"cannot write --html {path}: {exc.strerror}") from exc


def report_view(
    account: str, period: Period, result: BillingReport, cap: int | None = None
) -> dict[str, Any]:
    """JSON form: money as strings, so no reader turns it into a float."""
    i = result.inputs
    return {
        "account": account,
        "overage_cap": cap,
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


def _print(account: str, period: Period, result: BillingReport, cap: int | None) -> None:
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
    if cap is not None:
        reached = " (reached: further mail was refused)" if i.overage_mails >= cap else ""
        click.echo(f"  overage cap (per month)  {cap:>12,}{reached}")
    if i.voided:
        click.echo(f"  never queued, not billed {i.voided:>12,}")
    click.echo(
        f"  amount due               EUR {result.amount_due_eur} "
        f"(EUR {result.amount_due_cents_eur} rounded)"
    )


EXPORT_COLUMNS = (
    "period",
    "account_id",
    "account",
    "status",
    "blocks_booked",
    "units_booked",
    "mails_from_blocks",
    "expired_unused",
    "overage_mails",
    "overage_cap",
    "voided_not_billed",
    "overage_price_eur",
    "amount_due_eur",
    "amount_due_rounded_eur",
)


@billing.command("export")
@click.option("--period", required=True, metavar="YYYY-MM", help="The calendar month (UTC).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line, for invoicing.")
@json_option
@pass_cli
def export(cli: CliContext, period: str, as_csv: bool) -> None:
    """One billing line per account for the month, every account at once: the figures of
    'billing report' (money in exact decimals, EUR). Lists every live account (amount 0
    included), and deleted or disabled ones that had mail or blocks in the month.

    \b
    Example:
      txrelay billing export --period 2026-03 --csv > invoices-2026-03.csv
    """
    month = parse_period(period)
    price = cli.config.quota.overage_price_eur
    lines = []
    for account in reporting.billed_accounts(cli.db, month):
        result = bill(reporting.billing_inputs(cli.db, account.id, month), price)
        if account.status == "deleted" and result.empty:
            continue
        lines.append(_export_line(account, month, result))
    cli.db.rollback()  # a report: nothing was written, end the read transaction
    if as_csv and not cli.as_json:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
        click.echo(out.getvalue(), nl=False)
        return
    cli.emit(lines, lambda: _print_export(month, lines))


def _export_line(
    account: reporting.BilledAccount, period: Period, result: BillingReport
) -> dict[str, Any]:
    view = report_view(account.name, period, result, account.overage_cap)
    return {
        "period": period.label,
        "account_id": account.id,
        "account": account.name,
        "status": account.status,
        "blocks_booked": len(view["blocks_booked"]),
        **{
            key: view[key]
            for key in EXPORT_COLUMNS
            if key not in ("period", "account_id", "account", "status", "blocks_booked")
        },
    }


def _print_export(period: Period, lines: list[dict[str, Any]]) -> None:
    click.echo(f"Billing export for {period.label} (UTC), EUR")
    rows = [
        (
            line["account"],
            line["status"],
            f"{line['mails_from_blocks']:,}",
            f"{line['overage_mails']:,}",
            "-" if line["overage_cap"] is None else f"{line['overage_cap']:,}",
            line["amount_due_eur"],
        )
        for line in lines
    ]
    click.echo(table(("ACCOUNT", "STATUS", "FROM BLOCKS", "OVERAGE", "CAP", "AMOUNT DUE"), rows))
