"""compose.yaml, the Dockerfile and the entrypoint agree (no YAML parser or Docker engine
needed): the variables compose sets are ones the image reads, and its volumes are the
image's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from txrelay.config import SECTIONS, load_config

ROOT = Path(__file__).resolve().parents[2]


def compose_service(name: str) -> str:
    text = (ROOT / "compose.yaml").read_text()
    start = text.index(f"\n  {name}:\n")
    end = re.search(r"\n  \w[\w-]*:\n|\nvolumes:\n", text[start + 1:])
    assert end is not None
    return text[start:start + 1 + end.start()]


def test_compose_sets_only_variables_the_image_reads() -> None:
    service = compose_service("txrelay")
    entrypoint = (ROOT / "deploy" / "container" / "entrypoint.sh").read_text()
    names = re.findall(r"^      ([A-Z][A-Z0-9_]+):", service, re.M)
    assert "RELAY_DATABASE_ADMIN_URL" in names and "RELAY_HOSTNAME" in names
    settings = {name: "x" for name in names if name.startswith("TXRELAY_")}
    settings.update(TXRELAY_DATABASE_URL="postgresql://h/db", TXRELAY_REDIS_URL="redis://h")
    load_config(None, environ=settings)  # raises ConfigError on a TXRELAY_ name that is no setting
    for name in names:
        if not name.startswith("TXRELAY_"):
            assert f"${{{name}" in entrypoint, f"{name} is not read by the entrypoint"
    assert set(SECTIONS) >= {n.split("_")[1].lower() for n in settings}


def test_compose_volumes_are_the_images_volumes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = set(re.findall(r'"(/[^"]+)"', re.search(r"^VOLUME \[(.*)\]$", dockerfile,
                                                        re.M)[1]))  # type: ignore[index]
    mounted = set(re.findall(r"^      - [\w-]+:(/\S+)$", compose_service("txrelay"), re.M))
    assert mounted == declared == {"/var/spool/postfix", "/var/lib/txrelay", "/etc/txrelay/tls"}


def test_image_starts_from_the_base_build_image_sh_makes() -> None:
    froms = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert froms == ["debian:bookworm-slim", "debian:bookworm-slim"]


@pytest.mark.parametrize(("redis", "complaint"), [
    ({}, "set TXRELAY_REDIS_URL"),
    ({"TXRELAY_REDIS_MODE": "sentinel", "TXRELAY_REDIS_SENTINELS": "s1:26379"},
     "needs TXRELAY_REDIS_SENTINELS (host:port,...) and TXRELAY_REDIS_SENTINEL_MASTER"),
    ({"TXRELAY_REDIS_MODE": "cluster"}, "needs TXRELAY_REDIS_CLUSTER_NODES"),
    ({"TXRELAY_REDIS_MODE": "clustered", "TXRELAY_REDIS_URL": "redis://h"},
     "use standalone, sentinel or cluster"),
])
def test_entrypoint_names_the_redis_setting_that_is_missing(redis: dict[str, str],
                                                            complaint: str) -> None:
    """Checked before the entrypoint touches anything, so it can run here."""
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "container" / "entrypoint.sh")],
        env={"PATH": "/usr/bin:/bin", "TXRELAY_DATABASE_URL": "postgresql://h/db", **redis},
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert complaint in result.stderr


@pytest.mark.parametrize("database", [{}, {"RELAY_DATABASE_NAME": "txrelay"}])
def test_entrypoint_without_a_database_names_both_ways_to_give_one(
        database: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "container" / "entrypoint.sh")],
        env={"PATH": "/usr/bin:/bin", "TXRELAY_REDIS_URL": "redis://h", **database},
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "set RELAY_DATABASE_ADMIN_URL" in result.stderr
    assert "or TXRELAY_DATABASE_URL" in result.stderr
