"""Which RCPT commands Postfix queues as separate copies: its duplicate filter, mirrored.

Postfix's cleanup (cleanup_out_recipient.c) drops a recipient when its key was seen before
in the message: with enable_original_recipient = yes (the default) the key is DSN ORCPT,
NOTIFY, the original recipient and the rewritten recipient; with "no", the rewritten
recipient alone. The key is case-folded (been_here BH_FLAG_FOLD). smtpd gives a RCPT
without ORCPT the DSN ORCPT "rfc822;" + the address as the client wrote it, brackets
removed. The milter must bill exactly the copies Postfix queues, so it keys the same way.

The rewritten recipient is a function of the original one (canonical maps), so the
original stands for both. Postfix stops remembering keys past dup_filter_limit (1000);
smtpd_recipient_limit (1000) keeps a message below it unless an admin raised one alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from txrelay.policy.addresses import envelope_address

_NOTIFY_WORDS = ("NEVER", "SUCCESS", "FAILURE", "DELAY")
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
_UXTEXT_CHAR = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
POSTFIX_DUP_FILTER_LIMIT = 1000


def duplicate_key(rcpt_to: str, params: Sequence[str], *, original_recipient: bool) -> str:
    """The key under which Postfix's duplicate filter files this RCPT."""
    address = internal_form(envelope_address(rcpt_to))
    if not original_recipient:
        return address.lower()
    notify = 0
    orcpt: str | None = None
    for param in params:
        keyword, _, value = param.partition("=")
        if keyword.upper() == "NOTIFY":
            notify = _notify_mask(value)
        elif keyword.upper() == "ORCPT":
            orcpt = _decoded_orcpt(value)
    if orcpt is None:
        written = rcpt_to.strip()
        if written.startswith("<") and written.endswith(">"):
            written = written[1:-1]
        orcpt = f"rfc822;{written}"
    return f"{orcpt}\n{notify}\n{address}".lower()


def internal_form(address: str) -> str:
    """local@domain with a quoted local part unquoted, as smtpd hands it to cleanup
    ("a"@x and a@x are one recipient)."""
    local, at, domain = address.rpartition("@")
    if at and len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
        return f"{local}@{domain}"
    return address


def _notify_mask(value: str) -> int:
    """NOTIFY=SUCCESS,FAILURE and NOTIFY=failure,success are the same bit mask to Postfix."""
    words = {word.strip().upper() for word in value.split(",")}
    return sum(1 << index for index, word in enumerate(_NOTIFY_WORDS) if word in words)


def _decoded_orcpt(value: str) -> str:
    """type;address with the xtext (RFC 3461) or utf-8 (RFC 6533) encoding undone, as smtpd
    stores it."""
    kind, _, coded = value.partition(";")
    text = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), coded)
    if kind.lower() == "utf-8":
        text = _UXTEXT_CHAR.sub(lambda m: chr(int(m.group(1), 16)), text)
    return f"{kind};{text}"
