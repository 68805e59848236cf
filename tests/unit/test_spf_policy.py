"""SPF evaluation for the relay's addresses (txrelay/provisioning/spf_policy.py): pure logic,
DNS answered from a dict (the CLI tests run the same code against a real DNS server)."""

from __future__ import annotations

import ipaddress

import pytest

from txrelay.provisioning import spf_policy
from txrelay.provisioning.dns_lookup import LookupFailed

RELAY = ipaddress.ip_network("192.0.2.10/32")
RELAY6 = ipaddress.ip_network("2001:db8::10/128")


class FakeDns:
    """name → {type: [values]}; a name in `failing` raises as a DNS timeout would."""

    def __init__(self, zone: dict[str, dict[str, list[str]]], failing: tuple[str, ...] = ()):
        self.zone = zone
        self.failing = failing
        self.asked: list[str] = []

    def _get(self, name: str, rtype: str) -> list[str]:
        self.asked.append(f"{name} {rtype}")
        if name in self.failing:
            raise LookupFailed(f"DNS lookup of {name} {rtype} failed (timeout)")
        return list(self.zone.get(name, {}).get(rtype, []))

    def txt(self, name: str) -> list[str]:
        return self._get(name, "TXT")

    def addresses(self, name: str, rtype: str) -> list[str]:
        return self._get(name, rtype)

    def mx(self, name: str) -> list[str]:
        return self._get(name, "MX")


def spf(record: str, **more: dict[str, list[str]]) -> FakeDns:
    return FakeDns({"shop.example": {"TXT": [record]}, **more})


@pytest.mark.parametrize(("record", "result"), [
    ("v=spf1 ip4:192.0.2.10 -all", "pass"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
    ("v=spf1 +ip4:192.0.2.10/32 -all", "pass"),
    ("v=spf1 ip4:192.0.2.11 -all", "fail"),
    ("v=spf1 ip4:192.0.2.11 ~all", "softfail"),
    ("v=spf1 ip4:192.0.2.11 ?all", "neutral"),
    ("v=spf1 ip4:192.0.2.11", "neutral"),
    ("v=spf1 -ip4:192.0.2.10 +all", "fail"),
    ("v=spf1 ip6:2001:db8::/64 -all", "fail"),  # IPv4 relay, IPv6 network
    ("v=spf1 ip4:192.0.2.300 -all", "permerror"),
    ("v=spf1 frobnicate -all", "permerror"),
    ("v=spf1 exp=explain.shop.example ip4:192.0.2.10 -all", "pass"),
])
def test_ip_mechanisms_and_qualifiers(record: str, result: str) -> None:
    assert spf_policy.evaluate(spf(record), "shop.example", RELAY).result == result


def test_a_and_mx_with_prefix_lengths() -> None:
    lookup = spf("v=spf1 a:out.shop.example/30 mx//64 -all",
                 **{"out.shop.example": {"A": ["192.0.2.9"]}})
    lookup.zone["shop.example"].update(MX=["mx.shop.example"])
    lookup.zone["mx.shop.example"] = {"AAAA": ["2001:db8::1"]}
    assert spf_policy.evaluate(lookup, "shop.example", RELAY).result == "pass"
    assert spf_policy.evaluate(lookup, "shop.example", RELAY6).result == "pass"
    outside = ipaddress.ip_network("192.0.2.12/32")
    assert spf_policy.evaluate(lookup, "shop.example", outside).result == "fail"


def test_include_and_redirect_are_followed() -> None:
    relay = {"TXT": ["v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"]}
    lookup = spf("v=spf1 include:_spf.relay.example -all", **{"_spf.relay.example": relay})
    assert spf_policy.evaluate(lookup, "shop.example", RELAY6).result == "pass"
    lookup = spf("v=spf1 redirect=_spf.relay.example", **{"_spf.relay.example": relay})
    assert spf_policy.evaluate(lookup, "shop.example", RELAY).result == "pass"
    lookup = spf("v=spf1 include:nothing.example -all")
    assert spf_policy.evaluate(lookup, "shop.example", RELAY).result == "permerror"


def test_the_relays_include_counts_as_authorised_without_looking_it_up() -> None:
    lookup = spf("v=spf1 mx include:_SPF.relay.example. -all")
    result = spf_policy.evaluate(lookup, "shop.example", "_spf.relay.example")
    assert result.result == "pass"
    assert lookup.asked == ["shop.example TXT"]


def test_more_than_ten_dns_terms_is_a_permerror() -> None:
    zone = {f"l{i}.example": {"TXT": [f"v=spf1 include:l{i + 1}.example -all"]}
            for i in range(1, 12)}
    zone["l12.example"] = {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]}
    lookup = spf("v=spf1 include:l1.example -all", **zone)
    result = spf_policy.evaluate(lookup, "shop.example", RELAY)
    assert result.result == "permerror" and "more than 10 DNS lookups" in result.reason
    zone["l9.example"] = {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]}  # 9 includes: allowed
    assert spf_policy.evaluate(spf("v=spf1 include:l1.example -all", **zone), "shop.example",
                               RELAY).result == "pass"


def test_more_than_two_void_lookups_is_a_permerror() -> None:
    lookup = spf("v=spf1 a:x1.example a:x2.example a:x3.example ip4:192.0.2.10 -all")
    result = spf_policy.evaluate(lookup, "shop.example", RELAY)
    assert result.result == "permerror" and "found nothing" in result.reason


def test_macros_and_ptr_cannot_be_decided_for_the_relay() -> None:
    assert spf_policy.evaluate(spf("v=spf1 exists:%{i}.x.example -all"), "shop.example",
                               RELAY).result == "unknown"
    assert spf_policy.evaluate(spf("v=spf1 ptr -all"), "shop.example", RELAY).result == "unknown"
    # ...unless an earlier term already decided
    assert spf_policy.evaluate(spf("v=spf1 ip4:192.0.2.10 ptr -all"), "shop.example",
                               RELAY).result == "pass"


def test_no_record_two_records_and_dns_failures() -> None:
    assert spf_policy.evaluate(FakeDns({}), "shop.example", RELAY).result == "none"
    two = FakeDns({"shop.example": {"TXT": ["v=spf1 -all", "v=spf1 mx -all"]}})
    assert spf_policy.evaluate(two, "shop.example", RELAY).result == "permerror"
    failing = spf("v=spf1 include:slow.example -all")
    failing.failing = ("slow.example",)
    assert spf_policy.evaluate(failing, "shop.example", RELAY).result == "temperror"


def test_a_relay_network_is_authorised_only_when_covered_whole() -> None:
    network = ipaddress.ip_network("192.0.2.0/28")
    assert spf_policy.evaluate(spf("v=spf1 ip4:192.0.2.0/24 -all"), "shop.example",
                               network).result == "pass"
    assert spf_policy.evaluate(spf("v=spf1 ip4:192.0.2.0/29 -all"), "shop.example",
                               network).result == "fail"


def test_merged_record_keeps_every_mechanism_once_and_the_first_all() -> None:
    assert spf_policy.merged_record(["v=spf1 mx include:_spf.google.com -all"],
                                    ["include:_spf.relay.example"]) == \
        "v=spf1 mx include:_spf.google.com include:_spf.relay.example -all"
    assert spf_policy.merged_record(["v=spf1 a -all", "v=spf1 a mx ~all"], ["ip4:192.0.2.10"]) \
        == "v=spf1 a mx ip4:192.0.2.10 -all"
    assert spf_policy.merged_record(["v=spf1 redirect=_spf.host.example"],
                                    ["include:_spf.relay.example"]) == \
        "v=spf1 include:_spf.relay.example redirect=_spf.host.example"
    assert spf_policy.merged_record(["v=spf1 include:_spf.relay.example -all"],
                                    ["include:_spf.relay.example"]) == \
        "v=spf1 include:_spf.relay.example -all"


def test_relay_terms_prefer_the_include() -> None:
    networks = [RELAY, RELAY6, ipaddress.ip_network("198.51.100.0/28")]
    assert spf_policy.relay_terms("_spf.relay.example.", networks) == [
        "include:_spf.relay.example"]
    assert spf_policy.relay_terms("", networks) == [
        "ip4:192.0.2.10", "ip6:2001:db8::10", "ip4:198.51.100.0/28"]
