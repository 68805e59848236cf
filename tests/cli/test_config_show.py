"""`txrelay config show`: every setting's effective value and source, secrets redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import run_main
from txrelay.cli.settings import redact


@pytest.fixture()
def config_with_secrets(tmp_path: Path) -> Path:
    path = tmp_path / "txrelay.toml"
    path.write_text('[database]\nurl = "postgresql://txrelay:db-s3cret@127.0.0.1/txrelay"\n\n'
                    '[redis]\nmode = "sentinel"\nsentinels = "127.0.0.1:26379"\n'
                    'sentinel_master = "main"\nsentinel_password = "sentinel-s3cret"\n'
                    'url = "redis://:redis-s3cret@127.0.0.1:6379/0"\n')
    return path


def test_show_names_the_source_of_every_value_and_never_a_secret(
        config_with_secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_SMTP_PORT", "2587")
    shown = run_main(["--config", str(config_with_secrets), "config", "show", "--json"],
                     monkeypatch)
    assert shown.exit_code == 0, shown.stderr
    settings = shown.json()["settings"]
    assert settings["smtp.port"] == {"value": 2587,
                                     "source": "environment variable TXRELAY_SMTP_PORT"}
    assert settings["database.url"] == {
        "value": "postgresql://txrelay:****@127.0.0.1/txrelay", "source": str(config_with_secrets)}
    assert settings["redis.sentinel_password"]["value"] == "****"
    assert settings["milter.log_level"] == {"value": "info", "source": "default"}
    human = run_main(["--config", str(config_with_secrets), "config", "show"], monkeypatch)
    for text in (shown.stdout, human.stdout):
        assert "s3cret" not in text
    assert "# environment variable TXRELAY_SMTP_PORT" in human.stdout


@pytest.mark.parametrize("value, shown", [
    ("postgresql://u:p@h/db", "postgresql://u:****@h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("redis://:p@h:6379/0", "redis://:****@h:6379/0"),
    ("plain-secret", "****"),
    ("", ""),
])
def test_redaction_keeps_what_is_not_secret(value: str, shown: str) -> None:
    assert redact(value) == shown
