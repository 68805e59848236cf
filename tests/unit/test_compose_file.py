"""compose.yaml, parsed as Compose reads it, against the image it runs: no Docker engine runs
here and Docker Hub cannot be reached, so `docker compose up` itself is never run by the
tests; this checks what would make it fail or lose data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = (ROOT / "deploy" / "container" / "entrypoint.sh").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def interpolate(value: str) -> str:
    """${NAME:-default} as Compose fills it when NAME is not set (no .env file)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_every_variable_the_entrypoint_requires_is_set(compose: dict[str, Any]) -> None:
    environment = compose["services"]["txrelay"]["environment"]
    assert environment.get("TXRELAY_REDIS_MODE", "standalone") == "standalone"
    always = re.findall(r'^\[ -n "\$\{(\w+):-\}" \] \|\| die', ENTRYPOINT, re.M)
    standalone = re.findall(r'^    standalone\) \[ -n "\$\{(\w+):-\}" \]', ENTRYPOINT, re.M)
    required = always + standalone
    assert required == ["TXRELAY_DATABASE_URL", "TXRELAY_REDIS_URL"]
    assert set(required) <= set(environment)
    assert all(str(environment[name]).strip() for name in required)


def test_urls_point_at_the_compose_services_with_their_credentials(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres_env = services["postgres"]["environment"]
    database = urlsplit(interpolate(services["txrelay"]["environment"]["TXRELAY_DATABASE_URL"]))
    assert (database.scheme, database.hostname, database.port) == ("postgresql", "postgres", 5432)
    assert database.username == postgres_env["POSTGRES_USER"]
    assert database.password == interpolate(postgres_env["POSTGRES_PASSWORD"])
    assert database.path == "/" + postgres_env["POSTGRES_DB"]
    redis_url = urlsplit(services["txrelay"]["environment"]["TXRELAY_REDIS_URL"])
    assert (redis_url.scheme, redis_url.hostname) == ("redis", "redis")


def test_queue_state_and_tls_are_on_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(re.findall(r'"(/[^"]+)"', re.search(  # type: ignore[index]
        r"^VOLUME \[(.*)\]$", DOCKERFILE, re.M)[1]))
    mounts = dict(reversed(m.split(":", 1)) for m in compose["services"]["txrelay"]["volumes"])
    assert set(mounts) == declared == {"/var/spool/postfix", "/var/lib/txrelay",
                                       "/etc/txrelay/tls"}
    named = set(compose["volumes"])
    assert set(mounts.values()) <= named, "a bind mount or undeclared volume"
    environment = compose["services"]["txrelay"]["environment"]
    for name in ("RELAY_TLS_CERT", "RELAY_TLS_KEY"):
        assert environment[name].startswith("/etc/txrelay/tls/"), name
    for service, path in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        volume, _, target = compose["services"][service]["volumes"][0].partition(":")
        assert (volume in named, target) == (True, path)


def test_txrelay_starts_only_when_its_dependencies_are_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["txrelay"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"}}
    for name in ("postgres", "redis"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and check["retries"] > 0, name
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_txrelay_has_the_images_healthcheck_and_a_grace_period(
        compose: dict[str, Any]) -> None:
    healthcheck = re.search(r'^\s+CMD \["([^"]+)"\]$', DOCKERFILE, re.M)
    assert healthcheck is not None and healthcheck[1] == "/usr/local/bin/txrelay-healthcheck"
    assert f"COPY deploy/container/healthcheck.sh {healthcheck[1]}" in DOCKERFILE
    service = compose["services"]["txrelay"]
    assert "healthcheck" not in service or not service["healthcheck"].get("disable")
    assert service["stop_grace_period"] == "30s"


def test_submission_is_published_and_metrics_only_on_loopback(compose: dict[str, Any]) -> None:
    ports = compose["services"]["txrelay"]["ports"]
    assert "587:587" in ports
    assert {p for p in ports if p.endswith((":9151", ":9152"))} == {
        "127.0.0.1:9151:9151", "127.0.0.1:9152:9152"}


def test_every_interpolated_variable_has_a_default(compose: dict[str, Any]) -> None:
    text = (ROOT / "compose.yaml").read_text()
    used = re.findall(r"\$\{(\w+)([^}]*)\}", text)
    assert used, "compose.yaml interpolates nothing"
    assert [name for name, rest in used if not rest.startswith(":-")] == []
