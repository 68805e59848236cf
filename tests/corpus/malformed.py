"""A corpus of malformed and hostile messages, as a shop's client could put them into DATA.

Every case says what the relay must do with it:
- ACCEPT: relayed, with a DKIM signature of the connection's own domain that verifies at
  the receiving end;
- REFUSE: refused with the given reply code and enhanced code (e.g. "550 5.7.1");
- EITHER: the relay may refuse it (with a 5xx and a specific text) or relay it, but if it
  relays it the signature must verify.

The data is the message exactly as the client sends it (before dot-stuffing): bare CR,
bare LF and NUL bytes are deliberate. `Domains.own` is a sending domain of the connection
that sends the corpus, `Domains.foreign` one of another account.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

ACCEPT, REFUSE, EITHER = "accept", "refuse", "either"
LONG_LINE = "550 5.6.0"  # a line longer than 998 bytes (RFC 5322 2.1.1)
AUTHOR = "550 5.7.1"  # From:/Sender:/DKIM-Signature that this connection may not use
HIDDEN_DOMAIN = "550 5.1.7"  # a sender domain that hides what it is (issue 12)
TOO_LARGE = "550 5.6.0"  # an address header over the bounds the relay parses (issue 12)
TOO_MANY_HEADERS = "550 5.6.0"  # more header fields than [limits] max_headers (1000)
MAX_LINE = 998
CRLF = b"\r\n"

Field = tuple[str | bytes, str | bytes]


@dataclass(frozen=True)
class Domains:
    own: str
    foreign: str
    idn_unicode: str | None = None  # an IDN sending domain of the connection, Unicode form


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str = EITHER
    code: str = ""  # for REFUSE: "550 5.7.1"
    mail_from: str | None = None  # envelope sender; default shop@<own>


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def headers_for(d: Domains, *, from_: str | bytes | None = None) -> list[Field]:
    sender = from_ if from_ is not None else f"Shop <shop@{d.own}>"
    return [("From", sender), ("To", "Customer <customer@rcpt.example.net>"),
            ("Subject", "Your order"), ("Date", "Tue, 03 Nov 2026 10:00:00 +0100"),
            ("Message-ID", f"<corpus-{abs(hash(str(sender))) % 10**9}@{d.own}>"),
            ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8")]


def message(fields: Sequence[Field], body: bytes = b"Thank you for your order.\r\n",
            eol: bytes = CRLF) -> bytes:
    head = b"".join(_b(name) + b": " + _b(value) + eol for name, value in fields)
    return head + eol + body


def replace(fields: Sequence[Field], name: str, *values: str | bytes) -> list[Field]:
    """The fields with every `name` removed and `values` added in its first place."""
    index = next((i for i, (n, _) in enumerate(fields) if n == name), len(fields))
    kept = [f for f in fields if f[0] != name]
    return kept[:index] + [(name, v) for v in values] + kept[index:]


def line_ending_cases(d: Domains) -> Iterator[Case]:
    base = headers_for(d)
    yield Case("lf-only-message", message(base, b"Line one\nLine two\n", eol=b"\n"), ACCEPT)
    yield Case("lf-only-body", message(base, b"Line one\nLine two\n"), ACCEPT)
    yield Case("lf-headers-crlf-body", message(base, b"a\r\nb\r\n", eol=b"\n"), ACCEPT)
    yield Case("mixed-eol-headers", b"".join(
        _b(n) + b": " + _b(v) + (b"\n" if i % 2 else CRLF) for i, (n, v) in enumerate(base))
        + CRLF + b"body\r\n", ACCEPT)
    bodies = {
        "bare-cr-mid-line": b"one\rtwo\r\n", "bare-cr-line-end": b"one\r\rtwo\r\n",
        "cr-cr-lf": b"one\r\r\ntwo\r\n", "lf-cr": b"one\n\rtwo\n\r", "trailing-cr": b"end\r",
        "only-cr": b"\r\r\r\r", "cr-before-dot": b"one\r\n.\r\r\ntwo\r\n",
        "cr-lf-dot-cr": b"\r\n.\r", "cr-then-long": b"a\r" + b"b" * 900 + b"\r\n",
        "no-final-eol": b"no newline at the end", "lf-dot-lf": b"one\n.\ntwo\n",
        "dot-lines": b".\r\n..\r\n...\r\n.x\r\n", "trailing-whitespace": b"a  \t \r\n \r\n\t\r\n",
        "many-empty-lines": CRLF * 5000, "whitespace-only": b" \t \r\n",
    }
    for name, body in bodies.items():
        yield Case(f"eol-{name}", message(base, body))
    for name, value in {"subject-bare-cr": b"Your\rorder", "subject-cr-cr": b"a\r\rb",
                        "from-bare-cr": f"Shop\r<shop@{d.own}>".encode(),
                        "to-trailing-cr": b"customer@rcpt.example.net\r",
                        # Postfix drops the CR before the fold's LF (found by the generator
                        # of tests/milter/test_malformed.py, when the emulation kept it)
                        "subject-cr-before-fold": b"a\r\r\n b"}.items():
        field = "From" if name.startswith("from") else name.split("-")[0].capitalize()
        yield Case(f"eol-{name}", message(replace(base, field, value)))
    yield Case("eol-cr-before-separator", message(base).replace(CRLF + CRLF, b"\r\r\n\r\n", 1))
    yield Case("eol-cr-only-message", message(base, b"body\r", eol=b"\r"))


def nul_cases(d: Domains) -> Iterator[Case]:
    base = headers_for(d)
    yield Case("nul-in-body", message(base, b"one\x00two\r\n"))
    yield Case("nul-only-body", message(base, b"\x00" * 100 + CRLF))
    yield Case("nul-at-end", message(base, b"end\x00"))
    yield Case("nul-in-subject", message(replace(base, "Subject", b"Your\x00order")))
    yield Case("nul-in-from-name", message(replace(base, "From", f"Sh\x00op <shop@{d.own}>")))
    yield Case("nul-in-from-address", message(replace(base, "From", f"<shop\x00@{d.own}>")))
    yield Case("nul-hides-foreign-from", message(replace(
        base, "From", f"<shop@{d.own}>\x00<shop@{d.foreign}>")))
    yield Case("nul-in-header-name", message([*base, (b"X-N\x00ul", "value")]))
    yield Case("nul-before-separator", message(base).replace(CRLF + CRLF, CRLF + b"\x00" + CRLF))


def eight_bit_cases(d: Domains) -> Iterator[Case]:
    base = headers_for(d)
    subjects = {"latin1": "Bestellbestätigung".encode("latin-1"),
                "utf8": "Bestellbestätigung ✓".encode(), "invalid-utf8": b"\xff\xfe\xfd order",
                "overlong-utf8": b"\xc0\xaf order", "lone-surrogate": b"\xed\xa0\x80 order",
                "c1-controls": b"\xc2\x85\xc2\x9b order"}
    for name, value in subjects.items():
        yield Case(f"8bit-subject-{name}", message(replace(base, "Subject", value)), ACCEPT)
    yield Case("8bit-from-display-utf8", message(replace(
        base, "From", f"Bäckerei Müller <shop@{d.own}>".encode())), ACCEPT)
    yield Case("8bit-from-display-latin1", message(replace(
        base, "From", f"B\xe4ckerei <shop@{d.own}>".encode("latin-1"))))
    yield Case("8bit-from-local-part", message(replace(
        base, "From", f"<bäcker@{d.own}>".encode())))
    yield Case("8bit-to", message(replace(base, "To", "Jürgen <j@rcpt.example.net>".encode())),
               ACCEPT)
    yield Case("8bit-header-name", message([*base, ("X-Tëst", "value")]))
    yield Case("8bit-header-name-latin1", message([*base, (b"X-T\xe9st", "value")]))
    yield Case("8bit-header-name-invalid-utf8", message([*base, (b"X-\xff\xfe", "value")]))
    yield Case("8bit-header-value-invalid-utf8-from", message(replace(
        base, "From", b"\xff\xfe <shop@" + d.own.encode() + b">")))
    body_8bit = "Grüße aus München\r\n".encode()
    yield Case("8bit-body-declared", message(
        [*base, ("Content-Transfer-Encoding", "8bit")], body_8bit), ACCEPT)
    yield Case("8bit-body-claims-7bit", message(
        [*base, ("Content-Transfer-Encoding", "7bit")], body_8bit), ACCEPT)
    binary = bytes(b for b in range(256) if b not in (0, 10, 13))
    yield Case("8bit-body-all-bytes", message(base, binary + CRLF))
    yield Case("8bit-body-latin1", message(base, "Grüße\r\n".encode("latin-1")), ACCEPT)


def folding_cases(d: Domains) -> Iterator[Case]:
    base = headers_for(d)
    yield Case("fold-subject-tab", message(replace(base, "Subject", "Your\r\n\torder")), ACCEPT)
    yield Case("fold-subject-many", message(replace(
        base, "Subject", "\r\n ".join(f"w{i}" for i in range(300)))), ACCEPT)
    yield Case("fold-from", message(replace(base, "From", f"Shop\r\n <shop@{d.own}>")), ACCEPT)
    yield Case("fold-inside-address", message(replace(base, "From", f"<shop@\r\n {d.own}>")))
    yield Case("fold-lf-only", message(replace(base, "Subject", "Your\n order")), ACCEPT)
    yield Case("fold-whitespace-only-line", message(replace(base, "Subject", "a\r\n \r\n b")))
    yield Case("fold-empty-continuation", message(replace(base, "Subject", "a\r\n\r\n b")))
    yield Case("fold-first-line-continuation", b" continued\r\n" + message(base))
    yield Case("header-empty-value", message([*base, ("X-Empty", "")]), ACCEPT)
    no_colon = message([*base[:3], (b"NoColonHere", b""), *base[3:]])
    yield Case("header-no-colon", no_colon.replace(b"NoColonHere: ", b"NoColon"))
    yield Case("header-space-before-colon", message([*base, ("X-Spaced ", "value")]))
    yield Case("header-no-space-after-colon", message(base).replace(b"Subject: ", b"Subject:"),
               ACCEPT)
    yield Case("header-name-only-colon", message([*base, ("", "nameless")]))
    yield Case("header-2000-fields", message([*base, *[(f"X-F{i}", "v") for i in range(2000)]]),
               REFUSE, TOO_MANY_HEADERS)
    yield Case("header-1000-fields", message([*base, *[(f"X-F{i}", "v") for i in range(990)]]),
               ACCEPT)
    big = "\r\n ".join("x" * 70 for _ in range(850))  # ~60 KB in 850 short lines
    yield Case("header-60kb-folded", message([*base, ("X-Big", big)]), ACCEPT)
    yield Case("header-60kb-one-line", message([*base, ("X-Big", "x" * 60000)]), REFUSE,
               LONG_LINE)
    yield Case("header-60kb-folded-subject", message(replace(base, "Subject", big)), ACCEPT)
    yield Case("header-name-999", message([*base, ("X" * 999, "v")]), REFUSE, LONG_LINE)
    for name, value in {"encoded-b": "=?utf-8?b?QmVzdGVsbHVuZyDinJM=?=",
                        "encoded-q": "=?iso-8859-1?q?Best=E4tigung?=",
                        "encoded-unknown-charset": "=?x-unknown?q?abc?=",
                        "encoded-broken-b64": "=?utf-8?b?!!!?=",
                        "encoded-unterminated": "=?utf-8?q?abc",
                        "encoded-many": " ".join(["=?utf-8?q?a?="] * 60)}.items():
        yield Case(f"rfc2047-subject-{name}", message(replace(base, "Subject", value)), ACCEPT)
    yield Case("rfc2047-from-display", message(replace(
        base, "From", f"=?utf-8?q?B=C3=A4ckerei?= <shop@{d.own}>")), ACCEPT)
    yield Case("rfc2047-display-hides-foreign", message(replace(
        base, "From", f"=?utf-8?q?shop=40{d.foreign}?= <shop@{d.own}>")), ACCEPT)
    yield Case("rfc2047-in-address", message(replace(
        base, "From", f"<=?utf-8?q?shop?=@{d.own}>")))
    yield Case("rfc2047-encodes-foreign-address", message(replace(
        base, "From", f"=?utf-8?q?shop=40{d.foreign}?=")), REFUSE, AUTHOR)


def _line_of(total: int, prefix: bytes = b"") -> bytes:
    return prefix + b"x" * (total - len(prefix))


def long_line_cases(d: Domains) -> Iterator[Case]:
    base = headers_for(d)
    for length in (76, 997, 998):
        yield Case(f"body-line-{length}", message(base, _line_of(length) + CRLF), ACCEPT)
    for length in (999, 1000, 2048, 2049, 4096, 100_000):
        yield Case(f"body-line-{length}", message(base, _line_of(length) + CRLF), REFUSE,
                   LONG_LINE)
    yield Case("body-last-line-998-no-eol", message(base, b"a\r\n" + _line_of(998)), ACCEPT)
    yield Case("body-last-line-999-no-eol", message(base, b"a\r\n" + _line_of(999)), REFUSE,
               LONG_LINE)
    yield Case("body-line-999-lf", message(base, _line_of(999) + b"\n"), REFUSE, LONG_LINE)
    yield Case("body-line-999-bare-cr-inside", message(base, _line_of(500) + b"\r"
                                                        + _line_of(498) + CRLF))
    yield Case("body-many-998-lines", message(base, (_line_of(998) + CRLF) * 200), ACCEPT)
    yield Case("body-long-line-after-many", message(base, (b"ok\r\n" * 3000)
                                                     + _line_of(1500) + CRLF), REFUSE, LONG_LINE)
    for length in (998, 999, 2000):
        value = "s" * (length - len("Subject: "))
        expect = ACCEPT if length <= MAX_LINE else REFUSE
        yield Case(f"header-line-{length}", message(replace(base, "Subject", value)), expect,
                   LONG_LINE if expect == REFUSE else "")
    folded_long = "short\r\n " + "y" * 1200
    yield Case("header-folded-continuation-1201", message(replace(base, "Subject", folded_long)),
               REFUSE, LONG_LINE)
    yield Case("header-long-to", message(replace(base, "To", ", ".join(
        f"r{i}@rcpt.example.net" for i in range(200)))), REFUSE, LONG_LINE)
    yield Case("header-long-to-folded", message(replace(base, "To", ",\r\n ".join(
        f"r{i}@rcpt.example.net" for i in range(200)))), ACCEPT)


def structure_cases(d: Domains) -> Iterator[Case]:
    base = headers_for(d)
    yield Case("empty-body", message(base, b""), ACCEPT)
    yield Case("no-separator-no-body", b"".join(_b(n) + b": " + _b(v) + CRLF for n, v in base),
               ACCEPT)
    # Postfix's cleanup adds "From: <envelope sender>" (and Date, Message-Id) when missing.
    yield Case("only-separator", CRLF)
    yield Case("only-text", b"just some text\r\n")
    yield Case("mbox-from-line-first", b"From shop@x Tue Nov  3 10:00:00 2026\r\n" + message(base))
    yield Case("body-from-line", message(base, b"From here on\r\n>From there\r\n"), ACCEPT)
    yield Case("body-looks-like-headers", message(base, b"From: x@evil.example\r\n\r\nz\r\n"),
               ACCEPT)
    yield Case("body-contains-end-of-data", message(base, b"a\r\n.\r\nMAIL FROM:<x@y>\r\n"),
               ACCEPT)
    for dropped in ("Date", "Message-ID", "To", "Subject", "MIME-Version"):
        yield Case(f"no-{dropped.lower()}", message([f for f in base if f[0] != dropped]), ACCEPT)
    yield Case("only-from", message([("From", f"<shop@{d.own}>")]), ACCEPT)
    for duplicated in ("Date", "Message-ID", "Subject", "To", "Content-Type"):
        value = next(v for n, v in base if n == duplicated)
        yield Case(f"duplicate-{duplicated.lower()}",
                   message(replace(base, duplicated, value, value)))
    yield Case("message-id-no-brackets", message(replace(base, "Message-ID", f"x@{d.own}")),
               ACCEPT)
    yield Case("message-id-empty", message(replace(base, "Message-ID", "")))
    yield Case("client-list-help", message([*base, ("List-Help", "<mailto:x@evil.example>")]),
               ACCEPT)
    yield Case("client-list-help-three", message([*base, *[("List-Help", f"<mailto:{i}@e.x>")
                                                           for i in range(3)]]), ACCEPT)
    yield Case("client-list-help-crlf", message([*base, ("List-Help", "a\r\nBcc: x@e.x")]))
    yield Case("client-dkim-own", message([("DKIM-Signature",
                                            f"v=1; a=rsa-sha256; d={d.own}; s=x; b=AAAA"),
                                           *base]))
    yield Case("client-dkim-foreign", message([("DKIM-Signature",
                                                f"v=1; a=rsa-sha256; d={d.foreign}; s=x; "
                                                "bh=AAAA; h=from; b=AAAA"), *base]),
               REFUSE, AUTHOR)
    yield Case("client-dkim-garbage", message([("DKIM-Signature", "garbage"), *base]))


def from_cases(d: Domains) -> Iterator[Case]:
    base = headers_for(d)
    own, foreign = f"shop@{d.own}", f"shop@{d.foreign}"

    def with_from(*values: str | bytes) -> bytes:
        return message(replace(base, "From", *values))

    yield Case("from-missing", message([f for f in base if f[0] != "From"]))
    yield Case("from-duplicate-same", with_from(own, own), REFUSE, AUTHOR)
    yield Case("from-duplicate-foreign-second", with_from(own, foreign), REFUSE, AUTHOR)
    yield Case("from-duplicate-foreign-first", with_from(foreign, own), REFUSE, AUTHOR)
    yield Case("from-two-mailboxes-own", with_from(f"{own}, info@{d.own}"), REFUSE, AUTHOR)
    yield Case("from-two-mailboxes-foreign", with_from(f"{own}, {foreign}"), REFUSE, AUTHOR)
    yield Case("from-group", with_from(f"Team: {own};"), REFUSE, AUTHOR)
    yield Case("from-empty-group", with_from("undisclosed-recipients:;"), REFUSE, AUTHOR)
    yield Case("from-foreign", with_from(foreign), REFUSE, AUTHOR)
    yield Case("from-foreign-uppercase", with_from(foreign.upper()), REFUSE, AUTHOR)
    yield Case("from-foreign-display-own", with_from(f"{own} <{foreign}>"), REFUSE, AUTHOR)
    yield Case("from-quoted-display-own-address-foreign", with_from(f"\"{own}\" <{foreign}>"),
               REFUSE, AUTHOR)
    yield Case("from-quoted-display-foreign-domain", with_from(f"\"{d.foreign}\" <{own}>"),
               ACCEPT)
    yield Case("from-quoted-display-foreign-address", with_from(f"\"{foreign}\" <{own}>"),
               ACCEPT)
    yield Case("from-unquoted-display-foreign-address", with_from(f"{foreign} <{own}>"))
    yield Case("from-own-uppercase", with_from(own.upper()), ACCEPT)
    yield Case("from-own-trailing-dot", with_from(f"<{own}.>"))
    yield Case("from-subdomain-of-own", with_from(f"shop@sub.{d.own}"), REFUSE, AUTHOR)
    yield Case("from-own-as-prefix", with_from(f"shop@{d.own}.evil.example"), REFUSE, AUTHOR)
    yield Case("from-own-as-suffix", with_from(f"shop@evil{d.own}"), REFUSE, AUTHOR)
    yield Case("from-ip-literal", with_from("shop@[127.0.0.1]"), REFUSE, AUTHOR)
    yield Case("from-quoted-local-foreign", with_from(f"\"{foreign}\"@{d.own}"))
    yield Case("from-percent-hack", with_from(f"shop%{d.foreign}@{d.own}"))
    yield Case("from-bang-path", with_from(f"{d.foreign}!shop@{d.own}"))
    yield Case("from-source-route", with_from(f"<@{d.foreign}:{own}>"))
    yield Case("from-source-route-to-foreign", with_from(f"<@{d.own}:{foreign}>"), REFUSE,
               AUTHOR)
    yield Case("from-comment-foreign", with_from(f"{own} ({foreign})"))
    yield Case("from-comment-in-domain", with_from(f"shop@(c){d.own}"))
    for name, value in {"double-angle": f"<<{own}>>", "no-domain": "shop", "no-local": f"@{d.own}",
                        "empty-domain": "shop@", "unbalanced-quote": f"\"Shop <{own}>",
                        "unclosed-comment": f"{own} (comment", "unclosed-angle": f"<{own}",
                        "double-at": f"shop@@{d.own}", "stray-angle": f"{own}>",
                        "empty": "", "whitespace": "   ", "only-angles": "<>",
                        "semicolon": f"{own};", "two-at": f"a@b@{d.own}",
                        "backslash": f"sh\\op@{d.own}", "brackets-in-domain": f"shop@[{d.own}]",
                        "domain-literal-garbage": "shop@[garbage]",
                        "space-in-domain": f"shop@{d.own} .evil"}.items():
        yield Case(f"from-unparsable-{name}", with_from(value))
    yield Case("sender-own", message([*base, ("Sender", f"ops@{d.own}")]), ACCEPT)
    yield Case("sender-foreign", message([*base, ("Sender", foreign)]), REFUSE, AUTHOR)
    yield Case("sender-two-mailboxes", message([*base, ("Sender", f"a@{d.own}, b@{d.own}")]),
               REFUSE, AUTHOR)
    yield Case("sender-twice", message([*base, ("Sender", own), ("Sender", own)]), REFUSE, AUTHOR)
    yield Case("sender-unparsable", message([*base, ("Sender", "<<x")]), REFUSE, AUTHOR)
    yield Case("sender-display-trick", message([*base, ("Sender", f"{own} <{foreign}>")]),
               REFUSE, AUTHOR)
    yield Case("reply-to-foreign", message([*base, ("Reply-To", foreign)]), ACCEPT)
    yield Case("envelope-foreign", message(base), REFUSE, AUTHOR, mail_from=foreign)
    if d.idn_unicode:
        yield Case("from-idn-unicode", with_from(f"Shop <shop@{d.idn_unicode}>".encode()), ACCEPT)
        puny = d.idn_unicode.encode("idna").decode("ascii")
        yield Case("from-idn-punycode", with_from(f"Shop <shop@{puny}>"), ACCEPT)
        yield Case("from-idn-unicode-uppercase", with_from(
            f"<SHOP@{d.idn_unicode.upper()}>".encode()))


def hostile_from_cases(d: Domains) -> Iterator[Case]:
    """Address headers that cost CPU to parse, and domains that hide what they are."""
    base = headers_for(d)

    def with_from(value: str | bytes, name: str = "From") -> bytes:
        return message(replace(base, name, value))

    label, _, rest = d.own.partition(".")
    yield Case("from-60kb-folded-commas", with_from(",\r\n " * 20_000), REFUSE, TOO_LARGE)
    yield Case("from-many-mailboxes", with_from(", ".join(f"s{n}@{d.own}" for n in range(40))),
               REFUSE, TOO_LARGE)
    yield Case("from-nested-comments", with_from("(" * 2000 + ")" * 2000 + f" shop@{d.own}"),
               REFUSE, TOO_LARGE)
    yield Case("from-nested-comments-shallow", with_from(f"(a (b (c))) shop@{d.own}"), ACCEPT)
    yield Case("sender-60kb", message([*base, ("Sender", ",\r\n " * 20_000)]), REFUSE,
               TOO_LARGE)
    for name, hidden in {"zero-width-space": "\u200b", "soft-hyphen": "\u00ad",
                         "zero-width-joiner": "\u200d", "lrm": "\u200e", "rlo": "\u202e",
                         "bom": "\ufeff", "variation-selector": "\ufe0f"}.items():
        domain = f"{label[:1]}{hidden}{label[1:]}.{rest}"
        yield Case(f"from-domain-{name}", with_from(f"Shop <shop@{domain}>".encode()),
                   REFUSE, HIDDEN_DOMAIN)
    encoded = "=?utf-8?b?" + base64.b64encode(d.own.encode()).decode() + "?="
    yield Case("from-domain-encoded-word", with_from(f"shop@{encoded}"), REFUSE, HIDDEN_DOMAIN)
    yield Case("from-domain-encoded-word-angle", with_from(f"Shop <shop@{encoded}>"), REFUSE,
               HIDDEN_DOMAIN)
    wide = "".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in label)
    yield Case("from-domain-full-width", with_from(f"Shop <shop@{wide}.{rest}>".encode()),
               REFUSE, HIDDEN_DOMAIN)


def mime_cases(d: Domains) -> Iterator[Case]:
    base = [f for f in headers_for(d) if f[0] != "Content-Type"]

    def multipart(boundary: str, body: bytes, ctype: str = "multipart/mixed") -> bytes:
        return message([*base, ("Content-Type", f"{ctype}; boundary=\"{boundary}\"")], body)

    part = b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    yield Case("mime-ok", multipart("b", part + b"--b--\r\n"), ACCEPT)
    yield Case("mime-unclosed", multipart("b", part), ACCEPT)
    yield Case("mime-no-boundary-param", message([*base, ("Content-Type", "multipart/mixed")],
                                                 part), ACCEPT)
    yield Case("mime-wrong-boundary", multipart("zzz", part + b"--b--\r\n"), ACCEPT)
    nested = b"".join(f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n"
                      .encode() for i in range(60))
    yield Case("mime-nested-60", multipart("b0", nested + b"deep\r\n"), ACCEPT)
    yield Case("mime-bad-base64", multipart("b", b"--b\r\nContent-Transfer-Encoding: base64\r\n"
                                            b"\r\n!!!not base64***\r\n--b--\r\n"), ACCEPT)
    yield Case("mime-garbage-type", message([*base, ("Content-Type", ";;;==\"")]), ACCEPT)
    yield Case("mime-8bit-part", multipart("b", "--b\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                                           "Grüße\r\n--b--\r\n".encode()), ACCEPT)
    yield Case("mime-qp-broken", message([*base, ("Content-Transfer-Encoding",
                                                  "quoted-printable")], b"a=\r\nb=ZZ=\r\n"),
               ACCEPT)
    yield Case("mime-long-boundary-line", multipart("q" * 1000, b"--" + b"q" * 1000 + b"\r\n"),
               REFUSE, LONG_LINE)
    yield Case("mime-part-headers-no-colon", multipart("b", b"--b\r\nno colon\r\n\r\nx\r\n--b--"
                                                       b"\r\n"), ACCEPT)


def control_character_cases(d: Domains) -> Iterator[Case]:
    """Every C0 control and DEL in the Subject, the From display name and the body."""
    base = headers_for(d)
    for code in [*range(1, 32), 127]:
        char = bytes([code])
        tag = f"{code:02x}"
        yield Case(f"ctl-{tag}-subject", message(replace(base, "Subject", b"Your" + char
                                                         + b"order")))
        yield Case(f"ctl-{tag}-from-name", message(replace(
            base, "From", b"Sh" + char + b"op <shop@" + d.own.encode() + b">")))
        yield Case(f"ctl-{tag}-body", message(base, b"one" + char + b"two\r\n"))


def line_ending_matrix(d: Domains) -> Iterator[Case]:
    """Bodies that matter for DKIM's body hash, each with CRLF and with bare LF line ends."""
    base = headers_for(d)
    bodies = {"empty-lines-at-end": b"a\r\n\r\n\r\n\r\n", "only-crlf": CRLF,
              "spaces-at-end": b"a\r\n   \r\n", "tabs-inside": b"a\t\tb\r\n",
              "single-char": b"a", "dot": b".\r\n", "dot-dot": b"..\r\n",
              "space-dot": b" .\r\n", "long-997": _line_of(997) + CRLF,
              "mixed-whitespace": b" \t a \t \r\n\t\r\n", "8bit": "€uro\r\n".encode()}
    for name, body in bodies.items():
        yield Case(f"matrix-crlf-{name}", message(base, body), ACCEPT)
        yield Case(f"matrix-lf-{name}", message(base, body.replace(CRLF, b"\n"), eol=b"\n"),
                   ACCEPT)


FAMILIES = (line_ending_cases, nul_cases, eight_bit_cases, folding_cases, long_line_cases,
            structure_cases, from_cases, hostile_from_cases, mime_cases,
            control_character_cases, line_ending_matrix)


def corpus(domains: Domains) -> list[Case]:
    """Every case; names are unique."""
    cases = [case for family in FAMILIES for case in family(domains)]
    names = [case.name for case in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, duplicates
    return cases
