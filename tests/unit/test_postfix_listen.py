"""Listen addresses of master.cf inet services, and the parsing of smtpd_milters: pure logic
(the real master.cf cases are in tests/e2e/test_postfix_configure.py)."""

from __future__ import annotations

import pytest

from txrelay.errors import InvalidInput
from txrelay.provisioning.postfix_check import milter_entries
from txrelay.provisioning.postfix_listen import (
    ANY,
    interface_addresses,
    overlap,
    parse_listen,
    parse_service_name,
)


@pytest.mark.parametrize(("spec", "host", "port"), [
    ("2587", None, 2587),
    ("submission", None, 587),
    ("smtps", None, 465),
    ("127.0.0.1:2587", "127.0.0.1", 2587),
    ("192.0.2.10:submission", "192.0.2.10", 587),
    ("[::1]:2587", "::1", 2587),
    ("65535", None, 65535),
])
def test_listen_forms_an_admin_may_give(spec: str, host: str | None, port: int) -> None:
    address = parse_listen(spec)
    assert (address.service, address.host, address.port) == (spec, host, port)


@pytest.mark.parametrize("spec", ["0", "65536", "-1", "", "no-such-service", "host.example:25",
                                  "::1:25", "[::1]", "[127.0.0.1]:25", "300.0.0.1:25",
                                  "127.0.0.1:", "a b"])
def test_anything_else_is_refused_naming_the_forms(spec: str) -> None:
    with pytest.raises(InvalidInput, match=r"is not a listen address: give a port"):
        parse_listen(spec)


def test_implicit_tls_refusal_names_its_option() -> None:
    with pytest.raises(InvalidInput, match=r"^--implicit-tls 'x:y'"):
        parse_listen("x:y", "--implicit-tls")


def test_existing_service_with_a_host_name_is_resolved() -> None:
    address = parse_service_name("localhost:587")
    assert address is not None and address.port == 587
    assert address.host in ("127.0.0.1", "::1")


@pytest.mark.parametrize(("first", "second", "collide"), [
    ("submission", "587", True),
    ("submission", "127.0.0.1:587", True),
    ("0.0.0.0:587", "192.0.2.10:587", True),
    ("127.0.0.1:587", "192.0.2.10:587", False),
    ("[::]:587", "127.0.0.1:587", True),
    ("[::ffff:127.0.0.1]:587", "127.0.0.1:587", True),
])
def test_same_port_collides_unless_both_addresses_are_distinct(first: str, second: str,
                                                               collide: bool) -> None:
    a, b = parse_service_name(first), parse_service_name(second)
    assert a is not None and b is not None and a.port == b.port
    assert overlap(a.addresses("all"), b.addresses("all")) is collide


def test_service_without_host_listens_on_inet_interfaces() -> None:
    service = parse_listen("587")
    assert service.addresses("all") == {ANY}
    assert service.addresses("127.0.0.1, 192.0.2.1") == {"127.0.0.1", "192.0.2.1"}
    assert not overlap(service.addresses("127.0.0.1"), parse_listen("192.0.2.10:587")
                       .addresses("127.0.0.1"))
    assert interface_addresses("loopback-only") == {"127.0.0.1", "::1"}


@pytest.mark.parametrize(("value", "expected"), [
    ("", []),
    ("unix:/run/txrelay/milter.sock", [("unix:/run/txrelay/milter.sock", {})]),
    ("inet:127.0.0.1:8891, unix:/run/m.sock", [("inet:127.0.0.1:8891", {}),
                                               ("unix:/run/m.sock", {})]),
    ("{ inet:127.0.0.1:8891, default_action=accept } unix:/run/m.sock",
     [("inet:127.0.0.1:8891", {"default_action": "accept"}), ("unix:/run/m.sock", {})]),
    ("{inet:127.0.0.1:8891,default_action=accept,command_timeout=5s}",
     [("inet:127.0.0.1:8891", {"default_action": "accept", "command_timeout": "5s"})]),
])
def test_smtpd_milters_with_and_without_per_milter_settings(
        value: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert milter_entries(value) == expected
