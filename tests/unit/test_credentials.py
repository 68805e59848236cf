"""Generated SMTP passwords: never read as a command-line option, still unguessable."""

from __future__ import annotations

import math
import string

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from txrelay.provisioning import credentials

URL_SAFE = set(string.ascii_letters + string.digits + "-_")


def test_passwords_never_begin_with_a_hyphen_that_tools_read_as_an_option() -> None:
    # token_urlsafe alone begins with '-' once in 64: 5,000 draws would show about 78.
    leading = {credentials.make_password()[0] for _ in range(5000)}
    assert "-" not in leading and "_" not in leading
    assert len(leading) > 40  # still drawn from the whole alphanumeric set


def test_passwords_are_url_safe_and_carry_at_least_128_random_bits() -> None:
    password = credentials.make_password()
    assert set(password) <= URL_SAFE
    bits = math.log2(62) + 8 * credentials.PASSWORD_RANDOM_BYTES
    assert bits >= 128
    assert len(password) == 1 + math.ceil(credentials.PASSWORD_RANDOM_BYTES * 4 / 3)


def test_passwords_do_not_repeat() -> None:
    assert len({credentials.make_password() for _ in range(2000)}) == 2000


def test_the_login_hash_is_argon2id_at_its_cheapest_salted_and_verifiable() -> None:
    """One pass over 8 KiB: Dovecot checks it in about 0.1 ms, not ~20 ms per SMTP login
    (docs/performance.md); safe only because the secret is machine-made (docs/security.md)."""
    password = credentials.make_password()
    first, second = credentials.hash_password(password), credentials.hash_password(password)
    assert first.startswith("{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$")
    assert first != second  # a fresh salt each time
    for stored in (first, second):
        assert PasswordHasher().verify(stored.removeprefix("{ARGON2ID}"), password)
    with pytest.raises(VerificationError):
        PasswordHasher().verify(first.removeprefix("{ARGON2ID}"), password + "x")


def test_a_hash_made_with_the_old_costly_parameters_still_verifies() -> None:
    """Parameters travel inside each hash: connections created before the change keep their
    login until their next rotation."""
    password = credentials.make_password()
    old = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(password)
    assert old.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).verify(old, password)
