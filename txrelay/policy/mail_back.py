"""Where a message's bounces and complaints go back to: its return path (the envelope sender
the milter gives it) and its CFBL headers (RFC 9477). Pure decisions: the secret is passed in.

The bounce domain D of a message is its sending domain's own return-path domain (`txrelay
domain set DOMAIN --return-path HOST`), else the relay-wide `[bounce] domain`; with neither,
the message keeps the shop's envelope sender and gets no CFBL headers. A connection with
`--bounces keep` keeps the shop's envelope sender (the shop reads its bounces itself) but its
mail still carries the CFBL headers: complaints are the relay's business either way.

RFC 9477 wants the CFBL-Address domain aligned with the d= domain of a valid DKIM signature
that covers the CFBL headers. When D is the author's signing domain or a subdomain of it
(alignment that needs no public-suffix list), the author's signature is enough. Otherwise
the CFBL address goes on the relay-wide bounce domain R and the relay signs the message a
second time with its own key ([bounce] dkim_key_file), d=R, as a mail service provider
signs as itself beside its customer; without that key such a message gets no CFBL headers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from txrelay.policy.return_path import cfbl_address, feedback_id, return_path
from txrelay.policy.snapshot import ConnectionPolicy, DomainPolicy

CFBL_ADDRESS = "CFBL-Address"
CFBL_FEEDBACK_ID = "CFBL-Feedback-ID"
CFBL_HEADERS = (CFBL_ADDRESS, CFBL_FEEDBACK_ID)


@dataclass(frozen=True)
class MailBack:
    """What the milter changes for one message. envelope_sender None: keep the shop's;
    cfbl_address None: no CFBL headers (then feedback_id is None too); relay_signer: the
    d= of the relay's own second signature ("" for none)."""

    bounce_domain: str
    envelope_sender: str | None = None
    cfbl_address: str | None = None  # the header's value: "fbl@D; report=arf"
    feedback_id: str | None = None
    relay_signer: str = ""


def bounce_domain(domain: DomainPolicy, relay_domain: str) -> str:
    """D: the sending domain's own return-path domain, else the relay's ("" when neither)."""
    return domain.return_path or relay_domain


def cfbl_aligned(bounce_domain_name: str, signing_domain: str) -> bool:
    """RFC 9477 alignment as txrelay applies it: D is the d= domain or a subdomain of it."""
    d, signing = bounce_domain_name.lower(), signing_domain.lower()
    return d == signing or d.endswith("." + signing)


def mail_back(
    secret: bytes | None,
    txn_id: uuid.UUID,
    domain: DomainPolicy,
    connection: ConnectionPolicy,
    relay_domain: str,
    *,
    relay_signs: bool = False,
) -> MailBack:
    """The return path and CFBL headers of one message signed for `domain` (its author's
    domain, the DKIM d=). Without a secret nothing can be authenticated: nothing changes.
    relay_signs: the relay has its own DKIM key for `relay_domain`."""
    target = bounce_domain(domain, relay_domain)
    if not target or secret is None:
        return MailBack(target)
    sender = None if connection.keep_bounces else return_path(secret, txn_id, target)
    feedback = feedback_id(secret, connection.account_id, connection.id, txn_id)
    if cfbl_aligned(target, domain.domain):
        return MailBack(target, sender, f"{cfbl_address(target)}; report=arf", feedback)
    if relay_signs and relay_domain:
        return MailBack(
            target, sender, f"{cfbl_address(relay_domain)}; report=arf", feedback, relay_domain
        )
    return MailBack(target, sender)
