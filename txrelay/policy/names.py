"""Validates and normalises names an admin types: domains, List-Help, addresses, selectors."""

from __future__ import annotations

import enum
import ipaddress
import re
import unicodedata
import urllib.parse

import idna

from txrelay.errors import InvalidInput

MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_LIST_HELP_LENGTH = 512
MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
MAX_NAME_LENGTH = 200
MAX_SELECTOR_LENGTH = 200

_LDH_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# RFC 5322 dot-atom text: the local parts a shop's mail system will actually use.
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
# A URL in a header: visible ASCII except the delimiters RFC 2369 wraps it in.
_URL_CHARS = re.compile(r"^[\x21-\x7e]+$")


class DomainProblem(enum.Enum):
    """Why a domain name was refused: each gets its own sentence and, in the milter, reply."""

    SYNTAX = "syntax"
    ENCODED_WORD = "encoded-word"
    INVISIBLE = "invisible"
    NOT_ROUND_TRIP = "not-round-trip"


class InvalidDomain(InvalidInput):
    """A domain name the relay does not take; `problem` says which rule it broke."""

    def __init__(self, message: str, problem: DomainProblem) -> None:
        super().__init__(message)
        self.problem = problem


def dns_domain(text: str) -> str:
    """The one IDN rule of txrelay (CLI and milter alike): UTS 46 non-transitional mapping
    and IDNA 2008 (the `idna` package), lower-case A-labels, no trailing dot.

    ß and ς stay themselves (faß.example is xn--fa-hia.example, not fass.example). A name
    that does not read back as typed is refused rather than mapped: an encoded word, a
    character UTS 46 would silently drop (zero-width, soft hyphen) or a bidi control, and any
    other mapping than lower case (full-width letters, ligatures, a bad xn-- label)."""
    candidate = text[:-1] if text.endswith(".") and not text.endswith("..") else text
    if _PLAIN_NAME.fullmatch(candidate) and "--" not in candidate:
        return candidate.lower()  # what IDNA gives an LDH name, without its cost per RCPT
    if not candidate:
        raise InvalidDomain(
            "the domain name is empty; give a name such as shop.example.com", DomainProblem.SYNTAX
        )
    if len(candidate) > MAX_DOMAIN_LENGTH:  # before any per-character work (a d= of 100 KB)
        raise InvalidDomain(
            f"{_shown(candidate[:40])}... is {len(candidate)} characters long; "
            f"a domain name has at most {MAX_DOMAIN_LENGTH}",
            DomainProblem.SYNTAX,
        )
    if "=?" in candidate and "?=" in candidate:
        raise InvalidDomain(
            f"{text!r} is an encoded word (RFC 2047), which is not allowed in "
            "a domain; write the domain itself (e.g. bücher.example)",
            DomainProblem.ENCODED_WORD,
        )
    hidden = next((c for c in candidate if _is_invisible(c)), None)
    if hidden is not None:
        raise InvalidDomain(
            f"{_shown(text)} contains the invisible character "
            f"U+{ord(hidden):04X} ({unicodedata.name(hidden, 'unnamed')}); "
            "remove it",
            DomainProblem.INVISIBLE,
        )
    if _has_space_or_control(candidate) or any(c in candidate for c in _NOT_IN_DOMAINS):
        raise InvalidDomain(
            f"{_shown(text)} is not a domain name: it may contain only "
            "letters, digits, hyphens and dots (example: shop.example.com)",
            DomainProblem.SYNTAX,
        )
    try:
        ascii_form = idna.encode(candidate, uts46=True).decode("ascii").lower()
        reads_back = idna.decode(ascii_form)
        mapped = idna.uts46_remap(candidate, std3_rules=True, transitional=False)
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidDomain(
            f"{_shown(text)} is not a valid domain name ({exc}); use a name "
            "such as shop.example.com or an internationalised name such as "
            "bücher.de",
            DomainProblem.SYNTAX,
        ) from exc
    if mapped != _lower_each(candidate) or idna.encode(reads_back).decode("ascii") != ascii_form:
        raise InvalidDomain(
            f"{_shown(text)} does not read back as written (it would be "
            f"{reads_back}); write the domain in its own form",
            DomainProblem.NOT_ROUND_TRIP,
        )
    return ascii_form


def normalize_domain(text: str) -> str:
    """A sending domain as the admin types it, in its DNS form (dns_domain), fully
    qualified and of DNS shape."""
    ascii_form = dns_domain(text.strip(" "))
    _check_dns_shape(text, ascii_form)
    return ascii_form


_PLAIN_NAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
# Characters that are never part of a domain, and the ones an attacker can paste into
# one: shells, SQL, URLs and mail syntax.
_NOT_IN_DOMAINS = "@/:\\<>\"'; "


def _is_invisible(char: str) -> bool:
    """Format characters (zero-width, soft hyphen, bidi controls, BOM) and what UTS 46
    drops without a trace (variation selectors, the combining grapheme joiner). ZWJ and
    ZWNJ too, although IDNA 2008 allows them in a few scripts (Persian, Indic): such a
    domain cannot be a sending domain, the price of refusing the classic way of making a
    From: look like another domain."""
    if char.isascii():
        return False
    if unicodedata.category(char) == "Cf":
        return True
    try:
        return idna.uts46_remap(char, std3_rules=False, transitional=False) == ""
    except idna.IDNAError:
        return False


def _lower_each(text: str) -> str:
    """Lower case character by character, as UTS 46 maps it (str.lower() would turn a
    final Σ into ς, which UTS 46 does not)."""
    return "".join(c.lower() for c in text)


def _shown(text: str) -> str:
    """The domain in a message: printable, invisible characters as escapes."""
    return ascii(text) if any(not c.isprintable() for c in text) else repr(text)


def _check_dns_shape(text: str, ascii_form: str) -> None:
    labels = ascii_form.split(".")
    if len(ascii_form) > MAX_DOMAIN_LENGTH:
        raise InvalidInput(f"{text!r} is longer than {MAX_DOMAIN_LENGTH} characters in DNS form")
    if len(labels) < 2:
        raise InvalidInput(
            f"{text!r} is not a fully qualified domain name; give the full name such as example.com"
        )
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise InvalidInput(
                f"{text!r} is not a valid domain name: label {label!r} must be "
                f"1-{MAX_LABEL_LENGTH} letters, digits or inner hyphens"
            )
    if labels[-1].isdigit():
        raise InvalidInput(
            f"{text!r} looks like an IP address; a sending domain must be a domain name"
        )


def normalize_list_help(text: str) -> str:
    """A List-Help target (RFC 2369): an http(s) URL or a mailto: address, stored bare.

    One enclosing pair of angle brackets (the header form) is accepted and removed; the
    milter adds them back when it writes the header.
    """
    value = text
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if not value:
        raise InvalidInput("List-Help is empty; give an https:// URL or a mailto: address")
    if _has_space_or_control(value):
        raise InvalidInput(
            "List-Help must not contain spaces, line breaks or control "
            "characters; give one URL such as https://example.com/help"
        )
    if not _URL_CHARS.match(value):
        raise InvalidInput(
            "List-Help must be plain ASCII: use the punycode (xn--) form of the "
            "host and percent-encode other characters"
        )
    if "<" in value or ">" in value:
        raise InvalidInput("List-Help must not contain angle brackets inside the URL")
    if len(value) > MAX_LIST_HELP_LENGTH:
        raise InvalidInput(
            f"List-Help is {len(value)} characters long; keep it under "
            f"{MAX_LIST_HELP_LENGTH} so the header stays on one line"
        )
    scheme, sep, rest = value.partition(":")
    scheme = scheme.lower()
    if sep and scheme in {"http", "https"}:
        return _normalize_http_url(scheme, rest)
    if sep and scheme == "mailto":
        return _normalize_mailto(rest)
    raise InvalidInput(
        f"List-Help {value!r} must start with https://, http:// or mailto: "
        "(for example https://example.com/help or mailto:help@example.com)"
    )


def _normalize_http_url(scheme: str, rest: str) -> str:
    parts = urllib.parse.urlsplit(f"{scheme}:{rest}")
    if not rest.startswith("//") or not parts.hostname:
        raise InvalidInput(
            f"List-Help {scheme}:{rest} has no host; give a URL such as https://example.com/help"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "List-Help must not contain a user name or password: every recipient can read it"
        )
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        normalize_domain(host)
    try:
        parts.port  # noqa: B018 - urllib validates the port on access
    except ValueError as exc:
        raise InvalidInput(f"List-Help has an invalid port ({exc})") from exc
    return f"{scheme}:{rest}"


def _normalize_mailto(rest: str) -> str:
    address, _, query = rest.partition("?")
    if not address:
        raise InvalidInput("List-Help mailto: needs an address, e.g. mailto:help@example.com")
    normalized = normalize_email(urllib.parse.unquote(address))
    return f"mailto:{normalized}" + (f"?{query}" if query else "")


def normalize_email(text: str) -> str:
    """An e-mail address (local@domain) with the domain in DNS form."""
    if _has_space_or_control(text) or "<" in text or ">" in text:
        raise InvalidInput(
            f"{text!r} is not an e-mail address: no spaces, brackets or control "
            "characters (example: admin@example.com)"
        )
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise InvalidInput(f"{text!r} is not an e-mail address; give one such as admin@example.com")
    if len(local) > MAX_LOCAL_PART_LENGTH or not _DOT_ATOM.match(local):
        raise InvalidInput(
            f"{text!r} is not an e-mail address: the part before @ may hold "
            f"letters, digits and .!#$%&'*+/=?^_`{{|}}~- (at most "
            f"{MAX_LOCAL_PART_LENGTH}), no leading, trailing or double dots"
        )
    address = f"{local}@{normalize_domain(domain)}"
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidInput(f"{text!r} is longer than {MAX_ADDRESS_LENGTH} characters")
    return address


def normalize_selector(text: str) -> str:
    """A DKIM selector: one or more DNS labels, lower case (e.g. txr202611 or 2026.mail)."""
    value = text.strip(" ").lower()
    if not value or len(value) > MAX_SELECTOR_LENGTH or not _SELECTOR.match(value):
        raise InvalidInput(
            f"{text!r} is not a valid DKIM selector; use letters, digits and "
            "inner hyphens, optionally dot-separated labels (example: txr202611)"
        )
    return value


def validate_name(text: str, what: str = "name") -> str:
    """An account or connection name: printable text, no control characters, NFC."""
    value = unicodedata.normalize("NFC", text)
    if not value.strip():
        raise InvalidInput(f'the {what} is empty; give a name such as "Web shop"')
    if value != value.strip():
        raise InvalidInput(f"the {what} {text!r} starts or ends with spaces; remove them")
    if _has_control(value):
        raise InvalidInput(f"the {what} {text!r} contains line breaks or control characters")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"the {what} is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    return value


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for c in text)


def _has_space_or_control(text: str) -> bool:
    return _has_control(text) or any(c.isspace() for c in text)
