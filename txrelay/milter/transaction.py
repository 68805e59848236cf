"""The state of one SMTP transaction (MAIL FROM to end of message) inside one connection."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from txrelay.policy.message import MAX_LINE_BYTES
from txrelay.policy.snapshot import AccountPolicy, ConnectionPolicy, PolicySnapshot
from txrelay.signing import BodyHash, Header, queued_header


@dataclass
class Transaction:
    """What the milter learned so far; pinned to the policy snapshot it started with."""

    snapshot: PolicySnapshot
    connection: ConnectionPolicy
    account: AccountPolicy
    envelope_sender: str
    queue_id: str
    period: str = ""  # the billing period (YYYY-MM, UTC) at MAIL: the overage cap's
    txn_id: uuid.UUID = field(default_factory=uuid.uuid4)
    started: float = field(default_factory=time.perf_counter)
    # Accepted, lower case, one per copy Postfix queues (policy/recipients.py): an address
    # repeated with another ORCPT or NOTIFY is a second copy, billed as one.
    recipients: list[str] = field(default_factory=list)
    recipient_keys: set[str] = field(default_factory=set)  # Postfix's duplicate filter keys
    copies: dict[str, int] = field(default_factory=dict)  # recipient -> copies so far
    members: list[str] = field(default_factory=list)  # their reservations in Redis
    refused_recipients: int = 0
    headers: list[Header] = field(default_factory=list)  # as queued, for the signer
    header_bytes: int = 0
    header_count: int = 0  # every header field the client sent, kept or not
    body_hash: BodyHash = field(default_factory=BodyHash)  # the body is hashed, not kept
    body_bytes: int = 0
    oversized: bool = False
    line_limit: int = MAX_LINE_BYTES  # bytes per line, without the line end
    longest_header_line: int = 0  # bytes, without the line end, as Postfix will send it
    body_line_too_long: bool = False
    body_line_run: int = 0  # bytes (a CR included) of the body line not yet ended by an LF
    body_line_cr: bool = False  # the last body byte seen was a CR
    failed: bool = False  # a header or body callback hit an error: answer 451 at the end
    # A sandbox connection's message is captured whole, so its body is kept (only up to the
    # maximum message size: a bigger one is refused at its end anyway); live mail's is not.
    body_chunks: list[bytes] | None = None

    def add_header(self, name: str, value: bytes) -> None:
        raw_name = name.encode("ascii", "surrogateescape")
        self.headers.append((raw_name, queued_header(value)))
        self.header_bytes += len(raw_name) + 2 + len(value) + 2
        # Postfix hands folded values with LF and without the space after the colon: count
        # "Name: " for the first line (one byte too many when the client wrote "Name:value").
        lines = value.split(b"\n")
        longest = max([len(raw_name) + 2 + len(lines[0]), *(len(line) for line in lines[1:])])
        self.longest_header_line = max(self.longest_header_line, longest)

    def add_body(self, chunk: bytes, max_size: int) -> None:
        self._measure_lines(chunk)
        self.body_bytes += len(chunk)
        if self.size > max_size:
            self.oversized = True  # refused at end of message; hash no more of it
        elif not self.oversized:
            self.body_hash.update(chunk)
            if self.body_chunks is not None:
                self.body_chunks.append(chunk)

    def _measure_lines(self, chunk: bytes) -> None:
        """Whether a body line is longer than line_limit (CRLF not counted; a bare CR is part
        of the line, as for Postfix), across chunk boundaries.

        Only the verdict is needed, not every line's length: each step looks at the window
        in which the current line must end to be short enough and jumps past the window's
        LAST line feed, so a chunk of short lines costs one C-speed rfind per window (about
        a thousand per megabyte), not one Python object per line."""
        if self.body_line_too_long or not chunk:
            return
        limit, size = self.line_limit, len(chunk)
        start, run = 0, self.body_line_run
        if run > limit:  # the carried line is limit + 1 bytes: short only if CR LF ends it
            if not (self.body_line_cr and chunk.startswith(b"\n")):
                self.body_line_too_long = True
                return
            start, run = 1, 0
        while True:
            window_end = start + limit - run + 1  # an LF before this keeps the line short
            found = chunk.rfind(b"\n", start, window_end)
            if found >= 0:
                start, run = found + 1, 0
                continue
            if window_end >= size:  # the chunk ended first: carry the unended line
                if start < size:
                    run += size - start
                    self.body_line_cr = chunk.endswith(b"\r")
                self.body_line_run = run
                return
            # limit + 1 bytes and no LF: short only if those end in CR and an LF follows.
            if chunk[window_end] == 0x0A and chunk[window_end - 1] == 0x0D:
                start, run = window_end + 1, 0
                continue
            self.body_line_too_long = True
            return

    @property
    def lines_too_long(self) -> tuple[bool, bool]:
        """(a header line, a body line) longer than line_limit; an unended last body line
        counts whole."""
        return (
            self.longest_header_line > self.line_limit,
            self.body_line_too_long or self.body_line_run > self.line_limit,
        )

    @property
    def size(self) -> int:
        return self.header_bytes + 2 + self.body_bytes

    def captured(self, signatures: list[str]) -> bytes:
        """The message as the receiver would get it from the queue: the DKIM-Signature
        headers on top (where the milter inserts them), the headers as queued (the relay's
        own included), a blank line, the body. Lines end in CRLF."""
        lines = [
            b"DKIM-Signature: " + queued_header(signature.encode("ascii"))[1:]
            for signature in reversed(signatures)  # each one is inserted above the others
        ]
        lines += [name + b":" + value for name, value in self.headers]
        return b"".join(lines) + b"\r\n" + b"".join(self.body_chunks or ())

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode("ascii")
        return [value for key, value in self.headers if key.lower() == wanted]

    def header_texts(self, name: str) -> list[str]:
        """The values of every `name` header as text: unfolded, trimmed, undecodable bytes
        replaced."""
        return [
            value.replace(b"\r\n", b"").decode("utf-8", "replace").strip()
            for value in self.header_values(name)
        ]

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
