"""The bounce secret: the key of the MACs in return paths and CFBL feedback ids
(txrelay/policy/return_path.py). A file like the key-encryption key: base64 of 32 random
bytes on one line, mode 0640 group txrelay, the same on every relay node."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from txrelay.errors import ConfigError

SECRET_BYTES = 32
SECRET_MODE = 0o640


def write_bounce_secret(path: Path) -> None:
    """Create a new secret file; never over an existing one (bounces of mail already sent
    carry tokens made with it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} exists already; bounces of mail already sent are checked with it: "
            "keep it, or move it away first"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path}: {exc.strerror}; run as a user that may, or set "
            "[bounce] secret_file"
        ) from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        os.fchmod(handle.fileno(), SECRET_MODE)  # the umask may have narrowed it
        handle.write(base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_bounce_secret(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"the bounce secret {path} is missing; copy it from another relay node, or "
            "create it with `txrelay init` (bounces of mail sent before then will no longer "
            "be recognised), or set [bounce] secret_file"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the bounce secret {path}: {getattr(exc, 'strerror', None) or exc}; "
            "run as the txrelay user (the file is mode 0640, group txrelay)"
        ) from exc
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        key = b""
    if len(key) != SECRET_BYTES:
        raise ConfigError(
            f"{path} is not a txrelay bounce secret (expected {SECRET_BYTES} bytes in base64 "
            "on one line)"
        )
    return key
