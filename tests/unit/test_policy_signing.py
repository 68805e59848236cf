"""DKIM signing (txrelay.signing): keys in the formats provisioning stores, verified by dkimpy."""

from __future__ import annotations

import base64
import types
from collections.abc import Callable, Iterator

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from txrelay.errors import InvalidInput
from txrelay.signing import header_list, load_signing_key, queued_header, sign

HEADERS = [
    (b"From", b"Shop <orders@shop.example>"),
    (b"To", b"alice@customer.example"),
    (b"Subject", b"Your order\n\thas shipped"),
    (b"X-Unsigned", b"whatever"),
    (b"List-Help", b"<https://shop.example/help>"),
    (b"Message-ID", b"<1@shop.example>"),
]
BODY = b"Hello\r\n\r\nBye\r\n"


def queued(signature: str) -> bytes:
    lines = [b"DKIM-Signature: " + signature.encode().replace(b"\n", b"\r\n") + b"\r\n"]
    lines += [name + b": " + value.replace(b"\n", b"\r\n") + b"\r\n" for name, value in HEADERS]
    return b"".join(lines) + b"\r\n" + BODY


def dns(record: str) -> Callable[..., bytes]:
    return lambda name, timeout=5: record.encode()


@pytest.fixture()
def nacl_shim(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """dkimpy verifies Ed25519 with PyNaCl, which the relay does not need: an equivalent
    verifier on top of cryptography, for these tests only."""

    class BadSignatureError(Exception):
        pass

    class VerifyKey:
        def __init__(self, key: bytes, encoder: object = None) -> None:
            self.key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(key))

        def verify(self, message: bytes, signature: bytes) -> None:
            try:
                self.key.verify(signature, message)
            except InvalidSignature as exc:
                raise BadSignatureError() from exc

    shim = types.SimpleNamespace(
        signing=types.SimpleNamespace(VerifyKey=VerifyKey),
        encoding=types.SimpleNamespace(Base64Encoder=None),
        exceptions=types.SimpleNamespace(BadSignatureError=BadSignatureError,
                                         ValueError=ValueError))
    monkeypatch.setattr(dkim, "nacl", shim, raising=False)
    yield


def rsa_pem(private_format: serialization.PrivateFormat) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, private_format,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(public).decode()


@pytest.mark.parametrize("private_format", [serialization.PrivateFormat.TraditionalOpenSSL,
                                            serialization.PrivateFormat.PKCS8])
def test_rsa_signature_verifies(private_format: serialization.PrivateFormat) -> None:
    pem, public = rsa_pem(private_format)
    headers = [(name, queued_header(value)) for name, value in HEADERS]
    signature = sign(headers, BODY, domain="shop.example", selector="txr202611",
                     signing_key=load_signing_key("rsa", pem))
    assert "a=rsa-sha256" in signature and "c=relaxed/relaxed" in signature
    assert "\r" not in signature  # LF folding, as a milter hands headers to Postfix
    assert dkim.verify(queued(signature), dnsfunc=dns(f"v=DKIM1; k=rsa; p={public}"))


def test_ed25519_signature_verifies(nacl_shim: None) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    headers = [(name, queued_header(value)) for name, value in HEADERS]
    signature = sign(headers, BODY, domain="shop.example", selector="ed",
                     signing_key=load_signing_key("ed25519", pem))
    assert "a=ed25519-sha256" in signature
    assert dkim.verify(queued(signature), dnsfunc=dns(f"v=DKIM1; k=ed25519; p={public}"))
    tampered = queued(signature).replace(b"Bye", b"Hi!")
    assert not dkim.verify(tampered, dnsfunc=dns(f"v=DKIM1; k=ed25519; p={public}"))


def test_header_list_oversigns_from_and_skips_unlisted_headers() -> None:
    names = header_list([(n, v) for n, v in HEADERS])
    assert names == [b"from", b"to", b"subject", b"list-help", b"message-id", b"from"]


def test_key_of_the_wrong_algorithm_is_refused() -> None:
    pem, _ = rsa_pem(serialization.PrivateFormat.PKCS8)
    with pytest.raises(InvalidInput, match="does not match its algorithm"):
        load_signing_key("ed25519", pem)
    with pytest.raises(InvalidInput, match="cannot be read"):
        load_signing_key("rsa", "not a key")


def test_signing_key_repr_reveals_nothing() -> None:
    pem, _ = rsa_pem(serialization.PrivateFormat.PKCS8)
    assert repr(load_signing_key("rsa", pem)) == "SigningKey(rsa)"
