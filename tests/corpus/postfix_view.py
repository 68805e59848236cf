"""What a milter receives for a message, approximately as Postfix's cleanup hands it over.

Lines: every CR right before a line's LF is removed, as Postfix's SMTP reader does (a
client's "a CR CR LF" reaches the milter and the receiver as "a"; tests/e2e/test_malformed.py
checks it through real Postfix). Headers: one (name, value) per field, folding kept with LF
line ends, the whitespace after the colon removed; the header section ends at the first
empty line or at the first line that is neither a field nor a continuation. Body: line ends
become CRLF. This is an emulation for fast milter tests; the e2e corpus run through real
Postfix is the truth.
"""

from __future__ import annotations

import re

_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)$", re.DOTALL)


def postfix_view(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    lines = raw.split(b"\n")
    headers: list[tuple[str, bytes]] = []
    index = 0
    for index, line in enumerate(lines):  # noqa: B007 - index is used after the loop
        text = line.rstrip(b"\r")
        if headers and text[:1] in (b" ", b"\t"):
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + text)
            continue
        match = _FIELD.match(text)
        if not match:
            break
        name = match.group(1).decode("ascii")  # Postfix: 8-bit names end the header
        headers.append((name, match.group(2).lstrip(b" \t")))
    else:
        index = len(lines)
    rest = lines[index:]
    if rest and rest[0].rstrip(b"\r") == b"":
        rest = rest[1:]
    body_lines = [line.rstrip(b"\r") for line in rest]
    body = b"\r\n".join(body_lines)
    if rest and not raw.endswith(b"\n"):
        body += b"\r\n"  # Postfix ends the last line
    return headers, body
