"""`txrelay web`: the read-only dashboard, and the account-scoped links to it."""

from __future__ import annotations

import datetime as dt
import logging
import re
import signal
import stat
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.config import Config
from txrelay.errors import ConfigError, InvalidInput, ServiceUnavailable
from txrelay.policy.web_access import MIN_ADMIN_TOKEN, account_link_url
from txrelay.provisioning.integrity import transaction
from txrelay.provisioning.views import table
from txrelay.store import database
from txrelay.store import web_links as store
from txrelay.store.reporting import require_account

_SPAN = re.compile(r"^(?P<n>\d{1,4})(?P<unit>[hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}
LONGEST_LINK = dt.timedelta(days=366)
log = logging.getLogger("txrelay.web")


@click.group("web", invoke_without_command=True)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where to serve the dashboard (default: [web] listen, 127.0.0.1:8480).",
)
@pass_cli
@click.pass_context
def web(ctx: click.Context, cli: CliContext, listen: str | None) -> None:
    """Serve the read-only web dashboard (GET pages only; nothing can be changed there).

    The admin signs in with the token in [web] admin_token_file: open
    http://HOST:PORT/?token=TOKEN once (a cookie keeps the sign-in) or send
    "Authorization: Bearer TOKEN". An account owner gets a link that shows their account
    only: see 'txrelay web link'. Put a TLS reverse proxy in front before letting others
    reach it. Exits 5 when PostgreSQL cannot be reached at start-up.

    \b
    Example:
      txrelay web
      txrelay web --listen 127.0.0.1:9480
    """
    if ctx.invoked_subcommand is not None:
        return
    serve(cli, listen or cli.config.web.listen)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"--listen {listen!r} is not HOST:PORT such as 127.0.0.1:8480")
    return host.strip("[]"), int(port)


def read_admin_token(config: Config) -> str:
    path = Path(config.web.admin_token_file)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read [web] admin_token_file {path}: {exc.strerror}; create it with "
            f"'umask 077; openssl rand -hex 32 > {path}' (owned by the txrelay user)"
        ) from exc
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:  # like ssh with a key: a token every local user can read guards nothing
        raise ConfigError(
            f"[web] admin_token_file {path} is readable by every user (mode {mode:04o}): "
            f"'chmod 600 {path}' (owned by the txrelay user), then start again"
        )
    if len(token) < MIN_ADMIN_TOKEN or any(c.isspace() for c in token):
        raise ConfigError(
            f"[web] admin_token_file {path} must hold one token of at least {MIN_ADMIN_TOKEN} "
            "characters without spaces (e.g. 'openssl rand -hex 32')"
        )
    return token


CHECK_SCHEMA = "SELECT to_regclass('web_links') IS NOT NULL AS ready"


def check_database(config: Config) -> None:
    """Fail at start-up, not at the first page, when PostgreSQL is away or not migrated."""
    conn = database.connect(config.database)
    try:
        row: dict[str, Any] | None = conn.execute(CHECK_SCHEMA).fetchone()  # type: ignore[assignment]
        if not row or not row["ready"]:
            raise ServiceUnavailable(
                "the database has no web_links table (migration 0042): run 'txrelay db migrate'"
            )
    finally:
        conn.close()


def serve(cli: CliContext, listen: str) -> None:
    from werkzeug.serving import WSGIRequestHandler, make_server

    from txrelay.web.app import create_app

    host, port = _host_port(listen)
    admin_token = read_admin_token(cli.config)
    check_database(cli.config)
    app = create_app(cli.config, admin_token, cli.clock)

    class Handler(WSGIRequestHandler):
        """Logs method, path and status: never the query string (it may hold a token)."""

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            path = self.path.split("?", 1)[0]
            log.info("%s %s %s %s", self.address_string(), self.command, path, code)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = make_server(host, port, app, threaded=True, request_handler=Handler)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"txrelay web: serving the read-only dashboard on http://{listen}/", err=True)
    server.serve_forever()


def _span(text: str) -> dt.timedelta:
    match = _SPAN.match(text.strip())
    if match is None:
        raise InvalidInput(f"--expires {text!r} is not a span such as 12h, 30d or 8w")
    span = dt.timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
    if not dt.timedelta(0) < span <= LONGEST_LINK:
        raise InvalidInput(f"--expires {text!r} must be more than 0 and at most 366 days")
    return span


def _base_url(config: Config) -> str:
    return (config.web.public_url or f"http://{config.web.listen}").rstrip("/")


@web.command("link")
@click.argument("account")
@click.option(
    "--expires",
    default="30d",
    show_default=True,
    metavar="SPAN",
    help="How long the link works: 12h, 30d, 8w (at most 366 days).",
)
@json_option
@pass_cli
def link(cli: CliContext, account: str, expires: str) -> None:
    """Make a read-only dashboard link that shows ACCOUNT's pages and nothing else.

    The link is printed now and never again (only a hash of its token is kept); revoke it
    with 'txrelay web revoke ID'. Its address starts with [web] public_url.

    \b
    Example:
      txrelay web link "Acme GmbH" --expires 7d
    """
    span = _span(expires)
    now = cli.clock.now()
    with transaction(cli.db):
        account_id = require_account(cli.db, account)
        minted = store.mint_link(cli.db, account_id, now, now + span)
    link_id = minted.id
    url = account_link_url(_base_url(cli.config), account, minted.token)
    data = {"id": link_id, "account": account, "expires_at": now + span, "url": url}

    def human() -> None:
        click.echo(f"Link {link_id} for {account}, valid until {now + span:%Y-%m-%d %H:%M} UTC:")
        click.echo(f"  {url}")
        click.echo("Give it to the account owner now: it is not shown again.")

    cli.emit(data, human)


@web.command("links")
@click.option("--account", help="Only this account's links.")
@json_option
@pass_cli
def links(cli: CliContext, account: str | None) -> None:
    """List the dashboard links: account, made, expires, and whether each still works
    (valid, expired, revoked). Tokens are not shown: only their hashes are kept.

    \b
    Example:
      txrelay web links --account "Acme GmbH"
    """
    now = cli.clock.now()
    with transaction(cli.db):
        if account is not None:
            require_account(cli.db, account)
        rows = store.list_links(cli.db, account)
    for row in rows:
        row["state"] = (
            "revoked" if row["revoked_at"] else "expired" if row["expires_at"] <= now else "valid"
        )

    def human() -> None:
        if not rows:
            click.echo("No dashboard links.")
            return
        click.echo(
            table(
                ["ID", "ACCOUNT", "MADE", "EXPIRES", "STATE"],
                [
                    [
                        str(row["id"]),
                        row["account"],
                        f"{row['created_at']:%Y-%m-%d %H:%M}",
                        f"{row['expires_at']:%Y-%m-%d %H:%M}",
                        row["state"],
                    ]
                    for row in rows
                ],
            )
        )

    cli.emit(rows, human)


@web.command("revoke")
@click.argument("link_id", metavar="ID", type=int)
@json_option
@pass_cli
def revoke(cli: CliContext, link_id: int) -> None:
    """Revoke dashboard link ID (see 'txrelay web links'): it gets 403 from the next page
    on, cookie or not.

    \b
    Example:
      txrelay web revoke 7
    """
    with transaction(cli.db):
        revoked_at = store.revoke_link(cli.db, link_id, cli.clock.now())
    data: dict[str, Any] = {"id": link_id, "revoked_at": revoked_at}
    cli.emit(data, lambda: click.echo(f"Revoked dashboard link {link_id}."))
