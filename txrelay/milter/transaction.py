"""The state of one SMTP transaction (MAIL FROM to end of message) inside one connection."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from txrelay.policy.snapshot import AccountPolicy, ConnectionPolicy, PolicySnapshot
from txrelay.signing import Header, queued_header


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
    body_chunks: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    oversized: bool = False
    failed: bool = False  # a header or body callback hit an error: answer 451 at the end

    def add_header(self, name: str, value: bytes) -> None:
        raw_name = name.encode("ascii", "surrogateescape")
        self.headers.append((raw_name, queued_header(value)))
        self.header_bytes += len(raw_name) + 2 + len(value) + 2

    def add_body(self, chunk: bytes, max_size: int) -> None:
        self.body_bytes += len(chunk)
        if self.size > max_size:
            self.oversized = True
            self.body_chunks.clear()  # refused at end of message; keep no more of it
        elif not self.oversized:
            self.body_chunks.append(chunk)

    @property
    def size(self) -> int:
        return self.header_bytes + 2 + self.body_bytes

    @property
    def body(self) -> bytes:
        return b"".join(self.body_chunks)

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode("ascii")
        return [value for key, value in self.headers if key.lower() == wanted]

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
