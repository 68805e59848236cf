"""Decides at end of message: size, line length, who the message claims to be from (From:,
Sender:, a client's DKIM-Signature) and the headers the relay adds."""

from __future__ import annotations

import re
from dataclasses import dataclass

from txrelay.policy.addresses import (
    HeaderSender,
    address_domain,
    dns_form,
    domain_refusal,
    header_sender,
    parse_mailboxes,
)
from txrelay.policy.names import InvalidDomain
from txrelay.policy.publication import dkim_publication_refusal
from txrelay.policy.sender import check_author_domain
from txrelay.policy.snapshot import ConnectionPolicy, PolicySnapshot
from txrelay.policy.verdict import Verdict

# RFC 5322 2.1.1. Postfix's smtp client breaks longer lines on delivery
# (smtp_line_length_limit), after the milter signed them: the signature would not verify.
MAX_LINE_BYTES = 998
_D_TAG = re.compile(r"(?:^|;)\s*d\s*=\s*([^;\s]*)")


@dataclass(frozen=True)
class IdentityHeaders:
    """The header values (unfolded text) that say who a message is from."""

    from_values: list[str]
    sender_values: list[str]
    signature_values: list[str]  # the client's own DKIM-Signature headers


def check_size(size: int, max_message_size: int) -> Verdict | None:
    if size <= max_message_size:
        return None
    limit_mb = max_message_size / (1024 * 1024)
    return Verdict.reject(
        "552",
        "5.3.4",
        f"message size exceeds the limit of {limit_mb:g} MB; send smaller attachments or a link",
    )


def check_header_count(count: int, max_headers: int) -> Verdict | None:
    """More header fields than [limits] max_headers (counted as they stream in)."""
    if count <= max_headers:
        return None
    return Verdict.reject(
        "550",
        "5.6.0",
        f"the message has more than {max_headers} header "
        "fields, the relay's limit; send fewer headers",
    )


def check_session_messages(count: int, max_messages: int) -> Verdict | None:
    """The count-th MAIL of one SMTP session, past [limits] max_messages_per_session."""
    if count <= max_messages:
        return None
    return Verdict.tempfail(
        "421",
        "4.7.0",
        f"this session has sent {max_messages} messages, "
        "the relay's limit per session; reconnect to send more",
    )


def check_lines(header_line_too_long: bool, body_line_too_long: bool) -> Verdict | None:
    """Lines longer than MAX_LINE_BYTES (measured as the message streams in)."""
    if header_line_too_long:
        return Verdict.reject(
            "550",
            "5.6.0",
            f"a header line is longer than {MAX_LINE_BYTES} "
            "bytes; fold long headers (RFC 5322 2.2.3) or encode them",
        )
    if body_line_too_long:
        return Verdict.reject(
            "550",
            "5.6.0",
            f"a body line is longer than {MAX_LINE_BYTES} "
            "bytes; encode the body (quoted-printable or base64)",
        )
    return None


def check_identity(
    snapshot: PolicySnapshot, connection: ConnectionPolicy, headers: IdentityHeaders
) -> HeaderSender | Verdict:
    """The author, if From:, Sender: and any client DKIM-Signature all name this
    connection's domains."""
    author = check_author(snapshot, connection, headers.from_values)
    if isinstance(author, Verdict):
        return author
    refusal = check_sender_header(connection, headers.sender_values) or check_client_signatures(
        connection, headers.signature_values
    )
    return refusal or author


def check_sender_header(connection: ConnectionPolicy, values: list[str]) -> Verdict | None:
    """Sender: names who sent the mail on the author's behalf: at most one, one mailbox, of a
    domain of this connection (a foreign one would let a shop speak for another)."""
    if not values:
        return None
    mailboxes = parse_mailboxes("Sender", values[0]) if len(values) == 1 else None
    if isinstance(mailboxes, Verdict) and mailboxes.enhanced_code != "5.7.1":
        return mailboxes  # too large to read, or a refused domain: say exactly that
    if not isinstance(mailboxes, list) or len(mailboxes) != 1:
        return Verdict.reject(
            "550",
            "5.7.1",
            "the Sender: header must appear at most once and "
            "hold exactly one address of a sending domain of this connection; "
            "remove it or fix it",
        )
    try:
        domain = address_domain(mailboxes[0])
    except InvalidDomain as exc:
        return domain_refusal(exc)
    if domain is None or domain not in connection.domains:
        return Verdict.reject(
            "550",
            "5.7.1",
            f'Sender: header domain {domain} is not enabled for connection "{connection.name}"',
        )
    return None


def check_client_signatures(connection: ConnectionPolicy, values: list[str]) -> Verdict | None:
    """A client's own DKIM-Signature may stay only if it is for one of its domains: a copied
    signature of another domain must never leave through this relay."""
    for value in values:
        match = _D_TAG.search(value)
        domain = dns_form(match.group(1)) if match else ""
        if domain not in connection.domains:
            shown = domain or "no d= domain"
            if len(shown) > 64:  # d= is not bounded like an address header: keep the reply short
                shown = f"{shown[:40]}... of {len(shown)} characters"
            return Verdict.reject(
                "550",
                "5.7.1",
                f"the message carries a DKIM-Signature "
                f"({shown}) of a domain not enabled for connection "
                f'"{connection.name}"; remove it, the relay signs',
            )
    return None


def check_author(
    snapshot: PolicySnapshot, connection: ConnectionPolicy, from_values: list[str]
) -> HeaderSender | Verdict:
    """The From: author, if it is one mailbox of a domain of this connection with a key."""
    author = header_sender(from_values)
    if isinstance(author, Verdict):
        return author
    refusal = check_author_domain(connection, author.domain)
    if refusal is not None:
        return refusal
    if author.domain not in snapshot.domains:
        return Verdict.tempfail(
            "451",
            "4.7.0",
            f"sending domain {author.domain} has no DKIM key loaded yet; try again in a minute",
        )
    # Sandbox mail (captured, never delivered) may come from a domain not yet published.
    publication = dkim_publication_refusal(
        snapshot.domains[author.domain], sandbox=connection.sandbox
    )
    return publication or author


def list_help_value(list_help: str) -> str:
    """RFC 2369 form: the URL or mailto: target in angle brackets."""
    return f"<{list_help}>"


def new_message_id(token: str, domain: str) -> str:
    return f"<{token}@{domain}>"
