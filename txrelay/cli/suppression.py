"""`txrelay suppression`: the recipients an account's mail no longer goes to."""

from __future__ import annotations

from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.policy.suppression import REASON_WORDS
from txrelay.provisioning import suppressions as ops
from txrelay.provisioning.suppressions import SuppressionDetail
from txrelay.provisioning.views import short_time, table
from txrelay.store.suppressions import REASONS, Suppression


@click.group()
def suppression() -> None:
    """Suppression lists: per account, the recipients the relay refuses at RCPT with
    550 5.1.1 (not billed). Hard bounces and spam complaints add a recipient by
    themselves, repeated soft bounces too ([suppression] settings); an admin may add and
    remove addresses.

    \b
    Example:
      txrelay suppression list "Acme GmbH" --reason hard_bounce
      txrelay suppression show "Acme GmbH" customer@example.com
      txrelay suppression remove "Acme GmbH" customer@example.com
    """


def suppression_view(row: Suppression) -> dict[str, Any]:
    return {
        "address": row.address,
        "reason": row.reason,
        "dsn": row.dsn,
        "detail": row.detail,
        "since": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "removed_at": row.removed_at.isoformat() if row.removed_at else None,
        "source_ledger_id": row.source_ledger_id,
    }


@suppression.command("list")
@click.argument("account")
@click.option(
    "--reason",
    type=click.Choice(REASONS),
    help="Only this reason: hard_bounce, soft_bounces, complaint or manual.",
)
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True)
@json_option
@pass_cli
def list_command(cli: CliContext, account: str, reason: str | None, limit: int) -> None:
    """The addresses suppressed for ACCOUNT now (not removed, not expired), newest first.

    \b
    Example:
      txrelay suppression list "Acme GmbH"
      txrelay suppression list "Acme GmbH" --reason complaint --json
    """
    rows = ops.list_suppressions(cli.db, account, cli.clock.now(), reason=reason, limit=limit)
    data = [suppression_view(row) for row in rows]
    cli.emit(
        data,
        lambda: click.echo(
            table(
                ("ADDRESS", "REASON", "DSN", "SINCE", "EXPIRES"),
                [
                    (
                        r.address,
                        r.reason,
                        r.dsn or "-",
                        short_time(r.created_at),
                        short_time(r.expires_at) if r.expires_at else "never",
                    )
                    for r in rows
                ],
            )
        ),
    )


@suppression.command("add")
@click.argument("account")
@click.argument("address")
@click.option(
    "--reason",
    type=click.Choice(REASONS),
    default="manual",
    show_default=True,
    help="Why; an admin's addition is 'manual' (only another manual one replaces it).",
)
@click.option("--note", default="", help="Why, in your words (shown by 'suppression show').")
@click.option(
    "--expires",
    "expires_days",
    type=click.IntRange(1, 36500),
    metavar="DAYS",
    help="Lift it by itself after DAYS days (default: until removed).",
)
@json_option
@pass_cli
def add(
    cli: CliContext,
    account: str,
    address: str,
    reason: str,
    note: str,
    expires_days: int | None,
) -> None:
    """Suppress ADDRESS for ACCOUNT: every relay node refuses it at RCPT within its next
    policy refresh ([milter] policy_refresh_seconds).

    \b
    Example:
      txrelay suppression add "Acme GmbH" customer@example.com --note "asked us by phone"
      txrelay suppression add "Acme GmbH" old@example.com --expires 30
    """
    row, written = ops.add_suppression(
        cli.db,
        account,
        address,
        cli.clock.now(),
        reason=reason,
        note=note,
        expires_days=expires_days,
    )
    data = suppression_view(row) | {"account": account, "changed": written}

    def human() -> None:
        if written:
            until = f" until {short_time(row.expires_at)}" if row.expires_at else ""
            click.echo(f"Suppressed {row.address} for {account} ({row.reason}){until}.")
        else:
            click.echo(
                f"{row.address} is already suppressed for {account} ({row.reason}, since "
                f"{short_time(row.created_at)}); a manual suppression is only replaced "
                "by another manual one."
            )

    cli.emit(data, human)


@suppression.command("remove")
@click.argument("account")
@click.argument("address")
@json_option
@pass_cli
def remove(cli: CliContext, account: str, address: str) -> None:
    """Lift the suppression of ADDRESS for ACCOUNT: mail to it is accepted again (every
    node within its next refresh). A later hard bounce or complaint suppresses it again.

    \b
    Example:
      txrelay suppression remove "Acme GmbH" customer@example.com
    """
    row = ops.remove_suppression(cli.db, account, address, cli.clock.now())
    data = suppression_view(row) | {"account": account}
    cli.emit(
        data,
        lambda: click.echo(
            f"Removed {row.address} from {account}'s suppression list (was {row.reason} "
            f"since {short_time(row.created_at)})."
        ),
    )


@suppression.command("show")
@click.argument("account")
@click.argument("address")
@json_option
@pass_cli
def show(cli: CliContext, account: str, address: str) -> None:
    """Why ADDRESS is (or was) suppressed for ACCOUNT: reason, the message that bounced or
    was complained about, the DSN and its text, since when, until when.

    \b
    Example:
      txrelay suppression show "Acme GmbH" customer@example.com
    """
    detail = ops.show_suppression(cli.db, account, address, cli.clock.now())
    cli.emit(show_view(detail), lambda: _print_detail(detail))


def show_view(detail: SuppressionDetail) -> dict[str, Any]:
    source = detail.source
    return (
        suppression_view(detail.suppression)
        | {"account": detail.account, "status": detail.status}
        | {
            "source_message": None
            if source is None
            else {
                "txn_id": str(source["txn_id"]),
                "queue_id": source["queue_id"],
                "message_id": source["message_id"],
                "connection": source["connection"],
                "accepted_at": source["accepted_at"].isoformat(),
                "state": source["state"],
                "last_event": source["last_event"],
            }
        }
    )


def _print_detail(detail: SuppressionDetail) -> None:
    row = detail.suppression
    lines = [
        ("Address", row.address),
        ("Account", detail.account),
        ("Status", detail.status),
        ("Reason", f"{row.reason} ({REASON_WORDS.get(row.reason, row.reason)})"),
        ("DSN", row.dsn or "-"),
        ("Detail", row.detail or "-"),
        ("Since", short_time(row.created_at)),
        ("Expires", short_time(row.expires_at) if row.expires_at else "never"),
    ]
    if row.removed_at is not None:
        lines.append(("Removed", short_time(row.removed_at)))
    source = detail.source
    if source is not None:
        lines.append(
            (
                "Message",
                f"{source['message_id'] or '-'} (queue id {source['queue_id']}, "
                f"connection {source['connection']}, accepted "
                f"{short_time(source['accepted_at'])})",
            )
        )
        if source["last_event"]:
            lines.append(("Last event", source["last_event"]))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        click.echo(f"{label + ':':<{width + 1}} {value}")
