"""The connection policy the milter caches: an immutable snapshot of who may send what."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConnectionPolicy:
    """One connection as the milter sees it, found by its SASL username."""

    id: int
    name: str
    account_id: int
    enabled: bool
    domains: frozenset[str]
    rate_limit: int  # recipients per sliding hour; 0 = unlimited (already defaulted)
    credential: str = ""  # the password hash's fingerprint: changes when it is rotated
    # When this milter process first saw this credential enabled (its monotonic clock);
    # 0.0 for what it found at start. Sessions that began earlier may hold the old one.
    credential_since: float = 0.0
    # True: the shop's own envelope sender stays (`connection set --bounces keep`), for
    # shops that process their bounces themselves; False: the relay's return path.
    keep_bounces: bool = False
    # True: a sandbox connection (`connection create --sandbox`): its mail takes the whole
    # path but is captured, not delivered, and reserves rate only, no quota.
    sandbox: bool = False


@dataclass(frozen=True)
class DomainKey:
    """One DKIM key a domain signs with: its selector and the parsed private key."""

    selector: str
    algorithm: str  # 'rsa' or 'ed25519'
    signing_key: Any = field(repr=False, compare=False)  # never logged or printed


@dataclass(frozen=True)
class DomainPolicy:
    """A sending domain: its List-Help target and its DKIM signing key (parsed once)."""

    domain: str
    account_id: int
    list_help: str
    selector: str
    algorithm: str  # 'rsa' or 'ed25519'
    signing_key: Any = field(repr=False, compare=False)  # never logged or printed
    return_path: str = ""  # its own bounce domain (`domain set --return-path`); "": relay's
    # Its DKIM records are in DNS (domain check found them), or [dkim] require_published
    # is off: live mail may leave. False: pending, live mail is refused.
    published: bool = True
    # A second key of the other algorithm (dual signing); the first is the fields above.
    second_key: DomainKey | None = None

    @property
    def keys(self) -> tuple[DomainKey, ...]:
        """Every key a message from this domain is signed with."""
        first = DomainKey(self.selector, self.algorithm, self.signing_key)
        return (first,) if self.second_key is None else (first, self.second_key)


@dataclass(frozen=True)
class AccountPolicy:
    id: int
    paid: bool  # ever had a booked or plan block: out of quota means overage, not refusal
    name: str = ""
    disabled: bool = False  # 'account disable': refused at MAIL
    overage_cap: int | None = None  # recipients per billing month beyond quota; None = no cap


@dataclass(frozen=True)
class PolicySnapshot:
    """Everything the per-message path needs, loaded in one go; replaced, never changed."""

    version: int
    connections: Mapping[str, ConnectionPolicy]  # by SASL username
    domains: Mapping[str, DomainPolicy]  # by domain (DNS form, lower case)
    accounts: Mapping[int, AccountPolicy]

    def account(self, account_id: int) -> AccountPolicy:
        return self.accounts.get(account_id, AccountPolicy(account_id, paid=False))


def effective_rate_limit(rate_limit: int | None, paid: bool, demo_rate_limit: int) -> int:
    """The hourly limit that applies: the connection's own (0 = unlimited), else the default
    for demo accounts, else unlimited for paid accounts."""
    if rate_limit is not None:
        return rate_limit
    return 0 if paid else demo_rate_limit
