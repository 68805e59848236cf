"""The list of secret-file settings the secret-file tests check cannot fall behind the
configuration: a new `*_file` setting must be put on it, or said to hold no secret."""

from __future__ import annotations

import dataclasses

from tests.harness.secret_files import NOT_SECRET_FILE_SETTINGS, SECRET_FILE_SETTINGS
from txrelay.config import Config


def test_every_file_setting_is_listed_as_a_secret_or_as_none() -> None:
    config = Config()
    file_settings = {
        (section.name, setting.name)
        for section in dataclasses.fields(config)
        if dataclasses.is_dataclass(getattr(config, section.name))
        for setting in dataclasses.fields(getattr(config, section.name))
        if setting.name.endswith("_file")
    }
    listed = set(SECRET_FILE_SETTINGS) | set(NOT_SECRET_FILE_SETTINGS)
    assert file_settings - listed == set(), "classify these in tests/harness/secret_files.py"
    assert listed - file_settings == set(), "these settings no longer exist"
