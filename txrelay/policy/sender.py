"""Decides MAIL FROM: who is sending (the SASL login), and may they use this sender domain."""

from __future__ import annotations

from txrelay.policy.addresses import address_domain, domain_refusal, envelope_address
from txrelay.policy.names import InvalidDomain
from txrelay.policy.publication import dkim_publication_refusal
from txrelay.policy.snapshot import ConnectionPolicy, PolicySnapshot
from txrelay.policy.verdict import Verdict

NOT_AUTHENTICATED = Verdict.reject(
    "530",
    "5.7.0",
    "authentication required: log in with the SMTP credentials of your "
    "txrelay connection (AUTH over STARTTLS on port 587)",
)


def authorize_sender(
    snapshot: PolicySnapshot, sasl_username: str | None, mail_from: str
) -> ConnectionPolicy | Verdict:
    """The connection allowed to send this envelope sender, or the refusal."""
    if not sasl_username:
        return NOT_AUTHENTICATED
    connection = snapshot.connections.get(sasl_username.strip().lower())
    if connection is None or not connection.enabled:
        return Verdict.reject(
            "550",
            "5.7.1",
            f"SMTP login {sasl_username!r} belongs to no active connection; "
            "ask the relay administrator to enable it or to issue new credentials",
        )
    account = snapshot.account(connection.account_id)
    if account.disabled:
        return Verdict.reject(
            "550",
            "5.7.1",
            f"account {account.name or connection.account_id} is disabled; no mail is "
            "accepted for it: contact the relay administrator",
        )
    sender = envelope_address(mail_from)
    if not sender:
        return Verdict.reject(
            "550",
            "5.7.1",
            f"the null sender <> is not accepted for connection "
            f'"{connection.name}"; send with an address of one of its sending domains',
        )
    try:
        domain = address_domain(sender)
    except InvalidDomain as exc:
        return domain_refusal(exc)
    allowed = check_sender_domain(connection, domain, sender)
    if isinstance(allowed, Verdict) or domain is None:
        return allowed
    # Sandbox mail (captured, never delivered) may come from a domain not yet published.
    publication = dkim_publication_refusal(snapshot.domains.get(domain), sandbox=allowed.sandbox)
    return publication or allowed


def check_sender_domain(
    connection: ConnectionPolicy, domain: str | None, shown: str
) -> ConnectionPolicy | Verdict:
    """The envelope sender's domain must be one of the connection's sending domains."""
    if domain is None:
        return Verdict.reject(
            "550",
            "5.7.1",
            f"sender {shown!r} has no domain; use an address such as shop@example.com",
        )
    if domain not in connection.domains:
        return Verdict.reject(
            "550",
            "5.7.1",
            f'sender domain {domain} is not enabled for connection "{connection.name}"',
        )
    return connection


def check_author_domain(connection: ConnectionPolicy, domain: str) -> Verdict | None:
    """The From: header domain must be one of the connection's domains (DMARC alignment)."""
    if domain in connection.domains:
        return None
    return Verdict.reject(
        "550",
        "5.7.1",
        f'From: header domain {domain} is not enabled for connection "{connection.name}"',
    )
