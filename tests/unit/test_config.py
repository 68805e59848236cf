"""Configuration loading: defaults, overrides, and the refusals that name the bad key."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from pathlib import Path

import pytest

from txrelay.config import SECTIONS, Config, environment_variable, load_config, render_toml
from txrelay.errors import ConfigError
from txrelay.settings_doc import layout_problems, rewrite_tables

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "txrelay.toml"
    path.write_text(text)
    return path


def test_missing_optional_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml", environ={})
    assert config.quota.demo_quota == 1000
    assert config.quota.overage_price_eur == Decimal("0.00095")


def test_missing_file_named_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml", required=True, environ={})


def test_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[milter]\nsockt = "unix:/x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'milter\.sockt'"):
        load_config(path, environ={})


def test_unknown_section_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[miltr\]"):
        load_config(write(tmp_path, "[miltr]\n"), environ={})


@pytest.mark.parametrize(("text", "key"), [
    ('[milter]\nmax_message_size = "big"\n', "milter.max_message_size"),
    ("[milter]\nmax_message_size = 0\n", "milter.max_message_size"),
    ('[milter]\nsocket = "/tmp/x.sock"\n', "milter.socket"),
    ('[milter]\nlog_level = "loud"\n', "milter.log_level"),
    ('[database]\nurl = "mysql://x"\n', "database.url"),
    ('[quota]\noverage_price_eur = "cheap"\n', "quota.overage_price_eur"),
    ("[quota]\nmin_block = true\n", "quota.min_block"),
])
def test_bad_value_is_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config(write(tmp_path, text), environ={})


def test_malformed_toml_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[database\nurl="), environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "postgresql://a@h/db"\n')
    config = load_config(path, environ={
        "TXRELAY_DATABASE_URL": "postgresql://b@h/other",
        "TXRELAY_REDIS_URL": "redis://127.0.0.1:6380/2",
        "TXRELAY_MILTER_MAX_MESSAGE_SIZE": "1000",
        "TXRELAY_CONFIG": str(path),
    })
    assert config.database.url == "postgresql://b@h/other"
    assert config.redis.url == "redis://127.0.0.1:6380/2"
    assert config.milter.max_message_size == 1000


def test_unknown_environment_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="TXRELAY_NOPE_X"):
        load_config(None, environ={"TXRELAY_NOPE_X": "1"})


def test_rendered_file_loads_back_to_the_same_config(tmp_path: Path) -> None:
    original = Config()
    loaded = load_config(write(tmp_path, render_toml(original)), environ={})
    assert dataclasses.replace(loaded, source="") == dataclasses.replace(original, source="")


def test_configuration_md_tables_are_generated_from_the_declarations() -> None:
    """Each setting is declared once (config.setting); the page's tables are its output.
    After changing a setting: python -m txrelay.settings_doc docs/configuration.md"""
    text = DOCS.read_text()
    assert rewrite_tables(text) == text
    assert layout_problems(text) == []
    in_code = {f"{name}.{f.name}" for name, cls in SECTIONS.items()
               for f in dataclasses.fields(cls)}
    for qualified in in_code:
        assert environment_variable(qualified) in text, qualified


def test_the_docs_check_refuses_a_section_twice_and_a_row_outside_its_table() -> None:
    """A merge once left [sandbox] twice and an [bounce] row after [sandbox]'s table; the
    generator rewrites the tables and keeps both, so the check looks for them itself."""
    text = DOCS.read_text()
    sandbox = text.index("## [sandbox]")
    section = text[sandbox : text.index("## [", sandbox + 1)]
    doubled = text.replace("## [limits]", section + "## [limits]", 1)
    assert rewrite_tables(doubled) == doubled
    assert any("[sandbox] has a second heading" in p for p in layout_problems(doubled))
    row = next(line for line in text.splitlines() if line.startswith("| `inbound_max_size`"))
    stray = text.replace("## [retention]", row + "\n\n## [retention]", 1)
    assert rewrite_tables(stray) == stray
    stray_line = len(stray[: stray.index("## [retention]")].splitlines()) - 1
    assert layout_problems(stray) == [f"line {stray_line}: a table row outside its section's table"]
    missing = text.replace("## [sandbox]", "## sandbox", 1)
    assert "[sandbox] has no heading" in layout_problems(missing)


def test_every_setting_declares_its_documentation() -> None:
    for cls in SECTIONS.values():
        for declared in dataclasses.fields(cls):
            assert declared.metadata.get("doc", "").strip(), f"{cls.__name__}.{declared.name}"


def test_an_environment_variables_error_names_the_variable_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[milter]\nlog_level = "info"\n')
    with pytest.raises(ConfigError) as unknown:
        load_config(path, environ={"TXRELAY_MILTER_LOGLEVEL": "debug"})
    assert str(unknown.value).startswith("environment variable TXRELAY_MILTER_LOGLEVEL: "
                                         "unknown key 'milter.loglevel'")
    with pytest.raises(ConfigError) as bad:
        load_config(path, environ={"TXRELAY_MILTER_LOG_LEVEL": "loud"})
    assert str(bad.value).startswith("environment variable TXRELAY_MILTER_LOG_LEVEL: "
                                     "'milter.log_level' = 'loud' is not one of")
    with pytest.raises(ConfigError) as in_file:
        load_config(write(tmp_path, '[milter]\nlog_level = "loud"\n'), environ={})
    assert str(in_file.value).startswith(f"{tmp_path / 'txrelay.toml'}: 'milter.log_level'")


def test_redis_topology_errors_name_each_values_own_source(tmp_path: Path) -> None:
    """A mode from the environment is not the file's fault, and a value set beside a mode
    from elsewhere says where that mode came from."""
    path = write(tmp_path, '[smtp]\nhost = "relay.example.net"\n')
    env_mode = "environment variable TXRELAY_REDIS_MODE"
    with pytest.raises(ConfigError) as mode:
        load_config(path, environ={"TXRELAY_REDIS_MODE": "cluster"})
    assert str(mode.value).startswith(
        f"{env_mode}: redis.mode = \"cluster\" needs 'redis.cluster_nodes'"
    )
    with pytest.raises(ConfigError) as sentinels:
        load_config(path, environ={"TXRELAY_REDIS_SENTINELS": "a:26379"})
    assert str(sentinels.value).startswith(
        "environment variable TXRELAY_REDIS_SENTINELS: 'redis.sentinels' is set but "
        'redis.mode is "standalone" (default);'
    )
    cluster_file = write(tmp_path, '[redis]\nmode = "cluster"\ncluster_nodes = "a:7000"\n')
    with pytest.raises(ConfigError) as url:
        load_config(cluster_file, environ={"TXRELAY_REDIS_URL": "redis://a:7000/2"})
    assert str(url.value).startswith(
        "environment variable TXRELAY_REDIS_URL: 'redis.url' selects a database other than 0; "
        f'redis.mode is "cluster" ({cluster_file}) and Redis Cluster has only database 0'
    )
    with pytest.raises(ConfigError) as all_env:
        load_config(
            path,
            environ={
                "TXRELAY_REDIS_MODE": "cluster",
                "TXRELAY_REDIS_CLUSTER_NODES": "a:7000",
                "TXRELAY_REDIS_URL": "redis://a:7000/2",
            },
        )
    assert str(all_env.value).startswith(
        "environment variable TXRELAY_REDIS_URL: 'redis.url' selects a database other than 0; "
        f'redis.mode is "cluster" ({env_mode}) and'
    )
    with pytest.raises(ConfigError) as in_file:
        load_config(write(tmp_path, '[redis]\nmode = "cluster"\n'), environ={})
    assert str(in_file.value).startswith(f"{tmp_path / 'txrelay.toml'}: redis.mode = \"cluster\"")


def test_each_value_remembers_where_it_came_from(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[smtp]\nhost = "relay.example.net"\n'),
                         environ={"TXRELAY_SMTP_PORT": "2587"})
    assert config.origin("smtp.host") == str(tmp_path / "txrelay.toml")
    assert config.origin("smtp.port") == "environment variable TXRELAY_SMTP_PORT"
    assert config.origin("smtp.tls_cert_file") == "default"


def test_test_command_variables_are_not_taken_for_settings() -> None:
    config = load_config(None, environ={"TXRELAY_TEST_NOW": "2026-01-01T00:00:00+00:00",
                                        "TXRELAY_TEST_REDIS_DB": "13",
                                        "TXRELAY_VENV": "/opt/txrelay/venv-x"})
    assert config.quota.demo_quota == 1000


def test_metrics_endpoint_may_be_turned_off_but_not_misspelt(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[metrics]\nmilter_listen = ""\n'), environ={})
    assert config.metrics.milter_listen == ""
    with pytest.raises(ConfigError, match=r"'metrics\.tracker_listen'"):
        load_config(write(tmp_path, '[metrics]\ntracker_listen = "9152"\n'), environ={})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("RESOLVER", "dns.example", "is not resolver addresses"),
    ("RESOLVER", "127.0.0.1:70000", "is not resolver addresses"),
    ("RELAY_ADDRESSES", "192.0.2.300", "is not IP addresses or networks"),
    ("SPF_INCLUDE", "not a name", "is not a host name"),
    ("DMARC_RUA", "https://reports.example/", "is not mailto: addresses"),
])
def test_bad_dns_settings_are_named(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"'dns.{key.lower()}' = .* {message}"):
        load_config(None, environ={f"TXRELAY_DNS_{key}": value})


def test_dns_settings_are_read() -> None:
    dns = load_config(None, environ={
        "TXRELAY_DNS_RESOLVER": "127.0.0.1:5353, [2001:db8::53]:53, 192.0.2.53",
        "TXRELAY_DNS_RELAY_ADDRESSES": "192.0.2.10, 2001:db8::10, 198.51.100.0/28"}).dns
    assert dns.resolver_addresses() == [("127.0.0.1", 5353), ("2001:db8::53", 53),
                                        ("192.0.2.53", 53)]
    assert [str(n) for n in dns.relay_networks()] == ["192.0.2.10/32", "2001:db8::10/128",
                                                      "198.51.100.0/28"]
    assert Config().dns.resolver_addresses() == []
