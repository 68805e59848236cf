"""Decides at end of message: size, the author (From:) and the headers the relay adds."""

from __future__ import annotations

from txrelay.policy.addresses import HeaderSender, header_sender
from txrelay.policy.sender import check_author_domain
from txrelay.policy.snapshot import ConnectionPolicy, PolicySnapshot
from txrelay.policy.verdict import Verdict


def check_size(size: int, max_message_size: int) -> Verdict | None:
    if size <= max_message_size:
        return None
    limit_mb = max_message_size / (1024 * 1024)
    return Verdict.reject("552", "5.3.4", f"message size exceeds the limit of "
                          f"{limit_mb:g} MB; send smaller attachments or a link")


def check_author(snapshot: PolicySnapshot, connection: ConnectionPolicy,
                 from_values: list[str]) -> HeaderSender | Verdict:
    """The From: author, if it is one mailbox of a domain of this connection with a key."""
    author = header_sender(from_values)
    if isinstance(author, Verdict):
        return author
    refusal = check_author_domain(connection, author.domain)
    if refusal is not None:
        return refusal
    if author.domain not in snapshot.domains:
        return Verdict.tempfail("451", "4.7.0", f"sending domain {author.domain} has no "
                                "DKIM key loaded yet; try again in a minute")
    return author


def list_help_value(list_help: str) -> str:
    """RFC 2369 form: the URL or mailto: target in angle brackets."""
    return f"<{list_help}>"


def new_message_id(token: str, domain: str) -> str:
    return f"<{token}@{domain}>"
