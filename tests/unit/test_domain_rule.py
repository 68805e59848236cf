"""One domain rule (UTS 46 / IDNA 2008, round-trip checked) for the CLI and the milter."""

from __future__ import annotations

import pytest

from txrelay.errors import InvalidInput
from txrelay.policy.addresses import header_sender
from txrelay.policy.message import check_client_signatures, check_sender_header
from txrelay.policy.names import DomainProblem, InvalidDomain, dns_domain, normalize_domain
from txrelay.policy.sender import authorize_sender, check_sender_domain
from txrelay.policy.snapshot import ConnectionPolicy
from txrelay.policy.verdict import Verdict

ENCODED_WORD = "=?utf-8?b?c2hvcC5leGFtcGxl?="  # "shop.example"


@pytest.mark.parametrize(("typed", "dns"), [
    ("faß.example", "xn--fa-hia.example"),  # IDNA 2008: ß is a letter, not "ss"
    ("FASS.example", "fass.example"),
    ("ςσ.example", "xn--3xac.example"),  # final sigma kept
    ("ΑΣ.example", "xn--mxa0b.example"),  # upper case maps to σ, as UTS 46 says
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--fa-hia.example", "xn--fa-hia.example"),
    ("Shop.Example", "shop.example"),
])
def test_cli_and_milter_give_one_dns_form(typed: str, dns: str) -> None:
    assert dns_domain(typed) == dns
    assert normalize_domain(typed) == dns
    author = header_sender([f"Shop <orders@{typed}>"])
    assert not isinstance(author, Verdict) and author.domain == dns


@pytest.mark.parametrize(("typed", "problem"), [
    (ENCODED_WORD, DomainProblem.ENCODED_WORD),
    ("sho\u200bp.example", DomainProblem.INVISIBLE),  # zero-width space
    ("sho\u00adp.example", DomainProblem.INVISIBLE),  # soft hyphen
    ("shop\u200e.example", DomainProblem.INVISIBLE),  # left-to-right mark
    ("\u202eelpmaxe.shop", DomainProblem.INVISIBLE),  # right-to-left override
    ("sh\u200dop.example", DomainProblem.INVISIBLE),  # zero-width joiner
    ("shop\ufe0f.example", DomainProblem.INVISIBLE),  # variation selector: UTS 46 drops it
    ("ｓｈｏｐ.example", DomainProblem.NOT_ROUND_TRIP),  # full-width letters
    ("ﬀ.example", DomainProblem.NOT_ROUND_TRIP),  # a ligature
    ("xn--zz.example", DomainProblem.SYNTAX),
])
def test_hiding_domains_are_refused_alike_by_cli_and_milter(typed: str,
                                                           problem: DomainProblem) -> None:
    with pytest.raises(InvalidDomain) as refused:
        dns_domain(typed)
    assert refused.value.problem is problem
    with pytest.raises(InvalidInput):
        normalize_domain(typed)
    if problem is not DomainProblem.SYNTAX:
        verdict = header_sender([f"orders@{typed}"])
        assert isinstance(verdict, Verdict) and verdict.label == "550 5.1.7", verdict


def test_encoded_word_as_the_domain_of_a_display_name_address_is_refused() -> None:
    verdict = header_sender([f"Shop <orders@{ENCODED_WORD}>"])
    assert isinstance(verdict, Verdict) and verdict.label == "550 5.1.7"
    verdict = header_sender([f"orders@{ENCODED_WORD}"])
    assert isinstance(verdict, Verdict) and verdict.label == "550 5.1.7"
    assert "encoded word" in verdict.text


def connection_of(domain: str) -> ConnectionPolicy:
    return ConnectionPolicy(id=1, name="Shop", account_id=1, enabled=True,
                            domains=frozenset({domain}), rate_limit=0)


def test_owner_of_fass_example_cannot_send_as_fass_with_eszett() -> None:
    fass = connection_of("fass.example")
    author = header_sender(["orders@faß.example"])
    assert not isinstance(author, Verdict)
    refusal = check_sender_domain(fass, author.domain, author.address)
    assert isinstance(refusal, Verdict) and refusal.label == "550 5.7.1"
    eszett = connection_of(normalize_domain("faß.example"))
    assert check_sender_domain(eszett, author.domain, author.address) is eszett


def test_a_domain_of_100_kb_is_refused_before_any_per_character_work() -> None:
    import time

    huge = "\u00e4" * 100_000 + ".example"
    start = time.process_time()
    with pytest.raises(InvalidDomain) as refused:
        dns_domain(huge)
    assert (time.process_time() - start) < 0.005 and "at most 253" in str(refused.value)


@pytest.mark.parametrize("sender", [f"<orders@{ENCODED_WORD}>", "<orders@sho\u200bp.example>",
                                    "<orders@shop.example\u200e>"])
def test_envelope_sender_domain_that_hides_what_it_is_gets_5_1_7_at_mail(sender: str) -> None:
    from tests.unit.test_policy_decisions import SNAPSHOT

    verdict = authorize_sender(SNAPSHOT, "webshop", sender)
    assert isinstance(verdict, Verdict) and verdict.label == "550 5.1.7", verdict


def test_sender_header_domain_that_hides_what_it_is_gets_5_1_7() -> None:
    from tests.unit.test_policy_decisions import SHOP

    verdict = check_sender_header(SHOP, ["ops@sho\u00adp.example"])
    assert verdict is not None and verdict.label == "550 5.1.7", verdict
    assert check_sender_header(SHOP, ["ops@shop.example"]) is None


def test_client_signature_with_a_d_of_100_kb_is_refused_in_little_cpu() -> None:
    """A DKIM-Signature is no address header, so the From:/Sender: bounds do not reach its
    d= (Postfix lets a header reach 100 KB): the domain rule's length check must, and the
    reply must stay one short line."""
    import time

    from tests.unit.test_policy_decisions import SHOP

    signature = "v=1; a=rsa-sha256; d=" + "\u00e4" * 100_000 + ".example; s=x; b=AAAA"
    start = time.process_time()
    verdict = check_client_signatures(SHOP, [signature])
    assert (time.process_time() - start) < 0.005
    assert verdict is not None and verdict.label == "550 5.7.1", verdict
    assert len(str(verdict.text)) < 300, len(str(verdict.text))
