"""Decides whether a domain may send yet: its DKIM records must be in DNS before live mail.

One decision function, for the envelope sender's domain at MAIL and the From: header's
domain at end of message. Sandbox mail (captured, never delivered) is allowed from a
pending domain, so a shop can test its integration while its DNS changes propagate.
"""

from __future__ import annotations

from txrelay.policy.snapshot import DomainPolicy
from txrelay.policy.verdict import Verdict


def dkim_publication_refusal(
    domain: DomainPolicy | None, *, sandbox: bool = False
) -> Verdict | None:
    """None when DOMAIN may send this mail; else the 550 5.7.26 naming the record(s) to
    publish and the command that checks them. A domain the snapshot does not know is for the
    caller's other checks to refuse (None here)."""
    if domain is None or domain.published or sandbox:
        return None
    names = " and ".join(f"{key.selector}._domainkey.{domain.domain}" for key in domain.keys)
    records = "record" if len(domain.keys) == 1 else "records"
    return Verdict.reject(
        "550",
        "5.7.26",
        f"{domain.domain} may not send yet: its DKIM {records} {names} must be published "
        f"in DNS first ('txrelay domain dns {domain.domain}' prints them); then the relay "
        f"administrator runs 'txrelay domain check {domain.domain}'",
    )
