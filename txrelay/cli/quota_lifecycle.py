"""`txrelay quota plan|tick|reconcile`: renewing plans, the expiry tick, Redis reconcile."""

from __future__ import annotations

from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.cli.quota import MailCount, quota
from txrelay.store import database, ledger, lifecycle, reporting
from txrelay.tracker.daemon import RunSummary
from txrelay.tracker.tick import TickResult, run_tick


@quota.command("plan")
@click.argument("account")
@click.option("--block", "block", type=MailCount(), help="Mails booked every 30 days.")
@click.option("--none", "no_plan", is_flag=True, help="Stop the plan (blocks booked stay).")
@json_option
@pass_cli
def plan(cli: CliContext, account: str, block: int | None, no_plan: bool) -> None:
    """Book a block of N mails for ACCOUNT every [quota] block_validity_days, the first one
    now; or stop the plan with --none.

    \b
    Example:
      txrelay quota plan "Acme GmbH" --block 25000
      txrelay quota plan "Acme GmbH" --none
    """
    if (block is None) == (not no_plan):
        raise click.UsageError("give either --block N or --none")
    now = cli.clock.now()
    config = cli.config
    conn = database.connect(config.database, autocommit=True)
    try:
        with conn.transaction():
            account_id = reporting.require_account(conn, account)
            if no_plan:
                previous = lifecycle.clear_plan(conn, account_id)
                renewals: list[lifecycle.Renewal] = []
            else:
                assert block is not None
                lifecycle.set_plan(conn, account_id, block, config.quota.min_block, now)
                renewals = lifecycle.renew_plans(conn, now, _validity(cli), accounts=[account_id])
            current = lifecycle.get_plan(conn, account_id)
        lifecycle.apply_credits(
            cli.redis, config.redis.key_prefix, [(r.account_id, r.amount) for r in renewals]
        )
    finally:
        conn.close()
    data: dict[str, Any] = {
        "account": account,
        "plan": None
        if current is None
        else {
            "block": current["block_amount"],
            "next_renewal_at": current["next_renewal_at"].isoformat(),
        },
        "booked_now": [
            {"block_id": r.block_id, "amount": r.amount, "expires_at": r.expires_at.isoformat()}
            for r in renewals
        ],
    }
    if no_plan:
        data["stopped"] = previous is not None
    cli.emit(data, lambda: _print_plan(data))


def _validity(cli: CliContext) -> Any:
    import datetime as dt

    return dt.timedelta(days=cli.config.quota.block_validity_days)


def _print_plan(data: dict[str, Any]) -> None:
    if data["plan"] is None:
        click.echo(f"{data['account']}: no plan" + (" (stopped)" if data.get("stopped") else ""))
        return
    for booked in data["booked_now"]:
        click.echo(
            f"booked {booked['amount']:,} mails (block {booked['block_id']}), valid "
            f"until {booked['expires_at']}"
        )
    click.echo(
        f"{data['account']}: plan of {data['plan']['block']:,} mails, next renewal "
        f"{data['plan']['next_renewal_at']}"
    )


@quota.command("tick")
@click.argument("account", required=False)
@json_option
@pass_cli
def tick(cli: CliContext, account: str | None) -> None:
    """Bill recorded mail still pending to quota blocks, renew due plans, expire blocks older
    than their validity, send low-quota reminders (for ACCOUNT only, if given); without
    ACCOUNT also look pending domains' DKIM records up ([dkim] require_published). The
    tracker does this every [tracker] tick_interval_seconds; a timer may call this. Running
    it twice changes nothing the second time.

    \b
    Example:
      txrelay quota tick
      txrelay quota tick "Acme GmbH" --json
    """
    from txrelay.notify import SmtpMailer

    conn = database.connect(cli.config.database, autocommit=True)
    try:
        accounts = None if account is None else [reporting.require_account(conn, account)]
        ledger.settle_all(conn, accounts)  # e.g. left pending by a milter that was killed
        result = run_tick(
            conn, cli.redis, cli.config, cli.clock.now(), SmtpMailer(cli.config.notify), accounts
        )
    finally:
        conn.close()
    cli.emit(result.as_dict(), lambda: _print_tick(result))


def _print_tick(result: TickResult) -> None:
    summary = RunSummary(ticks=[result]).as_dict()["ticks"][0]
    click.echo(
        f"{len(summary['renewals'])} plan renewals, {len(summary['expired'])} blocks "
        f"expired ({sum(e['expired_unused'] for e in summary['expired']):,} mails "
        f"unused), {len(result.reminders_sent)} reminders sent, "
        f"{len(result.rearmed)} reminders re-armed"
    )
    for failed in result.reminder_failures:
        click.echo(f"reminder for {failed} could not be sent; the next tick retries")


@quota.command("reconcile")
@click.argument("account", required=False)
@json_option
@pass_cli
def reconcile(cli: CliContext, account: str | None) -> None:
    """Rebuild the live Redis balances from PostgreSQL and report every difference.
    Outstanding reservations (the milters' held units) are not part of a balance.

    \b
    Example:
      txrelay quota reconcile
      txrelay quota reconcile "Acme GmbH"
    """
    checks = lifecycle.reconcile(
        cli.db, cli.redis, cli.config.redis.key_prefix, cli.clock.now(), account
    )
    data = [
        {
            "account": c.account,
            "postgres": c.postgres,
            "redis_before": c.redis_before,
            "difference": c.difference,
            "repaired": c.difference != 0,
        }
        for c in checks
    ]
    cli.emit(data, lambda: _print_reconcile(data))


def _print_reconcile(data: list[dict[str, Any]]) -> None:
    differing = [d for d in data if d["difference"]]
    for row in data:
        redis_text = "not cached" if row["redis_before"] is None else f"{row['redis_before']:,}"
        mark = f"  FIXED (was off by {row['difference']:+,})" if row["difference"] else ""
        click.echo(f"{row['account']}: postgres {row['postgres']:,}, redis {redis_text}{mark}")
    click.echo(f"{len(differing)} of {len(data)} balances differed")
