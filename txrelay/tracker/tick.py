"""The periodic tick: renew plans, expire blocks, send low-quota reminders, look the DKIM
records of pending sending domains up, delete sandbox mail older than [sandbox]
retention_days, fold the ledger's deltas into its rollups, and count each account's
arrivals and complaints of the last 24 hours (the tracker's complaint-rate metrics).

Run by the tracker every [tracker] tick_interval_seconds and by `txrelay quota tick`.
Idempotent: a second run (or another node's run) changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
import redis

from txrelay.config import Config
from txrelay.errors import ServiceUnavailable
from txrelay.notify import DashboardLink, Mailer, Reminder, Usage, compose
from txrelay.policy.web_access import account_link_url
from txrelay.provisioning import dns_check, domains
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.store import lifecycle, reporting, rollups, web_links, webhook_events
from txrelay.store.sandbox import purge_sandbox_messages

log = logging.getLogger("txrelay.tracker")


@dataclass
class TickResult:
    renewals: list[lifecycle.Renewal] = field(default_factory=list)
    expired: list[lifecycle.ExpiredBlock] = field(default_factory=list)
    reminders_sent: list[str] = field(default_factory=list)  # account names
    rearmed: list[str] = field(default_factory=list)
    reminder_failures: list[str] = field(default_factory=list)
    dkim_checked: list[str] = field(default_factory=list)  # pending domains looked up
    dkim_published: list[str] = field(default_factory=list)  # ... that became published
    quota_exhausted: list[int] = field(default_factory=list)  # account ids told (webhooks)
    sandbox_purged: int = 0  # captured sandbox messages past their retention, deleted
    rollups_folded: int = 0  # ledger deltas moved into the 15-minute rollups
    # Per account, the last 24 hours' arrivals and complaints (the tracker's metrics); None
    # when the tick was limited to some accounts.
    last_day: list[reporting.AccountCohort] | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "renewals": [
                {
                    "account_id": r.account_id,
                    "block_id": r.block_id,
                    "amount": r.amount,
                    "booked_at": r.booked_at.isoformat(),
                    "expires_at": r.expires_at.isoformat(),
                }
                for r in self.renewals
            ],
            "expired": [
                {
                    "account_id": e.account_id,
                    "block_id": e.block_id,
                    "expired_unused": e.expired_unused,
                }
                for e in self.expired
            ],
            "reminders_sent": self.reminders_sent,
            "rearmed": self.rearmed,
            "reminder_failures": self.reminder_failures,
            "dkim_checked": self.dkim_checked,
            "dkim_published": self.dkim_published,
            "quota_exhausted": self.quota_exhausted,
            "sandbox_purged": self.sandbox_purged,
        }


def run_tick(
    conn: psycopg.Connection,
    client: redis.Redis,
    config: Config,
    now: dt.datetime,
    mailer: Mailer,
    accounts: Sequence[int] | None = None,
) -> TickResult:
    """Renewal before expiry (a renewed plan never leaves a gap), then reminders.
    `accounts` limits the tick to those account ids (None: every account)."""
    result = TickResult()
    validity = dt.timedelta(days=config.quota.block_validity_days)
    with conn.transaction():
        lifecycle.lock_due_accounts(conn, now, accounts)
        result.renewals = lifecycle.renew_plans(conn, now, validity, accounts)
        result.expired = lifecycle.expire_blocks(conn, now, accounts)
    credits = [(r.account_id, r.amount) for r in result.renewals]
    credits += [(e.account_id, -e.expired_unused) for e in result.expired]
    lifecycle.apply_credits(client, config.redis.key_prefix, credits)
    for renewal in result.renewals:
        log.info(
            "event=plan_renewed account_id=%d block_id=%d amount=%d",
            renewal.account_id,
            renewal.block_id,
            renewal.amount,
        )
    for block in result.expired:
        log.info(
            "event=block_expired account_id=%d block_id=%d expired_unused=%d",
            block.account_id,
            block.block_id,
            block.expired_unused,
        )
    check_reminders(conn, config, now, mailer, result, accounts)
    if accounts is None:
        check_pending_dkim(conn, config, now, result)
        result.sandbox_purged = purge_sandbox_messages(conn, now, config.sandbox.retention_days)
        if result.sandbox_purged:
            log.info("event=sandbox_purged messages=%d", result.sandbox_purged)
    with conn.transaction():
        result.quota_exhausted = lifecycle.check_exhaustion(conn, now, accounts)
    for account_id in result.quota_exhausted:
        log.info("event=quota_exhausted account_id=%d", account_id)
    if accounts is None:
        with conn.transaction():
            result.rollups_folded = rollups.fold(conn)
        result.last_day = reporting.account_cohorts(conn, now - dt.timedelta(hours=24), now)
    return result


# Pending domains looked up per tick (least recently checked first), each lookup short: a
# slow or dead DNS server must not hold up the tracker's log reading for long.
DKIM_CHECKS_PER_TICK = 20
DKIM_LOOKUP_SECONDS = 3.0


def check_pending_dkim(
    conn: psycopg.Connection, config: Config, now: dt.datetime, result: TickResult
) -> None:
    """Look the DKIM records of pending domains up, as `txrelay domain check` does: a
    domain whose signing keys are all published may send live mail from now on."""
    if not config.dkim.require_published:
        return
    try:
        lookup = DnsLookup(config.dns, lifetime=DKIM_LOOKUP_SECONDS)
    except ServiceUnavailable as exc:
        log.warning("event=dkim_check_failed reason=%s", exc)
        return
    for pending in domains.pending_domains(conn, DKIM_CHECKS_PER_TICK):
        published, detail = dns_check.dkim_publication(
            dns_check.check_signing_dkim(lookup, pending)
        )
        _, became = domains.record_dkim_publication(conn, now, pending, published, detail)
        result.dkim_checked.append(pending.domain)
        if became:
            result.dkim_published.append(pending.domain)
            log.info("event=dkim_published domain=%s detail=%r", pending.domain, detail)


def check_reminders(
    conn: psycopg.Connection,
    config: Config,
    now: dt.datetime,
    mailer: Mailer,
    result: TickResult,
    accounts: Sequence[int] | None = None,
) -> None:
    """One e-mail per crossing below the threshold; back at or above it re-arms."""
    with conn.transaction():
        candidates = lifecycle.reminder_candidates(conn, now, accounts)
    for candidate in candidates:
        if candidate.rearm:
            with conn.transaction():
                lifecycle.set_armed(conn, candidate.account_id, True, now)
            result.rearmed.append(candidate.account)
            continue
        try:
            if send_reminder(conn, config, now, mailer, candidate):
                result.reminders_sent.append(candidate.account)
        except ServiceUnavailable as exc:
            log.warning("event=reminder_failed account=%s reason=%s", candidate.account, exc)
            result.reminder_failures.append(candidate.account)


def send_reminder(
    conn: psycopg.Connection,
    config: Config,
    now: dt.datetime,
    mailer: Mailer,
    candidate: lifecycle.ReminderCandidate,
) -> bool:
    """Send while holding the armed row; the record and the disarm commit after the send,
    so a failed send is retried by the next tick (a crash right after sending could repeat
    one reminder: at least once, never lost)."""
    with conn.transaction():
        if not lifecycle.lock_armed(conn, candidate.account_id):
            return False
        last_day, last_week = lifecycle.usage(conn, candidate.account_id, now)
        reminder = Reminder(
            candidate.account,
            candidate.admin_email,
            candidate.remaining,
            candidate.threshold,
            Usage(last_day, last_week),
            now,
            reminder_link(conn, config, now, candidate),
        )
        mailer.send(compose(reminder, config.notify.from_address))
        lifecycle.record_notification(
            conn, candidate.account_id, "low_quota", reminder.detail(), now
        )
        webhook_events.emit(
            conn,
            candidate.account_id,
            "quota.low",
            {
                "account": candidate.account,
                "remaining": candidate.remaining,
                "threshold": candidate.threshold,
            },
            now,
        )
        lifecycle.set_armed(conn, candidate.account_id, False, now)
    log.info(
        "event=low_quota_reminder account=%s remaining=%d threshold=%d",
        candidate.account,
        candidate.remaining,
        candidate.threshold,
    )
    return True


def reminder_link(
    conn: psycopg.Connection,
    config: Config,
    now: dt.datetime,
    candidate: lifecycle.ReminderCandidate,
) -> DashboardLink | None:
    """The account-scoped dashboard link a reminder carries when the dashboard has an address
    ([web] public_url). Made in the reminder's transaction: a failed send leaves no link."""
    days = config.web.reminder_link_days
    if not config.web.public_url or days == 0:
        return None
    minted = web_links.mint_link(conn, candidate.account_id, now, now + dt.timedelta(days=days))
    url = account_link_url(config.web.public_url, candidate.account, minted.token)
    return DashboardLink(minted.id, url, minted.expires_at)
