"""Streaming relaxed body canonicalisation (txrelay.signing.BodyHash) against dkimpy.

The relay hashes the body chunk by chunk as Postfix hands it over; a verifier canonicalises
the whole body. They must agree for every body and every way of cutting it into chunks."""

from __future__ import annotations

import hashlib

from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.milter.transaction import Transaction
from txrelay.signing import BodyHash, body_hash

# Bodies made of the bytes that matter to the algorithm, plus ordinary text and NUL.
TOKENS = st.sampled_from([b"\r\n", b"\r", b"\n", b" ", b"\t", b"a", b"\x00", b"  \t",
                          b"\r\n\r\n", b" \r\n", b"\t\r\n", b"\r\r\n", b"xy z"])
BODIES = st.lists(TOKENS, max_size=40).map(b"".join) | st.binary(max_size=200)


def expected(body: bytes) -> bytes:
    return hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


def streamed(chunks: list[bytes]) -> bytes:
    hasher = BodyHash()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


@settings(max_examples=3000, deadline=None)
@given(BODIES, st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_body_cut_anywhere_hashes_like_dkimpy(body: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert streamed(chunks) == expected(body)


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_body_fed_one_byte_at_a_time_hashes_like_dkimpy(body: bytes) -> None:
    assert streamed([body[i:i + 1] for i in range(len(body))]) == expected(body)


def test_every_split_position_of_a_tricky_body() -> None:
    body = b"a \t b \r\n\r\n \t\r\n\r x\r\r\n\n\t\r\n\r\nend  \r\n\r\n\r\n"
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert streamed([body[:i], body[i:j], body[j:]]) == expected(body), (i, j)


def test_empty_and_blank_bodies() -> None:
    for body in (b"", b"\r\n", b"\r\n" * 5, b" \r\n\t\r\n", b" ", b"\r", b"\n", b"\x00"):
        assert body_hash(body) == expected(body), body


def test_many_empty_lines_then_text_and_long_whitespace_runs() -> None:
    body = b"x\r\n" + b"\r\n" * 100_000 + b"y" + b" " * 200_000 + b"\r\n" + b"\t" * 70_000
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    assert streamed(chunks) == expected(body)


def test_digest_can_be_asked_twice() -> None:
    hasher = BodyHash()
    hasher.update(b"text  \r\n\r\n")
    assert hasher.digest() == hasher.digest() == expected(b"text  \r\n\r\n")


def longest_line_of(body: bytes) -> int:
    """Postfix's view: lines end at LF, a CR right before the LF is not counted."""
    *ended, last = body.split(b"\n")
    return max([len(line) - line.endswith(b"\r") for line in ended] + [len(last)])


@settings(max_examples=3000, deadline=None)
@given(BODIES, st.lists(st.integers(min_value=0, max_value=200), max_size=6),
       st.integers(min_value=0, max_value=12))
def test_a_too_long_body_line_is_found_across_any_chunking(body: bytes, cuts: list[int],
                                                           limit: int) -> None:
    """Small limits, so that short generated bodies cross them anywhere: at a chunk's edge,
    at a CR before the LF, in the unended last line."""
    txn = Transaction(snapshot=None, connection=None, account=None,  # type: ignore[arg-type]
                      envelope_sender="a@b.example", queue_id="Q", line_limit=limit)
    points = sorted({min(c, len(body)) for c in cuts})
    for a, b in zip([0, *points], [*points, len(body)], strict=True):
        txn.add_body(body[a:b], 10**9)
    assert txn.lines_too_long[1] == (longest_line_of(body) > limit)
    assert txn.body_hash.digest() == expected(body)
