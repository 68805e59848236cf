"""The key-encryption key file and sealing with it (txrelay.kek): pure logic, no database."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from txrelay.errors import ConfigError, InvalidInput
from txrelay.kek import (
    OLD_SUFFIX,
    PREFIX,
    KeyRing,
    encode_kek,
    generate_kek,
    is_sealed,
    write_kek_file,
)

PEM = ("-----BEGIN PRIVATE KEY-----\n"
       "MC4CAQAwBQYDK2VwBCIEIAbcdefghijklmnopqrstuvwxyz0123456789ABCD\n"
       "-----END PRIVATE KEY-----\n")


def ring(tmp_path: Path, name: str = "kek") -> KeyRing:
    path = tmp_path / name
    write_kek_file(path, generate_kek())
    return KeyRing.load(path)


def test_a_sealed_key_opens_with_its_kek_and_holds_nothing_of_the_pem(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    sealed = keys.seal(PEM)
    assert sealed.startswith(PREFIX + keys.current_id + ":") and is_sealed(sealed)
    assert "PRIVATE KEY" not in sealed and "MC4CAQAw" not in sealed
    assert keys.seal(PEM) != sealed, "a fresh nonce each time"
    assert keys.open(sealed) == PEM
    assert keys.open(PEM) == PEM, "a key stored in clear before sealing reads as it is"


def test_a_changed_byte_or_another_kek_does_not_open(tmp_path: Path) -> None:
    keys, other = ring(tmp_path), ring(tmp_path, "other")
    sealed = keys.seal(PEM)
    body = sealed.rsplit(":", 1)[1]
    flipped = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
    with pytest.raises(InvalidInput, match="does not open"):
        keys.open(sealed.rsplit(":", 1)[0] + ":" + flipped)
    with pytest.raises(InvalidInput, match="neither"):
        other.open(sealed)


def test_the_previous_kek_in_the_old_file_still_opens(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    sealed = keys.seal(PEM)
    path = tmp_path / "kek"
    path.with_name("kek" + OLD_SUFFIX).write_text(path.read_text())
    path.write_text(encode_kek(generate_kek()))
    fresh = KeyRing.load(path)
    assert fresh.current_id != keys.current_id
    assert fresh.open(sealed) == PEM


def test_a_ring_whose_file_was_missing_reads_it_once_it_is_there(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    sealed = keys.seal(PEM)
    path = tmp_path / "kek"
    text = path.read_text()
    path.unlink()
    waiting = KeyRing(path)
    with pytest.raises(InvalidInput, match="is missing"):
        waiting.open(sealed)
    path.write_text(text)
    assert waiting.open(sealed) == PEM


def test_kek_files_are_made_0640_never_over_another_and_a_bad_one_is_one_line(
        tmp_path: Path) -> None:
    path = tmp_path / "kek"
    write_kek_file(path, generate_kek())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(ConfigError, match="exists already"):
        write_kek_file(path, generate_kek())
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match="is not a txrelay key-encryption key") as error:
        KeyRing.load(path)
    assert "\n" not in str(error.value)
