"""The low-quota reminder e-mail: what it says, and sending it by SMTP ([notify])."""

from __future__ import annotations

import datetime as dt
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Protocol

from txrelay.config import NotifyConfig
from txrelay.errors import ServiceUnavailable
from txrelay.policy.forecast import Forecast, Usage

__all__ = ["DashboardLink", "Forecast", "Mailer", "Reminder", "SmtpMailer", "Usage", "compose"]


@dataclass(frozen=True)
class DashboardLink:
    """A read-only link to the account's dashboard page, made for this reminder."""

    link_id: int
    url: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Reminder:
    account: str
    admin_email: str
    remaining: int
    threshold: int
    usage: Usage
    now: dt.datetime
    dashboard: DashboardLink | None = None  # None: [web] public_url unset, or no link wanted

    @property
    def forecast(self) -> Forecast:
        return Forecast(self.remaining, self.usage, self.now)

    def runs_out_at(self) -> dt.datetime | None:
        """When the quota is used up at the current rate (None: no mail lately)."""
        return self.forecast.runs_out_at

    def detail(self) -> dict[str, object]:
        """What notifications.detail records."""
        runs_out = self.runs_out_at()
        return {
            "remaining": self.remaining,
            "threshold": self.threshold,
            "to": self.admin_email,
            "last_24h": self.usage.last_day,
            "last_7d": self.usage.last_week,
            "runs_out_at": runs_out.isoformat() if runs_out else None,
            # The link's id, never its token: `txrelay web revoke ID` stops it.
            "dashboard_link_id": self.dashboard.link_id if self.dashboard else None,
        }


def compose(reminder: Reminder, from_address: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = from_address
    message["To"] = reminder.admin_email
    message["Subject"] = (
        f"txrelay: quota of {reminder.account} is below {reminder.threshold:,} mails"
    )
    message["Date"] = format_datetime(reminder.now)
    message["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_body(reminder))
    return message


def _body(reminder: Reminder) -> str:
    forecast = reminder.forecast.sentence()
    return (
        f'Hello,\n\nthe account "{reminder.account}" has {reminder.remaining:,} mails of '
        f"quota left, below your reminder threshold of {reminder.threshold:,}.\n\n"
        f"Mails sent in the last 24 hours: {reminder.usage.last_day:,}\n"
        f"Mails sent in the last 7 days:   {reminder.usage.last_week:,}\n\n"
        f"{forecast}\n\n"
        "Book more quota to keep sending without overage charges (paid accounts) or "
        "refusals (demo accounts). This reminder is sent once each time the quota falls "
        "below the threshold; booking more quota re-arms it.\n" + _dashboard(reminder.dashboard)
    )


def _dashboard(link: DashboardLink | None) -> str:
    if link is None:
        return ""
    return (
        "\nThe account's usage, quota blocks and delivery figures are on its dashboard page "
        f"(read-only, this link works until {link.expires_at:%Y-%m-%d %H:%M} UTC):\n"
        f"{link.url}\n"
    )


class Mailer(Protocol):
    """What hands a reminder on for delivery: the local MTA (SmtpMailer), a list in tests."""

    def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    """Hands the reminder to the MTA at [notify] smtp_host:smtp_port."""

    def __init__(self, config: NotifyConfig, timeout: float = 10.0) -> None:
        self.config = config
        self.timeout = timeout

    def send(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(
                self.config.smtp_host, self.config.smtp_port, timeout=self.timeout
            ) as smtp:
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise ServiceUnavailable(
                f"cannot send the quota reminder via {self.config.smtp_host}:"
                f"{self.config.smtp_port} ({exc}); check [notify] smtp_host/smtp_port"
            ) from exc
