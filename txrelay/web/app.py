"""The dashboard's Flask application: GET routes only, every page behind a token.

The admin's token (from [web] admin_token_file) sees every page; an account link's token
(`txrelay web link`, stored hashed) sees that account's pages and nothing else. A token comes
as `Authorization: Bearer TOKEN`, or once as `?token=TOKEN`, which sets an HttpOnly,
SameSite=Strict cookie for the next pages. Nothing here changes state, so there is no form
that posts and no CSRF token to carry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Flask, Response, abort, g, render_template, request
from werkzeug.exceptions import HTTPException

from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.errors import ServiceUnavailable
from txrelay.policy.web_access import Viewer, is_admin_token, token_hash
from txrelay.store import database
from txrelay.store.web_links import find_link
from txrelay.web import charts, data

COOKIE = "txrelay_dashboard"
# No script at all, styles inline (pygal's SVG carries its own), nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The cookie a ?token= link sets: checked again at every page (a revoked link stops at once).
SIGN_IN_LASTS = dt.timedelta(hours=12)
FORBIDDEN_TEXT = "This link or token is not valid: it is wrong, has expired or was revoked."


def create_app(config: Config, admin_token: str, clock: Clock) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 0  # nothing is ever posted

    @contextmanager
    def reading() -> Iterator[psycopg.Connection[Any]]:
        """One read-only transaction per page: its figures agree with each other."""
        conn = database.connect(config.database)
        try:
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            yield conn
        finally:
            conn.rollback()
            conn.close()

    def now() -> dt.datetime:
        return clock.now()

    def presented_token() -> tuple[str | None, bool]:
        """The token of this request and whether it came in the URL."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header.removeprefix("Bearer ").strip(), False
        if "token" in request.args:
            return request.args["token"], True
        return request.cookies.get(COOKIE), False

    def identify(conn: psycopg.Connection[Any], token: str) -> Viewer | None:
        if is_admin_token(token, admin_token):
            return Viewer(None)
        link = find_link(conn, token_hash(token))
        if link is None or not link.valid(now()):
            return None
        return Viewer(link.account)

    def page(
        account: str | None, render: Callable[[psycopg.Connection[Any], Viewer], str]
    ) -> Response:
        """Check the viewer may see `account`'s pages (None: the relay-wide ones), then
        render in one read-only transaction."""
        token, from_url = presented_token()
        if not token:
            abort(403)
        with reading() as conn:
            viewer = identify(conn, token)
            if viewer is None or not viewer.may_see(account):
                abort(403)
            g.viewer = viewer
            response = Response(render(conn, viewer), mimetype="text/html")
        if from_url:
            response.set_cookie(
                COOKIE,
                token,
                httponly=True,
                samesite="Strict",
                secure=request.is_secure,
                path="/",
                max_age=int(SIGN_IN_LASTS.total_seconds()),
            )
        return response

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(ServiceUnavailable)
    def unavailable(_error: ServiceUnavailable) -> tuple[str, int]:
        # The admin finds the reason in the log; a page tells nobody the database's address.
        app.logger.warning("PostgreSQL unavailable: %s", _error)
        return (
            render_template(
                "error.html", code=503, name="The database is unavailable: try again shortly"
            ),
            503,
        )

    @app.errorhandler(HTTPException)
    def error_page(error: HTTPException) -> tuple[str, int]:
        code = error.code or 500
        if code == 403:
            return render_template("forbidden.html", text=FORBIDDEN_TEXT), 403
        return render_template("error.html", code=code, name=error.name), code

    @app.get("/")
    def accounts() -> Response:
        def render(conn: psycopg.Connection[Any], viewer: Viewer) -> str:
            return render_template(
                "accounts.html",
                rows=data.all_accounts(conn, config, now()),
                config=config.web,
                now=now(),
                viewer=viewer,
            )

        return page(None, render)

    @app.get("/accounts/<name>")
    def account(name: str) -> Response:
        width = request.args.get("by", "1h")
        span = request.args.get("range", data.RANGES.get(width, "7d"))

        def render(conn: psycopg.Connection[Any], viewer: Viewer) -> str:
            ident = data.account_id(conn, name)
            if ident is None:
                abort(404)
            view = data.account_page(conn, config, name, ident, width, span, now())
            svg = (
                None
                if view.chart.empty
                else charts.outcomes_svg(view.chart, f"Outcomes per {view.chart.width}")
            )
            burn_svg = (
                None
                if view.burn.empty
                else charts.burn_svg(view.burn, "Recipients per day, last 30 days")
            )
            return render_template(
                "account.html",
                view=view,
                svg=svg,
                burn_svg=burn_svg,
                widths=("15m", "1h", "1d"),
                labels=charts.LABELS,
                now=now(),
                viewer=viewer,
            )

        return page(name, render)

    @app.get("/accounts/<name>/messages")
    def account_messages(name: str) -> Response:
        def render(conn: psycopg.Connection[Any], viewer: Viewer) -> str:
            if data.account_id(conn, name) is None:
                abort(404)
            return search_page(conn, viewer, name)

        return page(name, render)

    @app.get("/messages")
    def messages() -> Response:
        return page(None, lambda conn, viewer: search_page(conn, viewer, None))

    def search_page(conn: psycopg.Connection[Any], viewer: Viewer, account: str | None) -> str:
        query = {key: request.args.get(key, "") for key in data.SEARCH_FIELDS}
        asked = any(query.values())
        return render_template(
            "messages.html",
            account=account,
            query=query,
            rows=data.search(conn, account, query) if asked else [],
            asked=asked,
            limit=data.LIST_LIMIT,
            viewer=viewer,
        )

    return app
