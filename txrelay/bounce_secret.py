"""The bounce secret: the key of the MACs in return paths and CFBL feedback ids
(txrelay/policy/return_path.py). A file like the key-encryption key: base64 of 32 random
bytes on one line, mode 0640 group txrelay, the same on every relay node."""

from __future__ import annotations

import secrets
from pathlib import Path

from txrelay.key_file import KeyFile

SECRET_BYTES = 32

BOUNCE_SECRET = KeyFile(
    name="the bounce secret",
    kind="a txrelay bounce secret",
    setting="[bounce] secret_file",
    size=SECRET_BYTES,
    keep="bounces of mail already sent are checked with it",
    missing="copy it from another relay node, or create it with `txrelay init` (bounces of "
    "mail sent before then will no longer be recognised)",
)


def write_bounce_secret(path: Path) -> None:
    """Create a new secret file; never over an existing one (bounces of mail already sent
    carry tokens made with it)."""
    BOUNCE_SECRET.create(path, secrets.token_bytes(SECRET_BYTES))


def read_bounce_secret(path: Path) -> bytes:
    return BOUNCE_SECRET.read(path)
