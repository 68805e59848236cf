"""SMTP credentials of a connection: a readable unique user name and a one-time password."""

from __future__ import annotations

import re
import secrets
import string
import unicodedata

from argon2 import PasswordHasher

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{2,63}$")
PASSWORD_SCHEME = "{ARGON2ID}"  # noqa: S105 - the hash scheme prefix, not a secret
_SLUG_LENGTH = 20
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_LEADING_ALPHABET = string.ascii_letters + string.digits
PASSWORD_RANDOM_BYTES = 23  # 184 bits after the leading character's 5.95

# Argon2id at its lowest cost (one pass over 8 KiB; libsodium's and so Dovecot's minimum):
# Dovecot verifies it in about 0.1 ms of CPU instead of ~20 ms for OWASP's 19 MiB, t=2, which
# it paid at every SMTP login (docs/performance.md). A slow hash only protects secrets a
# person could guess; ours are 184+ random bits from make_password(), which no offline attack
# finds at any hash speed (docs/security.md, "Why the login hash is fast"). The parameters
# live in each hash, so hashes made with the old ones keep working until the next rotation.
HASH_TIME_COST = 1
HASH_MEMORY_KIB = 8
_HASHER = PasswordHasher(time_cost=HASH_TIME_COST, memory_cost=HASH_MEMORY_KIB, parallelism=1)


def slug(text: str) -> str:
    """Lower-case ASCII letters and digits joined by single hyphens ("Web Shop!" → web-shop)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def make_username(account_name: str, connection_name: str) -> str:
    """<account>-<connection>-<6 random chars>: recognisable in logs, unguessable in bulk."""
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(6))
    parts = [
        slug(account_name)[:_SLUG_LENGTH].strip("-"),
        slug(connection_name)[:_SLUG_LENGTH].strip("-"),
        suffix,
    ]
    username = "-".join(part for part in parts if part)
    assert USERNAME_PATTERN.match(username), username
    return username


def make_password() -> str:
    """A letter or digit, then 184 random bits, URL-safe: survives every SMTP library's AUTH
    PLAIN/LOGIN encoding, and never begins with '-', which command-line tools (swaks, curl)
    would read as an option."""
    return secrets.choice(_LEADING_ALPHABET) + secrets.token_urlsafe(PASSWORD_RANDOM_BYTES)


def hash_password(password: str) -> str:
    """The form Dovecot reads from the SMTP login file: {ARGON2ID}$argon2id$v=19$m=8,t=1,...

    Only for make_password()'s machine-made secrets: a password a person chose would need
    the slow parameters back."""
    return PASSWORD_SCHEME + _HASHER.hash(password)
