"""The signer against the RFCs' own examples: RFC 8463 Appendix A (Ed25519-SHA256 and
RSA-SHA256 over one message, both deterministic, so the signatures must come out byte for
byte) and RFC 6376 (relaxed canonicalisation example of 3.4.6, body hash of Appendix A).

The values below are the RFCs' printed data, written here as test data."""

from __future__ import annotations

import base64
import hashlib

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from txrelay.signing import BodyHash, body_hash, load_signing_key, queued_header, sign

# RFC 8463 Appendix A.1: the Ed25519 private key (the seed of RFC 8032 7.1, test 1) ...
RFC8463_ED25519_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_ED25519_PUBLIC = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
# ... and the RSA private key (1024 bits, PKCS#1).
RFC8463_RSA_PEM = """-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi
Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM
KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB
AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm
6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe
zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy
6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc
uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy
WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd
WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a
licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst
o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe
uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL
-----END RSA PRIVATE KEY-----
"""
# RFC 8463 Appendix A.2: the key records.
RFC8463_RECORDS = {
    b"brisbane._domainkey.football.example.com.":
        b"v=DKIM1; k=ed25519; p=" + RFC8463_ED25519_PUBLIC.encode(),
    b"test._domainkey.football.example.com.":
        b"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
        b"iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
        b"DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
        b"Ip3G+2kryOTIKT+l/K4w3QIDAQAB",
}
# RFC 8463 Appendix A.3 (the message of RFC 6376 Appendix A.1), and its two signatures.
HEADERS = [
    (b"From", b"Joe SixPack <joe@football.example.com>"),
    (b"To", b"Suzie Q <suzie@shopping.example.net>"),
    (b"Subject", b"Is dinner ready?"),
    (b"Date", b"Fri, 11 Jul 2003 21:00:37 -0700 (PDT)"),
    (b"Message-ID", b"<20030712040037.46341.5F8J@football.example.com>"),
]
BODY = b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"
SIGNING_TIME = 1528637909
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"from", b"subject",
                  b"date"]
BODY_HASH = "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
ED25519_SIGNATURE = ("v=1; a=ed25519-sha256; c=relaxed/relaxed; d=football.example.com; "
                     "i=@football.example.com; q=dns/txt; s=brisbane; t=1528637909; "
                     "h=from : to : subject : date : message-id : from : subject : date; "
                     f"bh={BODY_HASH}; "
                     "b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus"
                     "Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==")
RSA_SIGNATURE = ("v=1; a=rsa-sha256; c=relaxed/relaxed; d=football.example.com; "
                 "i=@football.example.com; q=dns/txt; s=test; t=1528637909; "
                 "h=from : to : subject : date : message-id : from : subject : date; "
                 f"bh={BODY_HASH}; "
                 "b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3"
                 "DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz"
                 "dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=")


def _squeezed(value: str) -> str:
    """A header value without folding whitespace, for comparing regardless of folding."""
    return "".join(value.split())


def _ed25519_pem() -> str:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(RFC8463_ED25519_SEED))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _sign_rfc8463(algorithm: str, pem: str, selector: str) -> str:
    queued = [(name, queued_header(value)) for name, value in HEADERS]
    return sign(queued, BODY, domain="football.example.com", selector=selector,
                signing_key=load_signing_key(algorithm, pem), now=SIGNING_TIME,
                signed_headers=SIGNED_HEADERS)


def test_ed25519_signature_of_rfc8463_appendix_a_is_reproduced() -> None:
    assert _squeezed(_sign_rfc8463("ed25519", _ed25519_pem(), "brisbane")) == \
        _squeezed(ED25519_SIGNATURE)


def test_rsa_signature_of_rfc8463_appendix_a_is_reproduced() -> None:
    assert _squeezed(_sign_rfc8463("rsa", RFC8463_RSA_PEM, "test")) == \
        _squeezed(RSA_SIGNATURE)


def test_rfc8463_example_as_printed_verifies_with_its_published_keys() -> None:
    """The data above is the RFC's (not a typo of ours): its signed message verifies."""
    message = (b"DKIM-Signature: " + ED25519_SIGNATURE.encode() + b"\r\n"
               + b"DKIM-Signature: " + RSA_SIGNATURE.encode() + b"\r\n"
               + b"".join(name + b": " + value + b"\r\n" for name, value in HEADERS)
               + b"\r\n" + BODY)

    def records(name: bytes, timeout: int = 5) -> bytes | None:
        return RFC8463_RECORDS.get(name)

    for index in (0, 1):
        assert dkim.DKIM(message).verify(idx=index, dnsfunc=records), index


def test_body_hash_of_rfc6376_appendix_a_whole_and_chunked() -> None:
    """RFC 6376 Appendix A.2's bh= (its body is the same under simple and relaxed), also
    when the body arrives split at every byte, as milter chunks may split it."""
    assert base64.b64encode(body_hash(BODY)).decode() == BODY_HASH
    hasher = BodyHash()
    for index in range(len(BODY)):
        hasher.update(BODY[index:index + 1])
    assert base64.b64encode(hasher.digest()).decode() == BODY_HASH


def test_relaxed_canonicalisation_example_of_rfc6376_section_3_4_6() -> None:
    """The header and body of RFC 6376 3.4.6, relaxed/relaxed: 'a:X', 'b:Y Z', and a body
    of ' C' and 'D E' (whitespace runs one SP, none at line ends, no trailing empty lines)."""
    body = b" C \r\nD \t E\r\n\r\n\r\n"
    assert body_hash(body) == hashlib.sha256(b" C\r\nD E\r\n").digest()
    relaxed = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    headers = [[b"A", b" X\r\n"], [b"B ", b" Y\t\r\n\tZ  \r\n"]]
    assert relaxed.canonicalize_headers(headers) == [(b"a", b"X\r\n"), (b"b", b"Y Z\r\n")]
