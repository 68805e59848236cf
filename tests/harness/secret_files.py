"""The settings that name a file holding a secret, for the tests that check such files are
never readable by other users (tests/unit/test_secret_file_settings.py keeps the list whole:
every `*_file` setting is here or named as no secret)."""

from __future__ import annotations

from pathlib import Path

from txrelay.config import Config

SECRET_FILE_SETTINGS = (
    ("database", "kek_file"),  # the key-encryption key of the DKIM keys
    ("dovecot", "passdb_file"),  # the SMTP logins' password hashes
    ("smtp", "tls_key_file"),  # the TLS private key ("" = Postfix's own)
    ("bounce", "secret_file"),  # the MAC key of return paths and feedback ids
    ("bounce", "dkim_key_file"),  # the relay's own DKIM private key
    ("web", "admin_token_file"),  # the dashboard admin's sign-in token
)
NOT_SECRET_FILE_SETTINGS = {
    ("smtp", "tls_cert_file"): "a certificate is public",
}


def secret_file_paths(config: Config) -> dict[str, Path]:
    """`[section] name` -> path, for every secret-file setting that names a file."""
    paths = {}
    for section, name in SECRET_FILE_SETTINGS:
        value = getattr(getattr(config, section), name)
        if value:
            paths[f"[{section}] {name}"] = Path(value)
    return paths
