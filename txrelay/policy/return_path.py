"""Addresses that identify a message when mail comes back to the relay.

The return path (the envelope sender the milter gives each message) and the CFBL feedback
id (RFC 9477) carry the message's transaction id and a MAC made with the relay's bounce
secret: a DSN or a complaint is matched to the one message it is about, and nobody can
forge one for, or enumerate, other messages. Pure functions: the secret is passed in.

    return path   b-<token>@<bounce domain>          token = base32(txn id 16 B + MAC 10 B)
    feedback id   <account>.<connection>.<token>     the MAC also covers both ids
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass

LOCAL_PREFIX = "b-"
CFBL_LOCAL_PART = "fbl"
_MAC_BYTES = 10  # 80 bits: guessing one valid token takes ~2^79 tries
_TOKEN_RE = re.compile(r"[a-z2-7]{42}")
_FEEDBACK_RE = re.compile(r"([1-9][0-9]{0,18})\.([1-9][0-9]{0,18})\.([a-z2-7]{42})")


@dataclass(frozen=True)
class FeedbackId:
    account_id: int
    connection_id: int
    txn_id: uuid.UUID


def _mac(secret: bytes, purpose: bytes, txn_id: uuid.UUID) -> bytes:
    return hmac.new(secret, purpose + b"\0" + txn_id.bytes, hashlib.sha256).digest()[:_MAC_BYTES]


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _decode(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


def _token(secret: bytes, purpose: bytes, txn_id: uuid.UUID) -> str:
    return _encode(txn_id.bytes + _mac(secret, purpose, txn_id))


def _read_token(secret: bytes, purpose: bytes, token: str) -> uuid.UUID | None:
    if not _TOKEN_RE.fullmatch(token):
        return None
    raw = _decode(token)
    if _encode(raw) != token:
        return None  # the last character's unused bits set: one spelling per token
    txn_id = uuid.UUID(bytes=raw[:16])
    if not hmac.compare_digest(raw[16:], _mac(secret, purpose, txn_id)):
        return None
    return txn_id


def return_path(secret: bytes, txn_id: uuid.UUID, bounce_domain: str) -> str:
    """The envelope sender for one message: bounces to it name the message."""
    return f"{LOCAL_PREFIX}{_token(secret, b'return-path', txn_id)}@{bounce_domain}"


def read_return_path(secret: bytes, address: str) -> uuid.UUID | None:
    """The transaction id a bounce address names, or None when it is not one of ours or its
    MAC does not match (forged, altered, or made with another secret). Case-insensitive:
    some MTAs change the local part's case."""
    local, at, _domain = address.strip().strip("<>").rpartition("@")
    local = local.lower()
    if not at or not local.startswith(LOCAL_PREFIX):
        return None
    token = local.removeprefix(LOCAL_PREFIX).split("+", 1)[0]  # "+..." a VERP suffix, if any
    return _read_token(secret, b"return-path", token)


def feedback_id(secret: bytes, account_id: int, connection_id: int, txn_id: uuid.UUID) -> str:
    """CFBL-Feedback-ID's value: opaque to receivers, MAC-protected, names the message."""
    bound = uuid.UUID(bytes=_bind(txn_id, account_id, connection_id))
    mac = _mac(secret, b"cfbl", bound)
    return f"{account_id}.{connection_id}.{_encode(txn_id.bytes + mac)}"


def read_feedback_id(secret: bytes, value: str) -> FeedbackId | None:
    match = _FEEDBACK_RE.fullmatch(value.strip().lower())
    if match is None:
        return None
    account_id, connection_id = int(match[1]), int(match[2])
    raw = _decode(match[3])
    if _encode(raw) != match[3]:
        return None
    txn_id = uuid.UUID(bytes=raw[:16])
    bound = uuid.UUID(bytes=_bind(txn_id, account_id, connection_id))
    if not hmac.compare_digest(raw[16:], _mac(secret, b"cfbl", bound)):
        return None
    return FeedbackId(account_id, connection_id, txn_id)


def cfbl_address(bounce_domain: str) -> str:
    """CFBL-Address's mailbox: complaint reports to it reach the relay's inbound service."""
    return f"{CFBL_LOCAL_PART}@{bounce_domain}"


def _bind(txn_id: uuid.UUID, account_id: int, connection_id: int) -> bytes:
    """The txn id mixed with both ids, so that the MAC covers all three (16 bytes)."""
    ids = account_id.to_bytes(8, "big") + connection_id.to_bytes(8, "big")
    return hashlib.sha256(txn_id.bytes + ids).digest()[:16]
