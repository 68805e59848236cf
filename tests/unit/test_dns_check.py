"""dns_check's per-record verdicts where the CLI tests cannot reach: a record kind with no
check of its own yet (the return-path slot), and a machine without any resolver."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_spf_policy import FakeDns
from txrelay.config import DnsConfig
from txrelay.errors import ServiceUnavailable
from txrelay.provisioning import dns_check
from txrelay.provisioning.dkim_keys import DnsRecord
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.provisioning.dns_records import RETURN_PATH, ExpectedRecord

RECORD = ExpectedRecord(RETURN_PATH, "bounce.shop.example",
                        DnsRecord("bounce.shop.example", "v=spf1 include:_spf.relay.example -all"),
                        "the return path")


@pytest.mark.parametrize(("published", "verdict"), [
    (["v=spf1 include:_spf.relay.example -all"], "ok"),
    (["v=spf1 -all"], "mismatch"),
    ([], "missing"),
])
def test_a_record_to_publish_as_printed_is_checked_as_printed(published: list[str],
                                                              verdict: str) -> None:
    lookup = FakeDns({"bounce.shop.example": {"TXT": published}})
    result = dns_check.check_present(lookup, RECORD)
    assert result.verdict == verdict
    assert result.failed is (verdict != "ok")
    if verdict != "ok":
        assert result.fix == ("publish: bounce.shop.example. IN TXT "
                              '"v=spf1 include:_spf.relay.example -all"')


def test_no_resolver_anywhere_is_a_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "resolv.conf"
    empty.write_text("# no nameserver lines\n")
    with pytest.raises(ServiceUnavailable, match=r"names none; set \[dns\] resolver"):
        DnsLookup(DnsConfig(), system_resolvers=str(empty))
    DnsLookup(DnsConfig(resolver="127.0.0.1:5353"), system_resolvers=str(empty))
