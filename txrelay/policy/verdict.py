"""The typed result of every relay decision, and the SMTP replies the relay gives."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    TEMPFAIL = "tempfail"
    REJECT = "reject"
    # A sandbox connection's message: captured by the relay, the client gets 250, the MTA
    # drops it (SMFIS_DISCARD).
    DISCARD = "discard"


@dataclass(frozen=True)
class Verdict:
    """What to answer: an action and, for refusals, the SMTP reply (code, enhanced code, text)."""

    action: Action
    smtp_code: str = ""
    enhanced_code: str = ""
    text: str = ""

    def __post_init__(self) -> None:
        refusal = self.action in (Action.TEMPFAIL, Action.REJECT)
        if refusal and not (self.smtp_code and self.enhanced_code and self.text):
            raise ValueError("a refusal needs an SMTP code, an enhanced code and a text")
        if refusal:
            expected = "4" if self.action is Action.TEMPFAIL else "5"
            if self.smtp_code[0] != expected or self.enhanced_code[0] != expected:
                raise ValueError(
                    f"{self.action.value} needs {expected}xx codes, got "
                    f"{self.smtp_code} {self.enhanced_code}"
                )

    @property
    def refused(self) -> bool:
        return self.action in (Action.TEMPFAIL, Action.REJECT)

    @property
    def label(self) -> str:
        """Short form for the log line: 'accept', or e.g. '550 5.7.1'."""
        if self.refused:
            return f"{self.smtp_code} {self.enhanced_code}"
        return self.action.value

    @classmethod
    def proceed(cls) -> Verdict:
        return cls(Action.CONTINUE)

    @classmethod
    def accept(cls) -> Verdict:
        return cls(Action.ACCEPT)

    @classmethod
    def discard(cls) -> Verdict:
        return cls(Action.DISCARD)

    @classmethod
    def reject(cls, smtp_code: str, enhanced_code: str, text: str) -> Verdict:
        return cls(Action.REJECT, smtp_code, enhanced_code, text)

    @classmethod
    def tempfail(cls, smtp_code: str, enhanced_code: str, text: str) -> Verdict:
        return cls(Action.TEMPFAIL, smtp_code, enhanced_code, text)


def service_unavailable(service: str) -> Verdict:
    """451 4.3.0 when Redis or PostgreSQL does not answer: the client retries later."""
    return Verdict.tempfail(
        "451",
        "4.3.0",
        f"{service} temporarily unavailable; the message "
        "was not accepted, please try again in a few minutes",
    )


QUOTA_SERVICE = "quota service (Redis)"
LEDGER_SERVICE = "relay database (PostgreSQL)"
