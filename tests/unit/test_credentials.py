"""Generated SMTP passwords: never read as a command-line option, still unguessable."""

from __future__ import annotations

import math
import string

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
