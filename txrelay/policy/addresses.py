"""Parses envelope addresses and the From: header the way the relay must judge them."""

from __future__ import annotations

import email.errors
import email.headerregistry
import email.policy
import re
from dataclasses import dataclass

from txrelay.policy.verdict import Verdict

_FROM_PARSER = email.headerregistry.HeaderRegistry()

# The forms nearly every message uses, which need no full RFC 5322 parser (about a tenth of
# the milter's CPU at end of message): addr-spec, or a display name of plain atoms or one
# simple quoted string before <addr-spec>. Anything else goes to email.headerregistry; a
# test checks that both agree on everything the fast path takes.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"(?P<local>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
_ANGLE_ADDR = "<" + _ADDR_SPEC.replace("?P<", "?P<a") + ">"  # groups alocal, adomain
_SIMPLE_MAILBOX = re.compile(
    rf'(?:{_ADDR_SPEC}|(?:{_ATEXT}(?: {_ATEXT})*|"[ !#-\[\]-~]+") {_ANGLE_ADDR})')


def envelope_address(raw: str) -> str:
    """The address inside MAIL FROM / RCPT TO: angle brackets and source routes removed."""
    value = raw.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if value.startswith("@") and ":" in value:  # obsolete source route <@a,@b:user@host>
        value = value.split(":", 1)[1]
    return value.strip()


def address_domain(address: str) -> str | None:
    """The domain of local@domain in DNS form, or None when there is none."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return dns_form(domain)


def dns_form(domain: str) -> str:
    """Lower case, no trailing dot, IDN to punycode (how sending domains are stored)."""
    value = domain.strip().rstrip(".").lower()
    if value.isascii():
        return value
    try:
        return value.encode("idna").decode("ascii")
    except UnicodeError:
        return value


@dataclass(frozen=True)
class HeaderSender:
    """The single author mailbox of a message's From: header."""

    address: str
    domain: str


def header_sender(from_values: list[str]) -> HeaderSender | Verdict:
    """The author of the message, or the 550 that explains why there is none we can accept.

    DMARC judges the From: header, so it must hold exactly one mailbox in exactly one field.
    """
    if not from_values:
        return _from_refusal("the message has no From: header; add one with an address of a "
                             "sending domain of this connection")
    if len(from_values) > 1:
        return _from_refusal("the message has more than one From: header; send exactly one")
    mailboxes = _mailboxes(from_values[0])
    if mailboxes is None:
        return _from_refusal("the From: header cannot be parsed; use the form "
                             "\"Name <user@example.com>\"")
    if not mailboxes:
        return _from_refusal("the From: header holds no address; give exactly one address of "
                             "a sending domain of this connection")
    if len(mailboxes) != 1:
        return _from_refusal(f"the From: header holds {len(mailboxes)} addresses; it must "
                             "hold exactly one")
    address = mailboxes[0]
    domain = address_domain(address)
    if domain is None:
        return _from_refusal("the From: header address has no domain; use user@example.com")
    return HeaderSender(address, domain)


def header_mailboxes(value: str) -> list[str] | None:
    """The addr-specs of an address header (From:, Sender:), or None when unparsable."""
    return _mailboxes(value)


def _mailboxes(value: str) -> list[str] | None:
    """The addr-specs of the header, or None when it is not a clean RFC 5322 mailbox list."""
    simple = _SIMPLE_MAILBOX.fullmatch(value)
    if simple is not None:
        local, domain = simple.group("local", "domain")
        if local is None:
            local, domain = simple.group("alocal", "adomain")
        return [f"{local}@{domain}"]
    if "\x00" in value or "\r" in value.replace("\r\n", ""):
        return None
    try:
        header = _FROM_PARSER("from", value)
    except (email.errors.HeaderParseError, ValueError, IndexError, TypeError, AttributeError):
        return None
    if getattr(header, "defects", None):
        return None
    found: list[str] = []
    for group in header.groups:  # type: ignore[attr-defined]
        if group.display_name is not None:  # RFC 5322 group syntax is not an author
            return None
        for mailbox in group.addresses:
            if not mailbox.username or not mailbox.domain:
                return None
            found.append(f"{mailbox.username}@{mailbox.domain}")
    return found


def _from_refusal(text: str) -> Verdict:
    return Verdict.reject("550", "5.7.1", text)
