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
    standalone = re.findall(r'^    standalone\) \[ -n "\$\{(\w+):-\}" \]', ENTRYPOINT, re.M)
    # The database: an admin URL for init's step (compose's way), or a DBA's database URL.
    database = re.search(r'^\[ -n "\$\{(\w+):-\}" \] \|\| \[ -n "\$admin_url" \] \\\n'
                         r'    \|\| die', ENTRYPOINT, re.M)
    assert database is not None and database[1] == "TXRELAY_DATABASE_URL"
    assert 'admin_url=${RELAY_DATABASE_ADMIN_URL:-}' in ENTRYPOINT
    required = ["RELAY_DATABASE_ADMIN_URL", *standalone]
    assert required == ["RELAY_DATABASE_ADMIN_URL", "TXRELAY_REDIS_URL"]
    assert set(required) <= set(environment)
    assert all(str(environment[name]).strip() for name in required)


def test_urls_point_at_the_compose_services_with_their_credentials(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres_env = services["postgres"]["environment"]
    admin = urlsplit(interpolate(services["txrelay"]["environment"]["RELAY_DATABASE_ADMIN_URL"]))
    assert (admin.scheme, admin.hostname, admin.port) == ("postgresql", "postgres", 5432)
    assert admin.username == postgres_env["POSTGRES_USER"]
    assert admin.password == interpolate(postgres_env["POSTGRES_PASSWORD"])
    assert admin.path == "/postgres"  # the image's own database: init makes txrelay's
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


def test_nothing_in_the_compose_deployment_runs_as_the_database_superuser(
        compose: dict[str, Any]) -> None:
    """The postgres image makes POSTGRES_USER a superuser: it must be the image's admin, given
    to init's database step only, never the daemons' or the CLI's URL (issue 12)."""
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "postgres"
    assert "POSTGRES_DB" not in services["postgres"]["environment"]  # init makes txrelay's
    environment = services["txrelay"]["environment"]
    assert not {"TXRELAY_DATABASE_URL", "TXRELAY_DATABASE_MILTER_URL"} & set(environment)
    # init makes the roles with the admin URL; the daemons start only after the entrypoint
    # has unset it, with init's URLs (role txrelay; txrelay_milter for milter and tracker).
    init = ENTRYPOINT.index('txrelay init --config-path "$config"')
    assert ENTRYPOINT.index("unset RELAY_DATABASE_ADMIN_URL") < init
    assert 'database=(--admin-url "$admin_url" --database-name "$database_name")' in ENTRYPOINT
    assert '"${database[@]}"' in ENTRYPOINT[init:init + 200]
    assert "postgresql-client" in DOCKERFILE  # init's database step runs psql
