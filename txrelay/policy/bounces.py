"""What a failed delivery means for the recipient: the one classification every source of
bounces (Postfix's own log, a DSN that comes back later) uses.

    hard   the address does not work (5.1.x, 5.2.1 disabled, null MX): suppress it
    soft   it may work later (4.x.x, 5.2.2 mailbox full, 5.3.x system): count it
    block  the receiver refused the message or the relay, not the address (5.7.x policy or
           reputation, 5.6.x content, 5.3.4 too big): never suppresses
"""

from __future__ import annotations

import enum
import re

_STATUS_RE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")


class BounceKind(enum.Enum):
    HARD = "hard"
    SOFT = "soft"
    BLOCK = "block"


# Subject.detail codes of permanent failures that say nothing about the address.
_NOT_THE_ADDRESS = {(3, 4), (5, 3)}  # message too big for the system; too many recipients
# Subject.detail codes of permanent failures that may heal (RFC 3463 / RFC 7505).
_MAY_HEAL = {(2, 2), (3, 1), (3, 2), (4, 5)}  # mailbox full, system full/not accepting, congestion

_SOFT_WORDS = re.compile(
    r"mailbox (is )?full|over ?quota|quota exceeded|insufficient storage", re.I
)
_BLOCK_WORDS = re.compile(r"spam|blocked|blacklist|block ?list|reputation|policy|dmarc", re.I)
_HARD_WORDS = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|"
    r"mailbox unavailable|recipient rejected|address rejected|invalid recipient",
    re.I,
)


def parse_status(status: str) -> tuple[int, int, int] | None:
    """'5.1.1' -> (5, 1, 1); None when it is not an enhanced status code."""
    match = _STATUS_RE.fullmatch(status.strip())
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3])


def classify(status: str, diagnostic: str = "") -> BounceKind:
    """The kind of a failure from its enhanced status code (RFC 3463) and, where the code is
    the unspecific x.0.0, the words of the receiver's diagnostic."""
    code = parse_status(status)
    if code is None or code[0] == 4:
        return BounceKind.SOFT
    if code[0] == 2:  # not a failure at all: the caller should not have asked
        return BounceKind.SOFT
    _, subject, detail = code
    if (subject, detail) in _MAY_HEAL:
        return BounceKind.SOFT
    if (subject, detail) in _NOT_THE_ADDRESS or subject in (6, 7):
        return BounceKind.BLOCK
    if subject in (1, 2) and (subject, detail) != (2, 0):
        return BounceKind.HARD  # bad address, disabled or unknown mailbox, null MX (5.1.10)
    if subject == 4 and detail in (1, 4):
        return BounceKind.HARD  # no answer from host / unable to route: no mail server
    return _from_words(diagnostic)


def _from_words(diagnostic: str) -> BounceKind:
    if _SOFT_WORDS.search(diagnostic):
        return BounceKind.SOFT
    if _BLOCK_WORDS.search(diagnostic):
        return BounceKind.BLOCK
    if _HARD_WORDS.search(diagnostic):
        return BounceKind.HARD
    return BounceKind.SOFT  # a permanent failure nobody explains: count it, do not suppress
