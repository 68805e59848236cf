"""The read-only web dashboard (`txrelay web`) loaded in a real headless Chromium, over mail
sent through the real relay path (STARTTLS+AUTH, Postfix, milter, capture sink, the tracker):
every page, its figures against the ledger, account links fenced to their account on every
route, expired and revoked links refused, screenshots of each page kept for CI and docs; the
monthly report (`billing report --html`) in the same browser and printed to PDF by the
documented Chromium command; the low-quota reminder's link to the account's page."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import html
import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.harness.artifacts import artifacts_dir
from tests.harness.complaints import report_complaint
from tests.harness.dns import DnsServer, running_dns_server
from tests.harness.fixtures import RelayStack
from tests.harness.processes import (
    TXRELAY,
    ManagedProcess,
    free_port,
    port_open,
    run,
    wait_until,
)
from tests.harness.provision import Provisioned
from tests.harness.smtp import build_message, submit
from tests.harness.webhook_receiver import WebhookReceiver
from txrelay.policy.retention import retention_cutoff

pytestmark = pytest.mark.e2e

RCPT_DOMAIN = "rcpt.example.net"
CHROMIUM = shutil.which("chromium") or "chromium"
FORBIDDEN = "This link or token is not valid: it is wrong, has expired or was revoked."


def cli(relay: RelayStack, *args: str, env: dict[str, str] | None = None) -> Any:
    done = run([TXRELAY, "--config", str(relay.config_file), "--json", *args],
               env={**os.environ, **(env or {})}, timeout=120)
    return json.loads(done.stdout)


def query(relay: RelayStack, sql: str, *params: object) -> list[dict[str, Any]]:
    with psycopg.connect(relay.database_url, row_factory=dict_row, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


@dataclass
class Dashboard:
    url: str
    admin_token: str
    shop: Provisioned  # with mail: delivered, bounced, one complaint; a webhook
    quiet: Provisioned  # no mail at all
    shop_link: str  # its account link's token
    quiet_link: str
    webhook_id: int  # the shop's, its events delivered once
    published_domain: str  # the shop's second domain, its DKIM record checked in DNS


class Browser:
    """Headless Chromium as the tests drive it: the DOM after load, or a screenshot. One
    profile directory per browser, so a cookie set by one page is sent by the next."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
             "--hide-scrollbars", *args],
            capture_output=True, text=True, timeout=120, check=True)

    def dom(self, url: str) -> str:
        return self._run("--dump-dom", url).stdout

    def screenshot(self, url: str, name: str, width: int = 1280, height: int = 1800) -> Path:
        path = artifacts_dir("dashboard") / f"{name}.png"
        path.unlink(missing_ok=True)
        self._run(f"--screenshot={path}", f"--window-size={width},{height}", url)
        assert path.stat().st_size > 1000, f"no screenshot of {url}"
        print(f"screenshot of {url.split('?')[0]}: {path}")  # with -s, or when it fails
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is missing: scripts/install-test-deps.sh installs it")
    return Browser(tmp_path_factory.mktemp("chromium-profile"))


def track_until_settled(relay: RelayStack, account_id: int) -> None:
    def settled() -> bool:
        cli(relay, "tracker", "--once")
        rows = query(relay, "SELECT count(*) AS n FROM ledger WHERE account_id = %s "
                            "AND state IN ('accepted', 'queued')", account_id)
        return int(rows[0]["n"]) == 0

    wait_until(settled, 60, "the tracker to record every outcome", lambda: relay.postfix.log(30))


def publish_and_check(relay: RelayStack, zone: DnsServer, account: str) -> str:
    """A second domain of ACCOUNT whose DKIM record NSD serves and `domain check` found."""
    domain = f"seen-{secrets.token_hex(4)}.example"
    cli(relay, "domain", "add", account, domain, "--list-help", "https://help.example/")
    records = {record["name"]: [("TXT", record["value"])]
               for record in cli(relay, "domain", "dns", domain)["records"]
               if record["kind"] == "dkim"}
    zone.serve(records)
    done = run([TXRELAY, "--config", str(relay.config_file), "--json", "domain", "check", domain],
               env={**os.environ, "TXRELAY_DNS_RESOLVER": zone.address}, check=False)
    assert json.loads(done.stdout)["dkim_publication"]["state"] == "published", done.stdout
    return domain


@pytest.fixture(scope="module")
def dashboard(relay: RelayStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    directory = tmp_path_factory.mktemp("web")
    shop = relay.provision()
    quiet = relay.provision()
    receiver = WebhookReceiver().start()
    try:
        hook = cli(relay, "webhook", "add", shop.account, receiver.url, "--allow-private")
        cli(relay, "connection", "create", shop.account, "backup", "--domain", shop.domain)
        with running_dns_server(directory / "nsd") as zone:
            published = publish_and_check(relay, zone, shop.account)
        recipients = [f"ann@{RCPT_DOMAIN}", f"bob@{RCPT_DOMAIN}", f"bounce-cy@{RCPT_DOMAIN}"]
        for recipient in recipients:
            submit(shop.username, shop.password, shop.address(), [recipient],
                   build_message(shop.address(), [recipient]), port=relay.port)
        submit(shop.username, shop.password, shop.address(), [f"dan@{RCPT_DOMAIN}"],
               build_message(shop.address(), [f"dan@{RCPT_DOMAIN}"], subject="Password reset"),
               port=relay.port)
        track_until_settled(relay, shop.account_id)
        report_complaint(relay.config, relay.config_file, relay.database_url, shop.account_id,
                         f"dan@{RCPT_DOMAIN}", shop.address())
        run([TXRELAY, "--config", str(relay.config_file), "webhooks", "run", "--once"],
            timeout=120)
    finally:
        receiver.stop()

    token_file = directory / "admin-token"
    admin_token = secrets.token_hex(32)
    token_file.write_text(admin_token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    env = {**os.environ, "TXRELAY_WEB_ADMIN_TOKEN_FILE": str(token_file),
           "TXRELAY_WEB_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    process = ManagedProcess(
        [TXRELAY, "--config", str(relay.config_file), "web", "--listen", f"127.0.0.1:{port}"],
        directory / "web.log", env=env)
    process.start()
    try:
        wait_until(lambda: port_open(port), 30, "txrelay web to listen", process.log)
        links = {}
        for account in (shop, quiet):
            made = cli(relay, "web", "link", account.account, "--expires", "2d", env=env)
            assert made["url"].startswith(f"http://127.0.0.1:{port}/accounts/")
            links[account.account] = made["url"].rsplit("token=", 1)[1]
        yield Dashboard(f"http://127.0.0.1:{port}", admin_token, shop, quiet,
                        links[shop.account], links[quiet.account], int(hook["id"]), published)
    finally:
        process.stop()
    assert "token=" not in (directory / "web.log").read_text(), "a token reached the log"


def status(url: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    """The HTTP status and body of one request, with the token as a Bearer header."""
    request = urllib.request.Request(url, method=method)  # noqa: S310  (the test's own http://)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def cell(dom: str, row_key: str, field: str, kind: str = "account") -> str:
    """The text of the cell data-field=FIELD in the row data-KIND=ROW_KEY."""
    row = re.search(rf'<tr data-{kind}="{re.escape(str(row_key))}">(.*?)</tr>', dom, re.S)
    assert row, f"no row for {kind} {row_key}"
    found = re.search(rf'data-field="{field}"[^>]*>(.*?)</td>', row.group(1), re.S)
    assert found, f"no {field} in the row of {row_key}"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


def ledger_figures(relay: RelayStack, account_id: int) -> dict[str, int]:
    row = query(relay, """
        SELECT count(*) AS arrived,
               count(*) FILTER (WHERE state = 'delivered') AS delivered,
               count(*) FILTER (WHERE state = 'deferred') AS deferred,
               count(*) FILTER (WHERE state = 'bounced') AS bounced,
               count(*) FILTER (WHERE complained_at IS NOT NULL) AS complained,
               count(*) FILTER (WHERE state IN ('accepted', 'queued')) AS in_flight
          FROM ledger WHERE account_id = %s AND state <> 'voided'
           AND accepted_at >= now() - interval '24 hours'""", account_id)[0]
    return {key: int(value) for key, value in row.items()}


def remaining_quota(relay: RelayStack, account_id: int) -> int:
    row = query(relay, "SELECT txrelay_remaining_quota(%s, now()) AS left", account_id)[0]
    return int(row["left"])


def test_all_accounts_page_shows_the_ledgers_figures(dashboard: Dashboard, relay: RelayStack,
                                                     browser: Browser) -> None:
    url = f"{dashboard.url}/?token={dashboard.admin_token}"
    dom = browser.dom(url)
    shop = ledger_figures(relay, dashboard.shop.account_id)
    assert shop["arrived"] == 4 and shop["bounced"] == 1 and shop["delivered"] == 3
    assert cell(dom, dashboard.shop.account, "arrived") == "4"
    assert cell(dom, dashboard.shop.account, "bounce-rate") == "25.00 % ⚠ high"
    # One complaint (dan's) of four: above [web] complaint_warning_rate (0.1 %).
    assert shop["complained"] == 1
    assert cell(dom, dashboard.shop.account, "complaint-rate") == "25.00 % ⚠ high"
    assert cell(dom, dashboard.shop.account, "remaining").startswith(
        str(remaining_quota(relay, dashboard.shop.account_id)))
    # The run-out date is `quota show`'s forecast (the same rule, seconds apart).
    forecast = cli(relay, "quota", "show", dashboard.shop.account)["forecast"]
    runs_out = dt.datetime.fromisoformat(forecast["runs_out_at"])
    assert forecast["last_24h"] == 4
    assert cell(dom, dashboard.shop.account, "runs-out") in {
        f"{runs_out:%Y-%m-%d}", f"{runs_out - dt.timedelta(minutes=2):%Y-%m-%d}"}
    assert cell(dom, dashboard.quiet.account, "arrived") == "0"
    assert cell(dom, dashboard.quiet.account, "runs-out") == "no mail lately"
    assert "<script" not in dom
    browser.screenshot(url, "all-accounts", height=700)


def test_the_sign_in_link_sets_a_cookie_for_the_next_pages(dashboard: Dashboard,
                                                           browser: Browser) -> None:
    browser.dom(f"{dashboard.url}/?token={dashboard.admin_token}")
    dom = browser.dom(f"{dashboard.url}/messages")  # no token: the cookie signs in
    assert "<h1>Message search</h1>" in dom


def test_account_page_chart_and_tables_equal_the_ledger(dashboard: Dashboard,
                                                        relay: RelayStack,
                                                        browser: Browser) -> None:
    name = quote(dashboard.shop.account)
    url = f"{dashboard.url}/accounts/{name}?by=15m&range=24h&token={dashboard.shop_link}"
    dom = browser.dom(url)
    figures = ledger_figures(relay, dashboard.shop.account_id)
    for column, value in figures.items():
        shown = re.search(rf'data-total="{column}">(\d+)<', dom)
        assert shown and int(shown.group(1)) == value, column
    assert 'class="pygal-chart"' in dom and "No mail in this range" not in dom
    assert "the chart starts there" not in dom  # the bucket's default range is never cut
    # A day of quarter hours, both ends rounded out to a quarter hour: 96 or 97 rows.
    table = re.search(r'<table id="timeline">.*?</table>', dom, re.S)
    assert table is not None
    assert table.group(0).count('<tr><th scope="row">20') in (96, 97)
    burned = query(relay, "SELECT count(*) AS n FROM ledger WHERE account_id = %s AND state <> "
                          "'voided' AND accepted_at >= now() - interval '30 days'",
                   dashboard.shop.account_id)[0]["n"]
    assert f'<td class="num" id="burn-total">{burned}</td>' in dom
    assert f'<dd id="remaining">{remaining_quota(relay, dashboard.shop.account_id)}</dd>' in dom
    connections = {row["name"]: row for row in query(relay, """
        SELECT c.name, to_char(GREATEST(c.last_used_at, max(l.accepted_at)) AT TIME ZONE 'UTC',
                               'YYYY-MM-DD HH24:MI') AS last_used
          FROM connections c LEFT JOIN ledger l ON l.connection_id = c.id
         WHERE c.account_id = %s GROUP BY c.id""", dashboard.shop.account_id)}
    assert set(connections) == {"shop", "backup"} and connections["backup"]["last_used"] is None
    assert cell(dom, "shop", "state", "connection") == "active"
    assert cell(dom, "shop", "last-used", "connection") == connections["shop"]["last_used"]
    assert cell(dom, "backup", "state", "connection") == "inactive"  # never used
    assert cell(dom, "backup", "last-used", "connection") == "never"
    assert cell(dom, dashboard.shop.domain, "published", "domain").startswith("pending")
    checked = query(relay, """
        SELECT to_char(d.dkim_published_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS since
          FROM sending_domains d WHERE d.domain = %s""", dashboard.published_domain)[0]
    assert cell(dom, dashboard.published_domain, "published", "domain") == (
        f"published since {checked['since']}")
    assert cell(dom, dashboard.published_domain, "last-check", "domain").startswith(
        checked["since"])
    # The suppression list: the bounced recipient (hard bounce) and the one who complained.
    assert f"bounce-cy@{RCPT_DOMAIN}" in dom and "hard_bounce" in dom
    assert f"dan@{RCPT_DOMAIN}" in dom and "complaint" in dom
    # The webhook's events, as the outbox has them: delivered to the receiver once.
    outbox = query(relay, "SELECT id, event, attempts, last_status, delivered_at "
                          "FROM webhook_outbox WHERE webhook_id = %s", dashboard.webhook_id)
    assert {row["event"] for row in outbox} >= {"delivered", "bounced", "complained"}
    for row in outbox:
        assert row["delivered_at"] is not None, row
        assert cell(dom, row["id"], "event", "delivery") == row["event"]
        assert cell(dom, row["id"], "state", "delivery") == "delivered"
        assert cell(dom, row["id"], "attempts", "delivery") == str(row["attempts"]) == "1"
        assert cell(dom, row["id"], "last-status", "delivery") == "200"
    browser.screenshot(url, "account")
    browser.screenshot(url, "account-phone", width=390, height=2400)


def first_row(dom: str) -> str:
    """The start of the chart's first bucket, as its table shows it."""
    found = re.search(r'<table id="timeline">.*?<tbody>\s*<tr><th scope="row">([^<]+)</th>', dom,
                      re.S)
    assert found, "no chart table"
    return found.group(1)


def test_a_range_beyond_the_data_is_clamped_with_a_note(dashboard: Dashboard,
                                                        relay: RelayStack,
                                                        browser: Browser) -> None:
    name = quote(dashboard.shop.account)
    months = relay.config.retention.ledger_months
    kept_from = retention_cutoff(dt.datetime.now(dt.UTC), months)
    retention_note = (f"([retention] ledger_months = {months}): the chart starts at "
                      f"{kept_from:%Y-%m-%d}.")
    # Ten years of an account without mail: cut to the retention, said in a note.
    dom = browser.dom(f"{dashboard.url}/accounts/{quote(dashboard.quiet.account)}"
                      f"?by=1d&range=3650d&token={dashboard.quiet_link}")
    assert retention_note in dom and "No mail in this range." in dom
    # Ten years of the shop's: cut to the retention, then to its first mail's day (or a day
    # back from now, when that mail is younger: a chart spans one bucket at least).
    dom = browser.dom(f"{dashboard.url}/accounts/{name}?by=1d&range=3650d"
                      f"&token={dashboard.shop_link}")
    assert retention_note in dom and "the chart starts there" in dom
    first = query(relay, """
        SELECT to_char(LEAST(min(accepted_at), now() - interval '1 day') AT TIME ZONE 'UTC',
                       'YYYY-MM-DD') AS day
          FROM ledger WHERE account_id = %s""", dashboard.shop.account_id)[0]["day"]
    assert first_row(dom) == f"{first} 00:00"
    dom = browser.dom(f"{dashboard.url}/accounts/{name}?by=15m&range=3650d"
                      f"&token={dashboard.admin_token}")
    assert "the chart starts there" in dom
    assert re.search(r'data-total="arrived">4<', dom)


def test_an_account_without_mail_says_so(dashboard: Dashboard, browser: Browser) -> None:
    url = (f"{dashboard.url}/accounts/{quote(dashboard.quiet.account)}"
           f"?token={dashboard.quiet_link}")
    dom = browser.dom(url)
    assert '<p class="empty" id="no-mail">No mail in this range.</p>' in dom
    assert "pygal-chart" not in dom
    browser.screenshot(url, "account-no-mail", height=1200)


def test_message_search_finds_the_ledgers_rows(dashboard: Dashboard, relay: RelayStack,
                                               browser: Browser) -> None:
    name = quote(dashboard.shop.account)
    url = (f"{dashboard.url}/accounts/{name}/messages?to=bounce-cy%40{RCPT_DOMAIN}"
           f"&token={dashboard.shop_link}")
    dom = browser.dom(url)
    assert re.search(rf"<th scope=\"row\">bounce-cy@{re.escape(RCPT_DOMAIN)}</th>"
                     r"<td>bounced", dom)
    assert "1 recipients" in dom
    browser.screenshot(url, "messages", height=900)
    # The admin's search across accounts, by state.
    dom = browser.dom(f"{dashboard.url}/messages?state=delivered&sender=%40"
                      f"{dashboard.shop.domain}&token={dashboard.admin_token}")
    assert dom.count(f"<td>{dashboard.shop.account}</td>") == 3


def routes(dashboard: Dashboard, account: str) -> list[str]:
    name = quote(account)
    return ["/", "/messages", "/messages?to=ann%40rcpt.example.net", f"/accounts/{name}",
            f"/accounts/{name}?by=1d&range=30d", f"/accounts/{name}/messages",
            f"/accounts/{name}/messages?to=ann%40rcpt.example.net"]


def test_an_account_link_sees_its_account_and_nothing_else(dashboard: Dashboard,
                                                           browser: Browser) -> None:
    for route in routes(dashboard, dashboard.quiet.account):
        code, body = status(dashboard.url + route, dashboard.shop_link)
        assert code == 403, route
        assert FORBIDDEN in body and dashboard.quiet.account not in body, route
        assert "ann@" not in body, route
    for route in routes(dashboard, dashboard.shop.account)[3:]:
        assert status(dashboard.url + route, dashboard.shop_link)[0] == 200, route
    for route in routes(dashboard, dashboard.quiet.account):
        assert status(dashboard.url + route, dashboard.admin_token)[0] == 200, route
    # An unknown account is a 403 to a link (nothing revealed), a 404 to the admin.
    assert status(f"{dashboard.url}/accounts/nobody-here", dashboard.shop_link)[0] == 403
    assert status(f"{dashboard.url}/accounts/nobody-here", dashboard.admin_token)[0] == 404
    dom = browser.dom(f"{dashboard.url}/?token={dashboard.shop_link}")
    assert FORBIDDEN in dom and dashboard.shop.account not in dom


def test_no_route_changes_anything(dashboard: Dashboard) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        code, _ = status(f"{dashboard.url}/accounts/{quote(dashboard.shop.account)}",
                         dashboard.admin_token, method)
        assert code == 405, method
    code, _ = status(f"{dashboard.url}/", None)
    assert code == 403


def test_wrong_expired_and_revoked_links_get_403(dashboard: Dashboard, relay: RelayStack,
                                                 browser: Browser) -> None:
    account = dashboard.quiet.account
    page = f"{dashboard.url}/accounts/{quote(account)}"
    # Made two days ago for one day: expired yesterday.
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).isoformat()
    expired = cli(relay, "web", "link", account, "--expires", "1d",
                  env={"TXRELAY_TEST_NOW": past})
    revoked = cli(relay, "web", "link", account)
    assert status(page, revoked["url"].rsplit("token=", 1)[1])[0] == 200
    cli(relay, "web", "revoke", str(revoked["id"]))
    listed = {row["id"]: row["state"] for row in cli(relay, "web", "links", "--account", account)}
    assert listed[expired["id"]] == "expired" and listed[revoked["id"]] == "revoked"
    for token in (expired["url"].rsplit("token=", 1)[1], revoked["url"].rsplit("token=", 1)[1],
                  "not-a-token", dashboard.admin_token[:-1] + "x"):
        code, body = status(page, token)
        assert code == 403 and FORBIDDEN in body and account not in body
        dom = browser.dom(f"{page}?token={token}")
        assert "403 Forbidden" in dom and account not in dom
    browser.screenshot(f"{page}?token=not-a-token", "forbidden", height=500)
    # Only hashes are stored.
    stored = query(relay, "SELECT token_hash FROM web_links WHERE id = %s", revoked["id"])
    assert revoked["url"].rsplit("token=", 1)[1] not in str(stored)


def test_link_commands_refuse_bad_input(relay: RelayStack, dashboard: Dashboard) -> None:
    base = [TXRELAY, "--config", str(relay.config_file)]
    done = run([*base, "web", "link", "no-such-account"], check=False)
    assert done.returncode == 3 and "no account named 'no-such-account'" in done.stderr
    done = run([*base, "web", "link", dashboard.quiet.account, "--expires", "forever"],
               check=False)
    assert done.returncode == 4 and "--expires 'forever'" in done.stderr
    done = run([*base, "web", "revoke", "999999999"], check=False)
    assert done.returncode == 3 and "no dashboard link 999999999" in done.stderr
    assert "Traceback" not in done.stderr


def test_start_without_a_database_is_a_clear_error(relay: RelayStack, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    closed = free_port()
    env = {**os.environ, "TXRELAY_WEB_ADMIN_TOKEN_FILE": str(token_file),
           "TXRELAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/txrelay"}
    done = run([TXRELAY, "--config", str(relay.config_file), "web", "--listen",
                f"127.0.0.1:{free_port()}"], env=env, check=False, timeout=60)
    assert done.returncode == 5, done.stderr
    assert "PostgreSQL" in done.stderr and "Traceback" not in done.stderr
    # And without the admin token file: says how to make one.
    env["TXRELAY_WEB_ADMIN_TOKEN_FILE"] = str(tmp_path / "missing")
    done = run([TXRELAY, "--config", str(relay.config_file), "web"], env=env, check=False)
    assert done.returncode == 1 and "openssl rand -hex 32" in done.stderr


def month_of_mail(relay: RelayStack, account_id: int) -> str:
    """The UTC month of the account's mail (the fixture's, sent minutes ago)."""
    row = query(relay, "SELECT to_char(max(accepted_at) AT TIME ZONE 'UTC', 'YYYY-MM') AS p "
                       "FROM ledger WHERE account_id = %s", account_id)[0]
    return str(row["p"])


def report_file(relay: RelayStack, account: Provisioned, period: str,
                directory: Path) -> tuple[Path, dict[str, Any]]:
    page = directory / f"report-{account.account_id}.html"
    report = cli(relay, "billing", "report", account.account, "--period", period,
                 "--html", str(page))
    return page, report


def test_monthly_report_in_the_browser_shows_the_ledgers_month(
        dashboard: Dashboard, relay: RelayStack, browser: Browser, tmp_path: Path) -> None:
    shop = dashboard.shop
    period = month_of_mail(relay, shop.account_id)
    page, report = report_file(relay, shop, period, tmp_path)
    dom = browser.dom(page.as_uri())
    month = query(relay, """
        SELECT count(*) AS arrived, count(*) FILTER (WHERE state = 'delivered') AS delivered,
               count(*) FILTER (WHERE state = 'bounced') AS bounced
          FROM ledger WHERE account_id = %s AND state <> 'voided'
           AND to_char(accepted_at AT TIME ZONE 'UTC', 'YYYY-MM') = %s""",
                  shop.account_id, period)[0]
    assert dict(month) == {"arrived": 4, "delivered": 3, "bounced": 1}
    for column, value in month.items():
        assert re.search(rf'data-total="{column}">{value}<', dom), column
    for key in ("mails_from_blocks", "overage_mails", "overage_price_eur", "amount_due_eur"):
        assert f'data-figure="{key}">{report[key]}<' in dom, key
    assert report["mails_from_blocks"] == 4  # every recipient, the bounced one too
    assert 'class="pygal-chart"' in dom and "No mail in this range" not in dom
    assert 'id="block-table"' in dom and "<script" not in dom
    browser.screenshot(page.as_uri(), "report", height=2300)


def test_monthly_report_of_an_account_without_mail_says_so(
        dashboard: Dashboard, relay: RelayStack, browser: Browser, tmp_path: Path) -> None:
    period = month_of_mail(relay, dashboard.shop.account_id)
    page, report = report_file(relay, dashboard.quiet, period, tmp_path)
    dom = browser.dom(page.as_uri())
    assert f'<p class="empty" id="no-mail">No mail in this range ({period}).</p>' in dom
    assert "pygal-chart" not in dom and 'data-total="arrived">0<' in dom
    assert report["mails_from_blocks"] == 0 and report["amount_due_eur"] == "0.00000"


def documented_pdf_command() -> list[str]:
    """The command docs/tracking-and-billing.md gives for a PDF of the report."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "tracking-and-billing.md"
    found = re.search(r"^(chromium --headless .*--print-to-pdf=REPORT\.pdf REPORT\.html)$",
                      docs.read_text(), re.M)
    assert found, "the PDF command is gone from docs/tracking-and-billing.md"
    return found.group(1).split()


def test_the_documented_chromium_command_prints_the_report_to_pdf(
        dashboard: Dashboard, relay: RelayStack, tmp_path: Path) -> None:
    period = month_of_mail(relay, dashboard.shop.account_id)
    page, _ = report_file(relay, dashboard.shop, period, tmp_path)
    pdf = tmp_path / "report.pdf"
    command = [part.replace("REPORT.pdf", str(pdf)).replace("REPORT.html", str(page))
               for part in documented_pdf_command()]
    # As root (the tests), Chromium needs --no-sandbox; its own profile keeps runs apart.
    command[1:1] = ["--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}"]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and re.search(rb"/Count [1-9]", data)
    title = re.search(rb"/Title <FEFF([0-9A-F]+)>", data)
    assert title, "the PDF has no title"
    assert bytes.fromhex(title.group(1).decode()).decode("utf-16-be") == (
        f"Usage report {dashboard.shop.account}, {period} · txrelay")


def test_low_quota_reminder_links_to_the_accounts_page_and_nothing_else(
        dashboard: Dashboard, relay: RelayStack, browser: Browser, plain_smtpd: int) -> None:
    owner = relay.provision()
    cli(relay, "account", "set", owner.account, "--low-quota-threshold", "100")
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        conn.execute("UPDATE quota_blocks SET used = 950 WHERE account_id = %s AND "
                     "kind = 'demo'", (owner.account_id,))
    env = {"TXRELAY_NOTIFY_SMTP_PORT": str(plain_smtpd),
           "TXRELAY_NOTIFY_FROM_ADDRESS": "txrelay@relay.txrelay.test",
           "TXRELAY_WEB_PUBLIC_URL": dashboard.url}
    cli(relay, "tracker", "--once", env=env)  # the tracker's tick, as the daemons' role
    admin = f"admin@{owner.account}.example.com"

    def reminders() -> list[Any]:
        return [c for c in relay.sink.captures() if admin in c.rcpt_tos]

    wait_until(lambda: len(reminders()) >= 1, 30, "the reminder at the sink",
               lambda: relay.postfix.log(20))
    message = email.message_from_bytes(reminders()[0].raw, policy=email.policy.default)
    body = message.get_content()  # type: ignore[attr-defined]
    found = re.search(r"(http://\S+/accounts/\S+\?token=\S+)", body)
    assert found, body
    url = found.group(1)
    assert url.startswith(f"{dashboard.url}/accounts/{quote(owner.account, safe='')}?token=")
    dom = browser.dom(url)
    assert f"<h1>Account {html.escape(owner.account)}" in dom
    assert '<dd id="remaining">50</dd>' in dom
    token = url.rsplit("token=", 1)[1]
    for route in routes(dashboard, dashboard.shop.account):
        assert status(dashboard.url + route, token)[0] == 403, route
    note = query(relay, "SELECT detail FROM notifications WHERE account_id = %s",
                 owner.account_id)[0]["detail"]
    [listed] = cli(relay, "web", "links", "--account", owner.account)
    assert listed["id"] == note["dashboard_link_id"] and listed["state"] == "valid"
    cli(relay, "web", "revoke", str(listed["id"]))
    assert status(url.split("?")[0], token)[0] == 403


def test_screenshots_are_in_the_docs() -> None:
    """docs/dashboard.md shows a copy of each screenshot this module writes."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "dashboard.md").read_text()
    for name in ("all-accounts", "account", "account-phone", "account-no-mail", "messages",
                 "forbidden", "report"):
        assert f"(dashboard-{name}.png)" in text, name
        assert (docs / f"dashboard-{name}.png").stat().st_size > 1000, name


