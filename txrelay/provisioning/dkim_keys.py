"""DKIM keys: generate or load them, and render the DNS TXT record that publishes them."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from txrelay.errors import InvalidInput

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048
MIN_RSA_BITS = 1024  # RFC 8301: verifiers must refuse shorter keys
TXT_STRING_LIMIT = 255  # one <character-string> in a DNS TXT record


@dataclass(frozen=True)
class KeyMaterial:
    """A private key (PEM) and its public half exactly as it goes after p= in DNS."""

    algorithm: str
    private_key_pem: str
    public_key_b64: str


def generate_key(algorithm: str) -> KeyMaterial:
    if algorithm == "rsa":
        return _from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS))
    if algorithm == "ed25519":
        return _from_private_key(ed25519.Ed25519PrivateKey.generate())
    raise InvalidInput(f"unknown DKIM algorithm {algorithm!r}; use rsa or ed25519")


def load_key_file(path: Path, algorithm: str | None = None) -> KeyMaterial:
    """An existing unencrypted PEM key (RSA ≥ 1024 bits or Ed25519); algorithm inferred."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise InvalidInput(
            f"{path} is encrypted; give an unencrypted PEM key (openssl pkey -in KEY -out PLAIN)"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(
            f"{path} is not a PEM private key; give an RSA or Ed25519 key "
            "such as one made by 'openssl genpkey -algorithm ed25519'"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise InvalidInput(f"{path} holds a {type(key).__name__}; DKIM needs RSA or Ed25519")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidInput(
            f"{path} is a {key.key_size}-bit RSA key; DKIM verifiers refuse "
            f"keys under {MIN_RSA_BITS} bits (use 2048)"
        )
    material = _from_private_key(key)
    if algorithm is not None and algorithm != material.algorithm:
        raise InvalidInput(
            f"{path} is an {material.algorithm} key but --algorithm "
            f"{algorithm} was given; drop --algorithm or give a matching key"
        )
    return material


def _from_private_key(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> KeyMaterial:
    if isinstance(key, rsa.RSAPrivateKey):
        # PKCS#1 ("BEGIN RSA PRIVATE KEY"): what dkimpy and OpenDKIM both read.
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return KeyMaterial("rsa", pem.decode("ascii"), base64.b64encode(public).decode("ascii"))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyMaterial("ed25519", pem.decode("ascii"), base64.b64encode(raw).decode("ascii"))


@dataclass(frozen=True)
class DnsRecord:
    """A record an admin publishes: TXT (DKIM, SPF, DMARC) or, for a return-path domain,
    MX (value in zone-file form, e.g. "10 relay.example.net.")."""

    name: str
    value: str
    rtype: str = "TXT"

    @property
    def strings(self) -> list[str]:
        """The value cut into TXT character-strings of at most 255 bytes (ASCII here)."""
        return [
            self.value[i : i + TXT_STRING_LIMIT]
            for i in range(0, len(self.value), TXT_STRING_LIMIT)
        ]

    def zone_line(self) -> str:
        """BIND zone-file form: name. IN TXT ( "part1" "part2" )."""
        if self.rtype != "TXT":
            return f"{self.name}. IN {self.rtype} {self.value}"
        quoted = " ".join(f'"{part}"' for part in self.strings)
        if len(self.strings) > 1:
            quoted = f"( {quoted} )"
        return f"{self.name}. IN TXT {quoted}"


def dns_record(selector: str, domain: str, algorithm: str, public_key_b64: str) -> DnsRecord:
    return DnsRecord(
        f"{selector}._domainkey.{domain}", f"v=DKIM1; k={algorithm}; p={public_key_b64}"
    )


def parse_txt_tags(value: str) -> dict[str, str]:
    """Tag=value pairs of a DKIM key record (RFC 6376 3.6.1); whitespace inside p= removed."""
    tags: dict[str, str] = {}
    for item in value.split(";"):
        tag, sep, tag_value = item.partition("=")
        if sep:
            tags[tag.strip()] = "".join(tag_value.split())
    return tags
