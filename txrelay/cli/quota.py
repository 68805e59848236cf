"""`txrelay quota`: book quota blocks and show what an account has left."""

from __future__ import annotations

from typing import Any

import click
import redis

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.provisioning import quota as quota_ops
from txrelay.provisioning.accounts import get_account
from txrelay.provisioning.views import block_view, quota_view, short_time, table
from txrelay.store.balance import credit_balance
from txrelay.store.keys import AccountKeys
from txrelay.store.ledger import settle


class MailCount(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A whole number of mails; 25000, 25,000 and 25_000 are all accepted."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).replace(",", "").replace("_", "").strip()
        if not text.isdigit():
            self.fail(f"{value!r} is not a number of mails (example: 25000)", param, ctx)
        return int(text)


@click.group()
def quota() -> None:
    """Quota: mails an account may send. New accounts get a demo quota; more is booked in
    blocks (minimum 25,000) that expire 30 days after booking.

    \b
    Example:
      txrelay quota book "Acme GmbH" --amount 25000
      txrelay quota show "Acme GmbH"
    """


@quota.command("book")
@click.argument("account")
@click.option(
    "--amount",
    required=True,
    type=MailCount(),
    help="Mails in the block (at least [quota] min_block, 25,000 by default).",
)
@json_option
@pass_cli
def book(cli: CliContext, account: str, amount: int) -> None:
    """Book a block of AMOUNT mails for ACCOUNT, valid for [quota] block_validity_days.

    Booking makes a demo account a paid one: when its quota runs out, mail goes on and
    is billed as overage instead of being refused.

    \b
    Example:
      txrelay quota book "Acme GmbH" --amount 50000
    """
    now = cli.clock.now()
    settle_account(cli, account)  # mail accepted before the booking is billed without it
    owner, block = quota_ops.book_block(cli.db, cli.config.quota, now, account, amount)
    warning = _credit_live_balance(cli, owner.id, block.amount)
    report = quota_ops.quota_report(cli.db, account, now)
    data = {
        "account": owner.name,
        "block": block_view(block),
        "quota_remaining": report.remaining,
        "paid": report.paid,
    }
    cli.emit(
        data,
        lambda: click.echo(
            f"Booked {block.amount:,} mails for account {owner.name!r}, valid until "
            f"{short_time(block.expires_at)} UTC. Remaining quota: {report.remaining:,}."
        ),
    )
    if warning:
        click.echo(warning, err=True)


def settle_account(cli: CliContext, account: str) -> None:
    """Bill ACCOUNT's pending ledger rows to its blocks before a booking changes them (the
    milters settle within a second anyway). Reports never call this: they read."""
    settle(cli.db, get_account(cli.db, account).id)
    cli.db.commit()


def _credit_live_balance(cli: CliContext, account_id: int, units: int) -> str | None:
    """Tell the milters' live balance; the booking itself is already committed."""
    key = AccountKeys(cli.config.redis.key_prefix, account_id).balance
    try:
        credit_balance(cli.redis, cli.config.redis.key_prefix, account_id, units)
    except redis.RedisError as exc:
        return (
            f"txrelay: warning: the block is booked, but Redis did not take the new "
            f"balance ({exc}); the relay may refuse mail for this account until its "
            f"balance is reloaded: once Redis is back, delete the key {key} so the "
            "milter reloads it from PostgreSQL"
        )
    return None


@quota.command("show")
@click.argument("account")
@json_option
@pass_cli
def show(cli: CliContext, account: str) -> None:
    """Show ACCOUNT's quota blocks (kind, amount, used, remaining, dates), the total left,
    and when it runs out at the rate of the last 24 hours or 7 days (the faster one; the
    forecast of the low-quota reminder mail).

    \b
    Example:
      txrelay quota show "Acme GmbH" --json
    """
    report = quota_ops.quota_report(cli.db, account, cli.clock.now())

    def human() -> None:
        click.echo(
            f"Account {report.account.name!r}: {'paid' if report.paid else 'demo'}, "
            f"{report.remaining:,} mails remaining."
        )
        rows = [
            (
                b.id,
                b.kind,
                f"{b.amount:,}",
                f"{b.used:,}",
                f"{b.remaining:,}",
                short_time(b.booked_at),
                short_time(b.expires_at) if b.expires_at else "never",
                "" if b.live else "expired",
            )
            for b in report.blocks
        ]
        click.echo(
            table(("BLOCK", "KIND", "AMOUNT", "USED", "REMAINING", "BOOKED", "EXPIRES", ""), rows)
        )
        usage = report.forecast.usage
        sent = (
            f"Sent in the last 24 hours: {usage.last_day:,}; in the last 7 days: "
            f"{usage.last_week:,}. "
            if usage.last_week
            else ""
        )
        click.echo(sent + report.forecast.sentence())

    cli.emit(quota_view(report), human)
