"""`txrelay webhook ...` (a shop's event receivers) and `txrelay webhooks run` (the worker)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.provisioning import accounts
from txrelay.provisioning import webhooks as provisioning
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.provisioning.views import table
from txrelay.store import webhook_events
from txrelay.store import webhooks as store

EVENTS_HELP = ", ".join(webhook_events.EVENTS)


@click.group("webhook")
def webhook() -> None:
    """A shop's webhooks: signed HTTP POSTs of its mail's events (delivered, bounced,
    complained, suppressed, quota and block events), sent by `txrelay webhooks run`.

    \b
    Example:
      txrelay webhook add "Acme GmbH" https://shop.example/txrelay-events
      txrelay webhook list "Acme GmbH"
      txrelay webhook test 7
    """


@webhook.command("add")
@click.argument("account")
@click.argument("url")
@click.option(
    "--events",
    metavar="LIST",
    help=f"Events to send, separated by commas (default: all): {EVENTS_HELP}.",
)
@click.option(
    "--allow-private",
    is_flag=True,
    help="Allow a URL whose host is on a private, loopback or link-local address "
    "(a receiver inside your own network). Refused without it.",
)
@json_option
@pass_cli
def add(cli: CliContext, account: str, url: str, events: str | None, allow_private: bool) -> None:
    """Send the account's events to URL (http:// or https://), each POST signed with a
    secret printed now and never again (the shop checks the Txrelay-Signature header with
    it; docs/bounces-and-webhooks.md).

    \b
    Example:
      txrelay webhook add "Acme GmbH" https://shop.example/txrelay-events
      txrelay webhook add "Acme GmbH" https://shop.example/hook --events bounced,complained
    """
    kek = Path(cli.config.database.kek_file)
    keys = cli.keys if kek.exists() else None
    added = provisioning.add_webhook(
        cli.db,
        keys,
        DnsLookup(cli.config.dns),
        cli.clock.now(),
        account,
        url,
        events,
        allow_private,
    )
    data = {**_view(added.webhook), "secret": added.secret, "secret_sealed": added.sealed}

    def human() -> None:
        click.echo(f"Added webhook {added.webhook.id} for {added.webhook.account}: {url}")
        click.echo(f"  events:  {', '.join(added.webhook.events)}")
        click.echo(f"  secret:  {added.secret}")
        click.echo(
            "Give the secret to the shop now: it is not shown again. Its receiver checks "
            "each POST's Txrelay-Signature header with it."
        )
        if not added.sealed:
            click.echo(
                f"Note: {kek} is missing, so the secret is stored in clear in the database.",
                err=True,
            )

    cli.emit(data, human)


@webhook.command("list")
@click.argument("account")
@json_option
@pass_cli
def list_(cli: CliContext, account: str) -> None:
    """The account's webhooks, with how many events each got, waits for and gave up on.

    \b
    Example:
      txrelay webhook list "Acme GmbH"
    """
    found = accounts.get_account(cli.db, account)
    with cli.db.transaction():
        hooks = store.list_webhooks(cli.db, found.id)
        counts = store.delivery_counts(cli.db, [hook.id for hook in hooks])
    empty = {"delivered": 0, "pending": 0, "failed": 0}
    views = [{**_view(hook), **counts.get(hook.id, empty)} for hook in hooks]

    def human() -> None:
        if not views:
            click.echo(f"{found.name} has no webhooks; add one with 'txrelay webhook add'")
            return
        rows = [
            (v["id"], v["url"], ",".join(v["events"]), v["delivered"], v["pending"], v["failed"])
            for v in views
        ]
        click.echo(table(("ID", "URL", "EVENTS", "DELIVERED", "PENDING", "FAILED"), rows))

    cli.emit(views, human)


@webhook.command("remove")
@click.argument("webhook_id", metavar="ID", type=int)
@json_option
@pass_cli
def remove(cli: CliContext, webhook_id: int) -> None:
    """Stop sending to the webhook; its events not delivered yet are given up (marked
    failed). Its deliveries stay visible.

    \b
    Example:
      txrelay webhook remove 7
    """
    given_up = provisioning.remove_webhook(cli.db, webhook_id, cli.clock.now())
    data = {"id": webhook_id, "removed": True, "events_given_up": given_up}
    cli.emit(
        data,
        lambda: click.echo(
            f"Removed webhook {webhook_id}; {given_up} events not delivered yet were given up."
        ),
    )


@webhook.command("test")
@click.argument("webhook_id", metavar="ID", type=int)
@json_option
@pass_cli
def test(cli: CliContext, webhook_id: int) -> None:
    """Queue a `test` event for the webhook: the worker sends it like any other event
    (signed, retried); see the result with `txrelay webhook deliveries ID`.

    \b
    Example:
      txrelay webhook test 7
    """
    event_id = provisioning.send_test_event(cli.db, webhook_id, cli.clock.now())
    data = {"id": webhook_id, "event": store.TEST_EVENT, "event_id": str(event_id)}
    cli.emit(
        data,
        lambda: click.echo(
            f"Queued test event {event_id} for webhook {webhook_id}; "
            f"'txrelay webhook deliveries {webhook_id}' shows when it arrived."
        ),
    )


@webhook.command("deliveries")
@click.argument("webhook_id", metavar="ID", type=int)
@click.option("--failed", "failed_only", is_flag=True, help="Only the events given up.")
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=50,
    show_default=True,
    help="Newest events shown.",
)
@json_option
@pass_cli
def deliveries(cli: CliContext, webhook_id: int, failed_only: bool, limit: int) -> None:
    """The webhook's events, newest first: delivered, pending (with the next attempt) or
    failed (given up after [webhooks] give_up_after_seconds), with the receiver's last
    status or error.

    \b
    Example:
      txrelay webhook deliveries 7 --failed
    """
    with cli.db.transaction():
        store.get_webhook(cli.db, webhook_id)
        rows = store.deliveries(cli.db, webhook_id, failed_only, limit)

    def human() -> None:
        if not rows:
            click.echo(f"webhook {webhook_id} has no {'failed ' if failed_only else ''}events")
            return
        click.echo(
            table(
                ("CREATED", "EVENT", "STATE", "ATTEMPTS", "LAST", "EVENT ID"),
                [
                    (
                        f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
                        r["event"],
                        r["state"],
                        r["attempts"],
                        r["last_error"] or (r["last_status"] or ""),
                        r["event_id"],
                    )
                    for r in rows
                ],
            )
        )

    cli.emit(rows, human)


def _view(hook: store.Webhook) -> dict[str, Any]:
    """A webhook as reports show it: never its secret."""
    return {
        "id": hook.id,
        "account": hook.account,
        "url": hook.url,
        "events": hook.events,
        "allow_private": hook.allow_private,
        "created_at": hook.created_at,
    }


@click.group("webhooks")
def webhooks() -> None:
    """The webhook worker, which delivers the events of every account's webhooks.

    \b
    Example:
      txrelay webhooks run
    """


@webhooks.command("run")
@click.option("--once", is_flag=True, help="Deliver what is due now, wait for it, exit.")
@json_option
@pass_cli
def run(cli: CliContext, once: bool) -> None:
    """Deliver the webhooks' events from the outbox (the daemon; systemd:
    txrelay-webhooks.service). Run it on one node or several: they share the outbox.
    Serves /metrics and /healthz on [metrics] webhooks_listen.

    \b
    Example:
      txrelay webhooks run
      txrelay webhooks run --once
    """
    from txrelay.webhooks.worker import WebhookWorker

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    worker = WebhookWorker(cli.config, cli.clock)
    if once:
        summary = worker.once().as_dict()
        cli.emit(
            summary,
            lambda: click.echo(
                f"{summary['delivered']} delivered, {summary['retried']} to retry, "
                f"{summary['failed']} given up, {summary['refused']} refused"
            ),
        )
        return
    worker.install_signal_handlers()
    worker.run()
