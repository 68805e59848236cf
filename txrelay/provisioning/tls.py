"""The certificate of txrelay's own SMTP service: an existing one checked, or a self-signed one."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from txrelay.atomic_file import write_atomically
from txrelay.errors import ConfigError, InvalidInput

SELF_SIGNED_CERT = "txrelay.crt"
SELF_SIGNED_KEY = "txrelay.key"
SELF_SIGNED_DAYS = 3650
KEY_MODE = 0o600  # root only: Postfix reads its keys as root before dropping privileges


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path
    self_signed: bool
    created: bool  # False: the files were there already


def checked(cert_file: Path, key_file: Path) -> Certificate:
    """An existing certificate (chain) and key: readable PEM, and the key is the cert's."""
    cert_pem = _read(cert_file, "--tls-cert")
    key_pem = _read(key_file, "--tls-key")
    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise InvalidInput(
            f"--tls-cert {cert_file}: not a PEM certificate; give the "
            "certificate file (e.g. Let's Encrypt's fullchain.pem)"
        ) from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"--tls-key {key_file}: not an unencrypted PEM private key; give "
            "the key file (e.g. Let's Encrypt's privkey.pem)"
        ) from exc
    if _public_der(key.public_key()) != _public_der(certificate.public_key()):
        raise InvalidInput(
            f"--tls-key {key_file} is not the key of the certificate "
            f"{cert_file}; give the pair that belongs together"
        )
    return Certificate(cert_file, key_file, self_signed=False, created=False)


def self_signed(folder: Path, host: str) -> Certificate:
    """The self-signed pair in `folder`, made for `host` unless it is there already."""
    cert_file, key_file = folder / SELF_SIGNED_CERT, folder / SELF_SIGNED_KEY
    if cert_file.exists() and key_file.exists():
        existing = checked(cert_file, key_file)
        return Certificate(existing.cert_file, existing.key_file, self_signed=True, created=False)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([_alt_name(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    try:
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        _write(key_file, key_pem, KEY_MODE)
        _write(cert_file, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the self-signed certificate in {folder}: "
            f"{exc.strerror}; run as root, or pass --tls-cert and --tls-key"
        ) from exc
    return Certificate(cert_file, key_file, self_signed=True, created=True)


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"{option} {path}: cannot read it ({exc.strerror}); give a "
            "readable file (run as root for keys readable only by root)"
        ) from exc


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, mode: int) -> None:
    write_atomically(path, data, mode=mode, sync_file=False)
