"""The state of one SMTP transaction (MAIL FROM to end of message) inside one connection."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

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
    txn_id: uuid.UUID = field(default_factory=uuid.uuid4)
    started: float = field(default_factory=time.perf_counter)
    recipients: list[str] = field(default_factory=list)  # accepted, distinct, lower case
    members: list[str] = field(default_factory=list)  # their reservations in Redis
    refused_recipients: int = 0
    headers: list[Header] = field(default_factory=list)  # as queued, for the signer
    header_bytes: int = 0
    body_hash: BodyHash = field(default_factory=BodyHash)  # the body is hashed, not kept
    body_bytes: int = 0
    oversized: bool = False
    longest_header_line: int = 0  # bytes, without the line end, as Postfix will send it
    longest_body_line: int = 0
    body_line_run: int = 0  # bytes of the body line not yet ended by LF (chunks split lines)
    body_line_cr: bool = False  # the last byte seen was a CR
    failed: bool = False  # a header or body callback hit an error: answer 451 at the end

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

    def _measure_lines(self, chunk: bytes) -> None:
        """Track the longest body line (CRLF not counted; a bare CR is part of the line, as
        for Postfix), across chunk boundaries. CRLF becomes LF first, so that the lengths of
        whole lines are plain lengths, measured in C."""
        pieces = chunk.replace(b"\r\n", b"\n").split(b"\n")
        if len(pieces) > 1:
            # A chunk starting with LF ends the carried line; the CR the previous chunk
            # ended with, if any, is then the line end's.
            length = self.body_line_run + (-self.body_line_cr if chunk.startswith(b"\n")
                                           else len(pieces[0]))
            longest = max(length, max(map(len, pieces[1:-1]), default=0))
            self.longest_body_line = max(self.longest_body_line, longest)
            self.body_line_run, self.body_line_cr = 0, False
        if pieces[-1]:
            self.body_line_run += len(pieces[-1])
            self.body_line_cr = pieces[-1].endswith(b"\r")

    @property
    def longest_line(self) -> tuple[int, int]:
        """(longest header line, longest body line), an unended last body line included."""
        return self.longest_header_line, max(self.longest_body_line, self.body_line_run)

    @property
    def size(self) -> int:
        return self.header_bytes + 2 + self.body_bytes

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode("ascii")
        return [value for key, value in self.headers if key.lower() == wanted]

    def header_texts(self, name: str) -> list[str]:
        """The values of every `name` header as text: unfolded, trimmed, undecodable bytes
        replaced."""
        return [value.replace(b"\r\n", b"").decode("utf-8", "replace").strip()
                for value in self.header_values(name)]

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
