"""The key-encryption key (KEK) file, and sealing DKIM private keys with it (AES-256-GCM)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from txrelay.errors import ConfigError, InvalidInput
from txrelay.key_file import KeyFile

KEK_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; random per sealing (2^32 sealings stay far below
# the collision bound for one KEK, and a relay holds a few thousand keys at most)
PREFIX = "txrelay-aes256gcm:"  # sealed values: PREFIX + kek id + ":" + base64(nonce || ct)
AAD = b"txrelay dkim private key"
WEBHOOK_SECRET_AAD = b"txrelay webhook secret"  # a sealed value opens only for its own use
KEK_MODE = 0o640  # the txrelay group (the milter) reads it; nobody else
OLD_SUFFIX = ".old"  # the previous KEK, kept by rotate-kek until the admin removes it


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def kek_id(key: bytes) -> str:
    """A short public name of a KEK (not secret: a hash), written into each sealed value so
    that a reader knows which KEK opens it."""
    return hashlib.sha256(b"txrelay kek id\0" + key).hexdigest()[:16]


def generate_kek() -> bytes:
    return AESGCM.generate_key(bit_length=KEK_BYTES * 8)


def encode_kek(key: bytes) -> str:
    """The KEK file's text: base64 of the key, one line."""
    return base64.b64encode(key).decode("ascii") + "\n"


KEK_FILE = KeyFile(
    name="the key-encryption key",
    kind="a txrelay key-encryption key",
    setting="[database] kek_file",
    size=KEK_BYTES,
    keep="it holds the key that opens the DKIM keys in the database",
    missing="restore it from your backup (without it the DKIM keys in the database cannot be read)",
)


def write_kek_file(path: Path, key: bytes) -> None:
    """Write a new KEK file (base64, one line), mode 0640, never over an existing file."""
    KEK_FILE.create(path, key)


def read_kek_file(path: Path) -> bytes:
    return KEK_FILE.read(path)


@dataclass
class KeyRing:
    """The current KEK (seals) and the previous one when rotate-kek kept it (opens only).
    Reloaded from the files when a value names a KEK not held (a rotation by another
    process)."""

    path: Path
    _keys: dict[str, AESGCM] = field(default_factory=dict)
    _current: str = ""

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        ring = cls(path)
        ring.reload()
        return ring

    def reload(self) -> None:
        current = read_kek_file(self.path)
        keys = {kek_id(current): AESGCM(current)}
        old = self.path.with_name(self.path.name + OLD_SUFFIX)
        if old.exists():
            previous = read_kek_file(old)
            keys.setdefault(kek_id(previous), AESGCM(previous))
        self._keys, self._current = keys, kek_id(current)

    @property
    def current_id(self) -> str:
        return self._current

    def seal(self, private_key_pem: str, aad: bytes = AAD) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, private_key_pem.encode("ascii"), aad)
        return f"{PREFIX}{self._current}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def open(self, value: str, aad: bytes = AAD) -> str:
        """The PEM of a sealed value (a clear PEM from before encryption is returned as it
        is); InvalidInput when no KEK held opens it."""
        if not is_sealed(value):
            return value
        identifier, _, body = value[len(PREFIX) :].partition(":")
        if identifier not in self._keys:
            try:
                self.reload()
            except ConfigError as exc:
                raise InvalidInput(str(exc)) from exc
        aead = self._keys.get(identifier)
        if aead is None:
            raise InvalidInput(
                f"the DKIM key is sealed with KEK {identifier}, which is "
                f"neither {self.path} nor {self.path}{OLD_SUFFIX}"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad).decode("ascii")
        except (binascii.Error, InvalidTag, UnicodeDecodeError) as exc:
            raise InvalidInput(
                f"a DKIM key sealed with KEK {identifier} does not open (damaged value)"
            ) from exc
