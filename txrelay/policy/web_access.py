"""Who may see which dashboard page (no I/O): the admin sees everything, an account link
sees its own account's pages only."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote

TOKEN_BYTES = 32  # 256 bits: a link token cannot be guessed
MIN_ADMIN_TOKEN = 32  # characters of [web] admin_token_file


@dataclass(frozen=True)
class Viewer:
    """The signed-in viewer: the admin (account None) or one account's link."""

    account: str | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.account is None

    def may_see(self, account: str | None) -> bool:
        """Whether this viewer may see `account`'s pages (None: the relay-wide pages)."""
        return self.is_admin or (account is not None and account == self.account)


@dataclass(frozen=True)
class StoredLink:
    account: str
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    account_deleted: bool

    def valid(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and not self.account_deleted and now < self.expires_at


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the database keeps of a link token."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_admin_token(presented: str, admin_token: str) -> bool:
    """Constant-time comparison with the configured admin token (never equal when unset)."""
    return bool(admin_token) and hmac.compare_digest(presented.encode(), admin_token.encode())


def account_link_url(base_url: str, account: str, token: str) -> str:
    """The address of `account`'s dashboard page signed in by a link's `token`."""
    return f"{base_url.rstrip('/')}/accounts/{quote(account, safe='')}?token={token}"
