"""Parses envelope addresses and the From: header the way the relay must judge them."""

from __future__ import annotations

import email.headerregistry
import email.policy
import re
from dataclasses import dataclass

from txrelay.policy.names import DomainProblem, InvalidDomain, dns_domain
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
    rf'(?:{_ADDR_SPEC}|(?:{_ATEXT}(?: {_ATEXT})*|"[ !#-\[\]-~]+") {_ANGLE_ADDR})'
)


def envelope_address(raw: str) -> str:
    """The address inside MAIL FROM / RCPT TO: angle brackets and source routes removed."""
    value = raw.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if value.startswith("@") and ":" in value:  # obsolete source route <@a,@b:user@host>
        value = value.split(":", 1)[1]
    return value.strip()


def address_domain(address: str) -> str | None:
    """The domain of local@domain in DNS form (names.dns_domain), or None when there is
    none. Raises InvalidDomain for a domain that hides what it is (encoded word, invisible
    character, a name that does not read back as written); one that is merely not a domain
    name (an IP literal) is returned lower-cased and matches no sending domain."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    try:
        return dns_domain(domain)
    except InvalidDomain as exc:
        if exc.problem is DomainProblem.SYNTAX:  # no sending domain: "not enabled" says it
            return domain.lower()
        raise


def dns_form(domain: str) -> str:
    """The DNS form of a domain for a comparison only: what dns_domain gives, or the text
    lower-cased when it refuses it (so it matches no sending domain)."""
    try:
        return dns_domain(domain)
    except InvalidDomain:
        return domain.lower()


def domain_refusal(problem: InvalidDomain, *, recipient: bool = False) -> Verdict:
    """550 for a domain that breaks the IDN rule: 5.1.3 (bad destination address syntax)
    for a recipient, 5.1.7 (bad sender's mailbox address syntax) for a sender or author;
    5.1.8 would say the sender's domain does not exist, which is not what we know."""
    return Verdict.reject("550", "5.1.3" if recipient else "5.1.7", str(problem))


# Bounds checked before an address header (From:, Sender:) reaches the RFC 5322 parser,
# whose cost grows with the number of tokens (about 15 us each here: 28 s for 60 KB of
# folded commas). A real author header is one mailbox and a display name of a few words,
# a few hundred bytes even when encoded; within these bounds a parse costs a few ms.
MAX_ADDRESS_HEADER_LENGTH = 1024  # characters of the unfolded value
MAX_ADDRESS_HEADER_MAILBOXES = 16  # "@" signs: each mailbox has one
MAX_ADDRESS_HEADER_TOKENS = 128  # RFC 5322 specials and blanks: what the parser splits on
_SPECIALS = '()<>[]:;@\\,." \t\n'


# An RFC 2047 encoded word where the domain should be: the parser would decode it (the
# signature would then name a domain the receiver does not see) or call the header broken.
_ENCODED_DOMAIN = re.compile(r"@\s*=\?[^?\s]*\?[BbQq]\?")
_ENCODED_DOMAIN_ERROR = InvalidDomain(
    "the address domain in the header is an encoded word (RFC 2047), which is not allowed "
    "in an address; write the domain itself",
    DomainProblem.ENCODED_WORD,
)


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
        return _from_refusal(
            "the message has no From: header; add one with an address of a "
            "sending domain of this connection"
        )
    if len(from_values) > 1:
        return _from_refusal("the message has more than one From: header; send exactly one")
    mailboxes = parse_mailboxes("From", from_values[0])
    if isinstance(mailboxes, Verdict):
        return mailboxes
    if not mailboxes:
        return _from_refusal(
            "the From: header holds no address; give exactly one address of "
            "a sending domain of this connection"
        )
    if len(mailboxes) != 1:
        return _from_refusal(
            f"the From: header holds {len(mailboxes)} addresses; it must hold exactly one"
        )
    address = mailboxes[0]
    try:
        domain = address_domain(address)
    except InvalidDomain as exc:
        return domain_refusal(exc)
    if domain is None:
        return _from_refusal("the From: header address has no domain; use user@example.com")
    return HeaderSender(address, domain)


def parse_mailboxes(name: str, value: str) -> list[str] | Verdict:
    """The addr-specs of an address header (From:, Sender:), or the 550 saying why not."""
    over = header_bound(name, value)
    if over is not None:
        return over
    mailboxes = _ENCODED_DOMAIN_ERROR if _ENCODED_DOMAIN.search(value) else _mailboxes(value)
    if mailboxes is None:
        return _from_refusal(
            f'the {name}: header cannot be parsed; use the form "Name <user@example.com>"'
        )
    if isinstance(mailboxes, InvalidDomain):
        return domain_refusal(mailboxes)
    return mailboxes


def header_bound(name: str, value: str) -> Verdict | None:
    """550 5.6.0 when the header is larger than any real author header, before any parsing:
    a length, then a few C-speed counts."""
    if len(value) > MAX_ADDRESS_HEADER_LENGTH:
        return _bound_refusal(
            f"the {name}: header is {len(value)} characters long; the relay "
            f"reads address headers of at most {MAX_ADDRESS_HEADER_LENGTH}: "
            "shorten the display name"
        )
    mailboxes = value.count("@")
    if mailboxes > MAX_ADDRESS_HEADER_MAILBOXES:
        return _bound_refusal(
            f"the {name}: header names {mailboxes} addresses; the relay "
            f"reads at most {MAX_ADDRESS_HEADER_MAILBOXES} (and From: must "
            "hold exactly one)"
        )
    tokens = sum(value.count(c) for c in _SPECIALS)
    if tokens > MAX_ADDRESS_HEADER_TOKENS:
        return _bound_refusal(
            f"the {name}: header has {tokens} separators (spaces, commas, "
            f"dots, brackets); the relay reads at most "
            f"{MAX_ADDRESS_HEADER_TOKENS}: use the form "
            '"Name <user@example.com>"'
        )
    return None


def _mailboxes(value: str) -> list[str] | InvalidDomain | None:
    """The addr-specs of the header, None when it is not a clean RFC 5322 mailbox list, or
    the problem of a domain the parser decoded (an encoded word)."""
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
    # The stdlib parser meets hostile input with assorted errors (HeaderParseError,
    # ValueError, IndexError, RecursionError for nested comments, ...): each means the
    # header is not a mailbox list we can judge, never a reason to fail the message 4xx.
    except Exception:  # noqa: BLE001
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
            if mailbox.domain not in value:  # decoded from an encoded word: not what it says
                return _ENCODED_DOMAIN_ERROR
            found.append(f"{mailbox.username}@{mailbox.domain}")
    return found


def _from_refusal(text: str) -> Verdict:
    return Verdict.reject("550", "5.7.1", text)


def _bound_refusal(text: str) -> Verdict:
    return Verdict.reject("550", "5.6.0", text)
