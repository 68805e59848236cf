"""What the bench checks at the sink: the count, DKIM signatures, List-Help."""

from __future__ import annotations

import email.parser
import random
from dataclasses import dataclass
from pathlib import Path

import dkim

from bench.procs import BenchFailure
from bench.sink import message_bytes


@dataclass(frozen=True)
class Signer:
    """A DKIM key the bench expects at the sink: d=, s= and the DNS record's p=."""

    domain: str
    selector: str
    public_key_b64: str
    list_help: bool  # txrelay adds List-Help; OpenDKIM does not

    def dns(self, name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        if text.rstrip(".").lower() == f"{self.selector}._domainkey.{self.domain}":
            return f"v=DKIM1; k=rsa; p={self.public_key_b64}".encode()
        return None


def check_count(what: str, *, sent: int, accepted: int, delivered: int, queued: int) -> None:
    """Every message sent must be accepted and delivered exactly once; nothing may be left
    in the queue. Anything else makes the run worthless: raise."""
    problems = []
    if accepted != sent:
        problems.append(f"the client had {accepted} of {sent} messages accepted")
    if delivered != sent:
        problems.append(f"the sink received {delivered} messages, expected {sent}")
    if queued:
        problems.append(f"{queued} messages are still in Postfix's queue")
    if problems:
        raise BenchFailure(f"{what}: wrong message count: " + "; ".join(problems))


def check_signed(what: str, dumps: list[Path], signer: Signer | None, sample: int,
                 seed: int = 0) -> int:
    """Verify the DKIM signature (and List-Help) of `sample` dumps (0 = all); returns how many
    were checked."""
    if signer is None:
        return 0
    chosen = dumps if sample <= 0 or sample >= len(dumps) else \
        random.Random(seed).sample(dumps, sample)
    for path in chosen:
        raw = message_bytes(path.read_bytes())
        problem = signature_problem(raw, signer)
        if problem:
            raise BenchFailure(f"{what}: {path.name}: {problem}")
    return len(chosen)


def signature_problem(raw: bytes, signer: Signer) -> str | None:
    """Why this delivered message fails the bench's checks, or None."""
    headers = email.parser.BytesHeaderParser().parsebytes(raw)
    signatures = headers.get_all("DKIM-Signature") or []
    if not any(f"s={signer.selector}" in "".join(str(s).split()) for s in signatures):
        return f"no DKIM-Signature with s={signer.selector} (found {len(signatures)})"
    if signer.list_help and len(headers.get_all("List-Help") or []) != 1:
        return "not exactly one List-Help header"
    if not dkim.verify(raw, dnsfunc=signer.dns):
        return "DKIM signature does not verify"
    return None
