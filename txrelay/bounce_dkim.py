"""The relay's own DKIM key for its bounce domain ([bounce] dkim_key_file): the key of the
second signature (d= the bounce domain) that makes the CFBL-Address of a message whose bounce
domain is not its author's aligned with a valid signature (RFC 9477 section 4). A PEM file,
mode 0640 group txrelay, the same on every relay node; `txrelay init` creates it."""

from __future__ import annotations

import os
from pathlib import Path

from txrelay.errors import ConfigError, InvalidInput
from txrelay.key_file import KEY_FILE_MODE
from txrelay.provisioning.dkim_keys import (
    DnsRecord,
    KeyMaterial,
    dns_record,
    generate_key,
    load_key_file,
)
from txrelay.signing import SigningKey, load_signing_key

SETTING = "[bounce] dkim_key_file"


def write_bounce_dkim_key(path: Path) -> KeyMaterial:
    """Create a new RSA-2048 key file; never over an existing one (its public half may be
    published already, and receivers check mail in flight with it)."""
    material = generate_key("rsa")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} exists already; its public key may be published: keep it, or move it "
            "away first"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path}: {exc.strerror}; run as a user that may, or set {SETTING}"
        ) from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        os.fchmod(handle.fileno(), KEY_FILE_MODE)  # the umask may have narrowed it
        handle.write(material.private_key_pem)
        handle.flush()
        os.fsync(handle.fileno())
    return material


def read_bounce_dkim_key(path: Path) -> KeyMaterial:
    """The key and its public half; a missing or unusable file is a ConfigError that says
    what to do."""
    if not path.exists():
        raise ConfigError(
            f"the relay's DKIM key {path} is missing; create it with `txrelay init` or copy it "
            f"from another relay node, or set {SETTING}"
        )
    try:
        return load_key_file(path)
    except InvalidInput as exc:
        raise ConfigError(f"the relay's DKIM key ({SETTING}): {exc}") from None


def signing_key(material: KeyMaterial) -> SigningKey:
    return load_signing_key(material.algorithm, material.private_key_pem)


def bounce_dkim_record(material: KeyMaterial, selector: str, domain: str) -> DnsRecord:
    """The TXT record that publishes the relay's key under the bounce domain."""
    return dns_record(selector, domain, material.algorithm, material.public_key_b64)
