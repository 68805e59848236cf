"""How provisioning records look to an admin: JSON-ready dicts and plain-text tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from txrelay.config import Config
from txrelay.provisioning.dkim_keys import DnsRecord, dns_record
from txrelay.provisioning.dns_check import RecordCheck
from txrelay.provisioning.dns_records import ExpectedRecord
from txrelay.provisioning.quota import QuotaReport
from txrelay.store.accounts import AccountSummary
from txrelay.store.connections import Connection
from txrelay.store.domains import DkimKey, SendingDomain
from txrelay.store.quota import QuotaBlock


def timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat(timespec="seconds")


def short_time(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def account_view(summary: AccountSummary) -> dict[str, Any]:
    account = summary.account
    return {
        "account": account.name,
        "id": account.id,
        "admin_email": account.admin_email,
        "quota_remaining": summary.quota_remaining,
        "paid": summary.paid,
        "plan": "paid" if summary.paid else "demo",
        "low_quota_threshold": account.low_quota_threshold,
        "connections": summary.connections,
        "domains": summary.domains,
        "created_at": timestamp(account.created_at),
        "disabled": account.disabled_at is not None,
        "disabled_at": timestamp(account.disabled_at),
        "overage_cap": account.overage_cap,
    }


def record_view(record: DnsRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "type": record.rtype,
        "value": record.value,
        "strings": record.strings,
        "zone_line": record.zone_line(),
    }


def expected_record_view(expected: ExpectedRecord) -> dict[str, Any]:
    """One record of `domain dns`: value None when txrelay cannot say (see note)."""
    view: dict[str, Any] = {
        "kind": expected.kind,
        "name": expected.name,
        "type": expected.record.rtype if expected.record else "TXT",
        "purpose": expected.purpose,
        "note": expected.note,
    }
    if expected.kind in ("spf", "dmarc"):
        view["published"] = None if expected.published is None else list(expected.published)
    view.update(
        record_view(expected.record)
        if expected.record
        else {"value": None, "strings": [], "zone_line": None}
    )
    if expected.key is not None:
        view.update(selector=expected.key.selector, state=expected.state)
    return view


def record_check_view(check: RecordCheck) -> dict[str, Any]:
    """One record of `domain check`: the verdict, what DNS holds, and the fix."""
    view: dict[str, Any] = {
        "kind": check.expected.kind,
        "name": check.expected.name,
        "verdict": check.verdict,
        "ok": check.verdict == "ok",
        "detail": check.detail,
        "fix": check.fix,
        "found": list(check.found),
        "expected": check.expected.record.value if check.expected.record else None,
    }
    if check.expected.key is not None:
        view.update(selector=check.expected.key.selector, state=check.expected.state)
    return view


def domain_check_view(domain: SendingDomain, checks: list[RecordCheck]) -> dict[str, Any]:
    """`domain check --json`: records (every verdict) and ready; the older top-level fields
    (record, status, ok, found, detail, keys) keep describing the DKIM keys as they did."""
    signing = checks[0]

    def status(check: RecordCheck) -> str:
        return "published" if check.verdict == "ok" else check.verdict

    return {
        "domain": domain.domain,
        "record": signing.expected.name,
        "status": status(signing),
        "ok": signing.verdict == "ok",
        "found": list(signing.found),
        "detail": signing.detail,
        "keys": [
            {
                "selector": c.expected.key.selector,
                "state": c.expected.state,
                "status": status(c),
                "ok": c.verdict == "ok",
                "detail": c.detail,
            }
            for c in checks
            if c.expected.key is not None
        ],
        "records": [record_check_view(c) for c in checks],
        "ready": not any(c.failed for c in checks),
    }


def domain_record(domain: SendingDomain, key: DkimKey | None = None) -> DnsRecord:
    """The TXT record of the domain's signing key, or of another key it publishes."""
    key = key or domain.key
    return dns_record(key.selector, domain.domain, key.algorithm, key.public_key_b64)


def domain_keys_view(domain: SendingDomain) -> list[dict[str, Any]]:
    """Every key the domain publishes: the signing one, then pending and retiring ones."""
    keys = [
        *((key, "signing", None) for key in domain.signing_keys),
        *((r.key, r.state, r.since) for r in domain.rotating),
    ]
    return [
        {
            "selector": key.selector,
            "algorithm": key.algorithm,
            "state": state,
            "since": timestamp(since),
            "dkim_key_id": key.id,
            "dns": record_view(domain_record(domain, key)),
        }
        for key, state, since in keys
    ]


def domain_view(domain: SendingDomain) -> dict[str, Any]:
    """Public facts only: the private key never leaves the store."""
    return {
        "domain": domain.domain,
        "account": domain.account_name,
        "list_help": domain.list_help,
        "selector": domain.key.selector,
        "algorithm": domain.key.algorithm,
        "dkim_key_id": domain.key.id,
        "return_path": domain.return_path,  # null: the relay-wide [bounce] domain
        "dns": record_view(domain_record(domain)),
        "keys": domain_keys_view(domain),
        "algorithms": [key.algorithm for key in domain.signing_keys],
        "dkim_publication": dkim_publication_view(domain),
        "created_at": timestamp(domain.created_at),
    }


def publication_state(domain: SendingDomain) -> str:
    """published: its DKIM records were found, live mail may leave; pending: not yet."""
    return "pending" if domain.published_at is None else "published"


def dkim_publication_view(domain: SendingDomain) -> dict[str, Any]:
    check = domain.last_check
    return {
        "state": publication_state(domain),
        "published_at": timestamp(domain.published_at),
        "last_checked_at": timestamp(check.checked_at if check else None),
        "last_check_published": check.published if check else None,
        "last_check_detail": check.detail if check else None,
    }


def connection_view(connection: Connection) -> dict[str, Any]:
    return {
        "account": connection.account_name,
        "connection": connection.name,
        "id": connection.id,
        "username": connection.username,
        "enabled": connection.enabled,
        "state": "active" if connection.enabled else "inactive",
        "rate_limit": connection.rate_limit,
        "bounces": connection.bounces,
        "sandbox": connection.sandbox,
        "domains": list(connection.domains),
        "last_used_at": timestamp(connection.last_used_at),
        "created_at": timestamp(connection.created_at),
    }


def rate_limit_text(rate_limit: int | None) -> str:
    if rate_limit is None:
        return "default"
    return "unlimited" if rate_limit == 0 else f"{rate_limit}/h"


def access_view(config: Config, connection: Connection, password: str) -> dict[str, Any]:
    """What the shop's developer types into their SMTP settings (the agreed JSON shape)."""
    return {
        "account": connection.account_name,
        "connection": connection.name,
        "username": connection.username,
        "password": password,
        "host": config.smtp.host,
        "port": config.smtp.port,
        "starttls": "required",
        "domains": list(connection.domains),
    }


def block_view(block: QuotaBlock) -> dict[str, Any]:
    return {
        "id": block.id,
        "kind": block.kind,
        "amount": block.amount,
        "used": block.used,
        "remaining": block.remaining,
        "booked_at": timestamp(block.booked_at),
        "expires_at": timestamp(block.expires_at),
        "expired": not block.live,
    }


def quota_view(report: QuotaReport) -> dict[str, Any]:
    return {
        "account": report.account.name,
        "paid": report.paid,
        "plan": "paid" if report.paid else "demo",
        "quota_remaining": report.remaining,
        "blocks": [block_view(block) for block in report.blocks],
        "overage_cap": report.account.overage_cap,
        "forecast": {
            "last_24h": report.forecast.usage.last_day,
            "last_7d": report.forecast.usage.last_week,
            "mails_per_day": round(report.forecast.usage.per_day, 1),
            "runs_out_at": timestamp(report.forecast.runs_out_at),
        },
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; "(none)" when there are no rows."""
    if not rows:
        return "(none)"
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
