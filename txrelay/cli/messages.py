"""`txrelay messages search|show`: what became of matching messages and their recipients."""

from __future__ import annotations

import sys
from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.cli.message_story import Section, tell
from txrelay.cli.stats import When, resolve
from txrelay.errors import NotFound
from txrelay.provisioning.views import short_time, timestamp
from txrelay.store import message_story, reporting
from txrelay.store.sandbox import SandboxRecord, find_sandbox_message

# 'sandboxed': a recipient of a sandbox connection's message, captured and never delivered.
STATES = ("accepted", "queued", "delivered", "deferred", "bounced", "voided", "sandboxed")


@click.group("messages")
def messages() -> None:
    """Look up accepted messages and their recipients in the ledger.

    \b
    Example:
      txrelay messages search --to customer@example.com --since 7d
      txrelay messages show 4QxYz1AbC2
    """


@messages.command("search")
@click.option("--to", "to", metavar="ADDR", help="Recipient address (case-insensitive).")
@click.option("--message-id", metavar="ID", help="Message-ID header, with or without <>.")
@click.option("--account", help="Only this account.")
@click.option("--connection", help="Only connections with this name.")
@click.option("--queue-id", metavar="ID", help="Postfix queue id, as in the mail log.")
@click.option(
    "--from",
    "sender",
    metavar="ADDR",
    help="Envelope sender or From: address (case-insensitive); @domain for a whole domain.",
)
@click.option("--state", type=click.Choice(STATES), help="Only recipients in this state.")
@click.option("--since", type=When(), help="Accepted at or after (2026-03-01, 24h, 7d).")
@click.option("--until", type=When(), help="Accepted before.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
@pass_cli
def search(
    cli: CliContext,
    to: str | None,
    message_id: str | None,
    account: str | None,
    connection: str | None,
    queue_id: str | None,
    sender: str | None,
    state: str | None,
    since: Any,
    until: Any,
    limit: int,
) -> None:
    """Each matching recipient: state (queued, delivered, deferred, bounced, voided, or
    sandboxed for a sandbox connection's mail, kept by the relay and never delivered), DSN
    and the last event, the kind of its bounce (hard, soft, block; learnt from Postfix's
    log or a DSN) and a spam complaint, newest first.

    \b
    Example:
      txrelay messages search --to customer@example.com --since 7d
      txrelay messages search --message-id '<order-4711@shop.example>' --json
      txrelay messages search --queue-id 4QxYz1AbC2
      txrelay messages search --from @shop.example --state bounced --since 24h
    """
    if not any((to, message_id, account, connection, queue_id, sender, state, since)):
        raise click.UsageError(
            "say what to look for: --to, --message-id, --queue-id, --from, --state, "
            "--account, --connection or --since"
        )
    now = cli.clock.now()
    if account is not None:
        reporting.require_account(cli.db, account)
    rows = reporting.search_recipients(
        cli.db,
        to=to,
        message_id=message_id,
        connection=connection,
        account=account,
        since=resolve(since, now),
        until=resolve(until, now),
        limit=limit,
        queue_id=queue_id,
        sender=sender,
        state=state,
    )
    cli.db.commit()
    data = [
        {
            **row,
            **{
                k: row[k].isoformat()
                for k in ("accepted_at", "last_event_at", "complained_at")
                if row[k] is not None
            },
        }
        for row in rows
    ]
    cli.emit(data, lambda: _print(rows))


def _print(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no matching recipients")
        return
    for row in rows:
        click.echo(
            f"{row['accepted_at']:%Y-%m-%d %H:%M:%S} {row['queue_id']} "
            f"{row['recipient']} {row['state']}"
            + (f" dsn={row['dsn']}" if row["dsn"] else "")
            + f" [{row['account']} / {row['connection']}]"
        )
        if row["last_event"]:
            click.echo(f"    {row['last_event']}")
        if row["bounce_kind"]:
            click.echo(f"    {row['bounce_kind']} bounce (from {row['bounce_source']})")
        if row["complained_at"]:
            click.echo(
                f"    complaint ({row['complaint_type'] or 'abuse'}) "
                f"{row['complained_at']:%Y-%m-%d %H:%M:%S}"
            )


@messages.command("show")
@click.argument("ref", metavar="ID")
@click.option(
    "--raw",
    is_flag=True,
    help="Print a sandbox connection's captured message as the receiver would have got it "
    "(headers with the relay's own and its DKIM-Signature, then the body); live mail is "
    "not kept by the relay.",
)
@json_option
@pass_cli
def show(cli: CliContext, ref: str, raw: bool) -> None:
    """The story of one message: what it is, the milter's decision, Postfix's queue, and
    each recipient's state, DSN and last event. ID is a Postfix queue id (from the mail
    log), a Message-ID (with or without <>) or txrelay's transaction id; when several
    messages match (queue ids are reused), each is shown, newest first.

    A sandbox connection's message (captured, not delivered) is found by its Message-ID
    or transaction id; --raw prints it byte for byte, e.g. to check its DKIM signature.

    \b
    Example:
      txrelay messages show 4QxYz1AbC2
      txrelay messages show '<order-4711@shop.example>' --json
      txrelay messages show '<test-1@shop.example>' --raw > captured.eml
    """
    captured = find_sandbox_message(cli.db, ref)
    if captured is not None or raw:
        cli.db.rollback()  # a report: nothing was written
        _show_sandboxed(cli, ref, captured, raw=raw)
        return
    found = message_story.find_messages(cli.db, ref)
    if not found:
        cli.db.rollback()
        raise NotFound(
            f"no message with queue id, Message-ID or transaction id {ref!r}; try "
            "'txrelay messages search'"
        )
    stories = [tell(cli.db, message) for message in found]
    cli.db.rollback()  # a report: nothing was written, end the read transaction
    data = [{section.key: section.data for section in story} for story in stories]
    cli.emit(data, lambda: _print_stories(stories))


def _print_stories(stories: list[list[Section]]) -> None:
    for number, story in enumerate(stories):
        if number:
            click.echo("")
        for section in story:
            click.echo(f"{section.title}:")
            for line in section.lines:
                click.echo(f"  {line}")


def _show_sandboxed(
    cli: CliContext, ref: str, captured: SandboxRecord | None, *, raw: bool
) -> None:
    if captured is None:
        raise NotFound(
            f"no sandbox message with Message-ID or transaction id {ref!r}: --raw prints "
            "only mail of sandbox connections (live mail is delivered, not kept; sandbox "
            "mail is kept [sandbox] retention_days); try 'txrelay messages search --state "
            "sandboxed'"
        )
    if raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(captured.raw)  # bytes as captured: CRLF, 8-bit as sent
        sys.stdout.buffer.flush()
        return
    data = {
        "message": {
            "queue_id": captured.queue_id,
            "txn_id": captured.txn_id,
            "message_id": captured.message_id,
            "account": captured.account,
            "connection": captured.connection,
            "envelope_sender": captured.envelope_sender,
            "header_from": captured.header_from,
            "size": captured.size,
        },
        "decision": {
            "verdict": "sandboxed",
            "captured_at": timestamp(captured.captured_at),
            "recipients": len(captured.recipients),
        },
        "recipients": [
            {"recipient": recipient, "state": "sandboxed"} for recipient in captured.recipients
        ],
    }
    story = [
        Section(
            "message",
            "Message",
            data["message"],
            [
                f"queue id {captured.queue_id or '-'}, txn {captured.txn_id}",
                f"Message-ID {captured.message_id or '-'}",
                f"account {captured.account!r}, sandbox connection {captured.connection!r}",
                f"from {captured.envelope_sender} (From: {captured.header_from}), "
                f"{captured.size:,} bytes as captured",
            ],
        ),
        Section(
            "decision",
            "Milter decision",
            data["decision"],
            [
                f"{short_time(captured.captured_at)} sandboxed by the milter: sender allowed, "
                f"List-Help added, DKIM-signed, captured and not delivered, not billed "
                f"('txrelay messages show {captured.txn_id} --raw' prints it)"
            ],
        ),
        Section(
            "recipients",
            "Recipients",
            data["recipients"],
            [f"{recipient}: sandboxed" for recipient in captured.recipients],
        ),
    ]
    cli.emit([data], lambda: _print_stories([story]))
