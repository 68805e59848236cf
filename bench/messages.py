"""Test messages of a given size: plain text, a From in the bench's signing domain."""

from __future__ import annotations

from pathlib import Path

LINE = b"The quick brown fox jumps over the lazy dog; transactional mail body text 0123456789"


def message(size: int, *, sender: str, recipient: str, subject: str) -> bytes:
    """About `size` bytes (headers included), LF line ends."""
    headers = (f"From: Bench Shop <{sender}>\nTo: <{recipient}>\nSubject: {subject}\n"
               "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n").encode()
    body_size = max(size - len(headers), len(LINE) + 1)
    lines = body_size // (len(LINE) + 1) + 1
    body = (LINE + b"\n") * lines
    return headers + body[:body_size].rsplit(b"\n", 1)[0] + b"\n"


def write_message_file(directory: Path, size: int, *, sender: str, recipient: str) -> Path:
    """For smtp-source -F (it appends CRLF to each line and dot-stuffs)."""
    path = directory / f"message-{size}.txt"
    if not path.exists():
        path.write_bytes(message(size, sender=sender, recipient=recipient,
                                 subject=f"bench {size} bytes"))
    return path


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")
