"""DKIM-signs messages: dkimpy canonicalises the headers, OpenSSL (cryptography) signs.

dkimpy's own signer parses the PEM key on every call and computes RSA in pure Python
(about 12 ms per signature); the milter parses each key once when it loads the policy
snapshot and lets OpenSSL do the private-key operation (about 1 ms). Header selection,
header canonicalisation and the header's layout are dkimpy's.

The body is canonicalised (relaxed, RFC 6376 3.4.4) and hashed as it arrives, chunk by
chunk, by BodyHash: byte for byte what dkimpy's Relaxed.canonicalize_body produces over the
joined body (property-tested against it), without keeping the body or holding the GIL for
a whole-body regular expression at end of message.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from txrelay.errors import InvalidInput

Header = tuple[bytes, bytes]  # (name, value as queued: leading space, CRLF folding, CRLF end)

# Signed when present, as RFC 6376 suggests; From is over-signed so none can be added later.
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
    b"content-type", b"content-transfer-encoding", b"in-reply-to", b"references",
    b"list-help",
)
OVERSIGNED_HEADERS = (b"from",)
CANONICALIZATION = (b"relaxed", b"relaxed")
ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


@dataclass(frozen=True)
class SigningKey:
    algorithm: str  # 'rsa' or 'ed25519'
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"SigningKey({self.algorithm})"


def load_signing_key(algorithm: str, private_key_pem: str) -> SigningKey:
    """Parse a stored PEM key (PKCS#1 or PKCS#8) once, checking it matches its algorithm."""
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidInput(f"the stored DKIM private key cannot be read ({exc})") from None
    expected = {"rsa": rsa.RSAPrivateKey, "ed25519": ed25519.Ed25519PrivateKey}.get(algorithm)
    if expected is None or not isinstance(key, expected):
        raise InvalidInput("the stored DKIM private key does not match its algorithm "
                           f"{algorithm!r}")
    return SigningKey(algorithm, key)  # type: ignore[arg-type]  # narrowed by isinstance


def header_list(headers: Sequence[Header]) -> list[bytes]:
    """The h= list: every present signed header once per instance, From once more."""
    names = [name.lower() for name, _ in headers]
    chosen = [name for name in names if name in SIGNED_HEADERS]
    return chosen + [name for name in chosen if name in OVERSIGNED_HEADERS]


_TAB_TO_SP = bytes.maketrans(b"\t", b" ")
_CRLF = b"\r\n"


class BodyHash:
    """SHA-256 of the relaxed-canonical body, fed chunk by chunk (RFC 6376 3.4.4, exactly as
    dkimpy: WSP before a CRLF removed, other WSP runs made one SP, trailing empty lines
    dropped, one CRLF at the end unless the body is empty; a bare CR or LF is text).

    Only a suffix that the next bytes could still change is carried between chunks: WSP
    (kept as one SP) and a final CR. Empty lines are held as a count until text follows."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._carry = b""  # [ ]?\r? : what the next chunk may turn into a line end
        self._held_crlf = 0  # empty lines (CRLFs) not yet known to be followed by text
        self._any_text = False
        self._digest: bytes | None = None

    def update(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        end = len(data) - 1 if data.endswith(b"\r") else len(data)
        cut = len(data[:end].rstrip(b" \t")) if end and data[end - 1] in b" \t" else end
        tail = data[cut:]
        self._carry = ((b" " if tail[:1] in (b" ", b"\t") else b"")
                       + (b"\r" if tail.endswith(b"\r") else b""))
        self._emit(data[:cut] if cut < len(data) else data)

    def digest(self) -> bytes:
        """The body hash (bh=); the first call ends the body."""
        if self._digest is None:
            if self._carry:
                self._emit(self._carry)
                self._carry = b""
            if self._any_text:
                self._hash.update(_CRLF)
            self._digest = self._hash.digest()
        return self._digest

    def _emit(self, head: bytes) -> None:
        """Canonicalise a piece that ends where no later byte can change it."""
        if not head:
            return
        # dkimpy strips WSP before CRLF, then makes WSP runs one SP; making runs one SP
        # first, then dropping the SP before CRLF is the same, with C-speed bytes methods.
        if b"\t" in head:
            head = head.translate(_TAB_TO_SP)
        while b"  " in head:
            head = head.replace(b"  ", b" ")
        if b" \r\n" in head:
            head = head.replace(b" \r\n", _CRLF)
        text_end, empty_lines = _strip_trailing_crlfs(head)
        if text_end == 0:
            self._held_crlf += empty_lines
            return
        self._flush_held()
        self._hash.update(head if text_end == len(head) else head[:text_end])
        self._any_text = True
        self._held_crlf = empty_lines

    def _flush_held(self) -> None:
        while self._held_crlf:
            count = min(self._held_crlf, 32768)
            self._hash.update(_CRLF * count)
            self._held_crlf -= count


def _strip_trailing_crlfs(data: bytes) -> tuple[int, int]:
    """(length without the trailing CRLF pairs, how many there were)."""
    stripped = len(data.rstrip(b"\r\n"))
    tail = data[stripped:]
    if not tail:
        return stripped, 0
    pairs = tail.count(_CRLF)
    if pairs * 2 == len(tail):
        return stripped, pairs
    end = len(data)
    while data.endswith(_CRLF, 0, end):
        end -= 2
    return end, (len(data) - end) // 2


def body_hash(body: bytes) -> bytes:
    """The relaxed body hash of a whole body (tests, and callers that have it all)."""
    hasher = BodyHash()
    hasher.update(body)
    return hasher.digest()


def sign(headers: Sequence[Header], body: bytes | BodyHash, *, domain: str, selector: str,
         signing_key: SigningKey, now: float | None = None) -> str:
    """The DKIM-Signature header value (folded with LF, as a milter hands it to the MTA).
    body: the body, or its BodyHash fed as it arrived."""
    signer = _Signer(signing_key, now)
    signer.headers = [[name, value] for name, value in headers]
    signer.precomputed_body_hash = (body.digest() if isinstance(body, BodyHash)
                                    else body_hash(body))
    field = signer.sign_prepared(selector.encode("ascii"), domain.encode("ascii"),
                                 header_list(headers))
    value = field.split(b":", 1)[1].strip()
    return value.replace(b"\r\n", b"\n").decode("ascii")


def queued_header(value: bytes) -> bytes:
    """A header value as dkimpy expects it: Postfix strips the space after the colon and
    folds with LF when it talks to a milter; relaxed canonicalisation ignores that space
    and unfolds, so ' value' with CRLF line ends hashes like the queued bytes."""
    return b" " + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"


class _Signer(dkim.DKIM):  # type: ignore[misc]
    """dkim.DKIM with a key parsed once and the private-key operation done by OpenSSL."""

    def __init__(self, signing_key: SigningKey, now: float | None) -> None:
        super().__init__(signature_algorithm=ALGORITHMS[signing_key.algorithm],
                         linesep=b"\r\n")
        self.signing_key = signing_key
        self.now = time.time() if now is None else now

    def sign_prepared(self, selector: bytes, domain: bytes, include: list[bytes]) -> bytes:
        canon_policy = dkim.CanonicalizationPolicy.from_c_value(b"/".join(CANONICALIZATION))
        self.include_headers = tuple(include)
        self.hasher = dkim.HASH_ALGORITHMS[self.signature_algorithm]
        body_hash = self.precomputed_body_hash  # sha256 for both algorithms
        fields = [
            (b"v", b"1"), (b"a", self.signature_algorithm), (b"c", canon_policy.to_c_value()),
            (b"d", domain), (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", selector),
            (b"t", str(int(self.now)).encode("ascii")), (b"h", b" : ".join(include)),
            (b"bh", base64.b64encode(body_hash)),
            (b"b", b"0" * 60),  # forces b= onto its own line, as dkimpy does
        ]
        value = self.gen_header(fields, include, canon_policy, b"DKIM-Signature",
                                self.signing_key)
        return b"DKIM-Signature: " + value

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Sequence[bytes],
                   canon_policy: object, header_name: bytes, pk: object,
                   standardize: bool = False) -> bytes:
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        unsigned = (header_name, b" " + header_value)
        digest = self.hasher()
        canonical = canon_policy.canonicalize_headers(self.headers)  # type: ignore[attr-defined]
        self.signed_headers = dkim.hash_headers(digest, canon_policy, canonical,
                                                include_headers, unsigned, dict(fields))
        signature = _private_key_operation(self.signing_key, digest.digest())
        index = next(i for i, (tag, _) in enumerate(fields) if tag == b"b")
        fields[index] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return dkim.fold(header_value, namelen=len(header_name),  # type: ignore[no-any-return]
                         linesep=self.linesep)


def _private_key_operation(signing_key: SigningKey, digest: bytes) -> bytes:
    key = signing_key.key
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return key.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 of the headers
