"""Files that hold one secret key as base64 on one line, mode 0640, group txrelay: the
key-encryption key (txrelay/kek.py) and the bounce secret (txrelay/bounce_secret.py)."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from txrelay.errors import ConfigError

KEY_FILE_MODE = 0o640  # the txrelay group (the daemons) reads it; nobody else


@dataclass(frozen=True)
class KeyFile:
    """What a kind of key file is called in messages, and what to do when it is wrong."""

    name: str  # "the key-encryption key"
    kind: str  # "a txrelay key-encryption key"
    setting: str  # "[database] kek_file"
    size: int  # bytes of the key
    keep: str  # why an existing file must not be replaced
    missing: str  # what to do when it is missing

    def create(self, path: Path, key: bytes) -> None:
        """Write a new file, never over an existing one."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        except FileExistsError as exc:
            raise ConfigError(
                f"{path} exists already; {self.keep}: keep it, or move it away first"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"cannot create {path}: {exc.strerror}; run as a user that may, or set "
                f"{self.setting}"
            ) from exc
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), KEY_FILE_MODE)  # the umask may have narrowed it
            handle.write(base64.b64encode(key).decode("ascii") + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self, path: Path) -> bytes:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{self.name} {path} is missing; {self.missing}, or set {self.setting}"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read {self.name} {path}: {getattr(exc, 'strerror', None) or exc}; "
                "run as the txrelay user (the file is mode 0640, group txrelay)"
            ) from exc
        try:
            key = base64.b64decode(text, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != self.size:
            raise ConfigError(
                f"{path} is not {self.kind} (expected {self.size} bytes in base64 on one line)"
            )
        return key
