"""The malformed corpus through real Postfix, each relayed message's signature checked by a
second DKIM implementation independent of dkimpy: Perl's Mail::DKIM (issue 12 item 9).

dkimpy builds the signature (txrelay.signing canonicalises with it) and
tests/e2e/test_malformed.py verifies with it too: a canonicalisation bug shared by signer
and verifier would pass there and fail at receivers. The corpus's domains have RSA keys,
which Mail::DKIM 1.20230212 verifies (it has no Ed25519)."""

from __future__ import annotations

import uuid

import pytest

from tests.corpus.malformed import corpus
from tests.e2e.test_malformed import Shop, make_shop, run_cases, wait_for_all
from tests.harness.fixtures import RelayStack
from tests.harness.provision import dkim_tags, verify_dkim
from tests.harness.second_verifier import mail_dkim_results, passes_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def corpus_shop(relay: RelayStack) -> Shop:
    token = uuid.uuid4().hex[:8]
    other = relay.provision()
    made = make_shop(relay.config_file, f"mdk-{token}", other.domain,
                     f"bücher-{token}.example")
    relay.settle_policy()
    return made


def test_second_verifier_catches_an_altered_body(relay: RelayStack,
                                                corpus_shop: Shop) -> None:
    """The check below can fail: one byte changed after signing fails Mail::DKIM."""
    cases = corpus(corpus_shop.domains)[:1]
    outcomes = run_cases(relay, corpus_shop, cases)
    rcpt = next(iter(outcomes))
    assert outcomes[rcpt].accepted, outcomes[rcpt]
    raw = wait_for_all(relay, {rcpt})[rcpt].raw
    domain = dkim_tags(raw)["d"]
    head, _, body = raw.partition(b"\r\n\r\n")
    altered = head + b"\r\n\r\n" + body + b"one more line\r\n"
    results = mail_dkim_results(relay.database_url, {"as relayed": raw, "altered": altered})
    assert passes_for(results["as relayed"], domain), results
    assert not passes_for(results["altered"], domain), results


def test_malformed_corpus_signatures_verify_with_perl_mail_dkim(relay: RelayStack,
                                                                corpus_shop: Shop) -> None:
    cases = corpus(corpus_shop.domains)
    outcomes = run_cases(relay, corpus_shop, cases)
    accepted = {rcpt for rcpt, outcome in outcomes.items() if outcome.accepted}
    arrived = wait_for_all(relay, accepted)
    assert accepted and set(arrived) == accepted, sorted(accepted - set(arrived))[:5]
    names = {rcpt: case.name for rcpt, case in zip(outcomes, cases, strict=True)}
    results = mail_dkim_results(relay.database_url,
                                {rcpt: capture.raw for rcpt, capture in arrived.items()})
    problems = []
    for rcpt, capture in arrived.items():
        domain = dkim_tags(capture.raw)["d"]
        if not passes_for(results[rcpt], domain):
            dkimpy = "passes" if verify_dkim(capture.raw, relay.database_url) else "fails"
            problems.append(f"{names[rcpt]}: Mail::DKIM says {results[rcpt]!r} for "
                            f"d={domain} (dkimpy {dkimpy})")
    print(f"\n{len(arrived)} relayed messages of {len(cases)} checked with Mail::DKIM; "
          f"{len(problems)} disagree")
    assert not problems, "\n".join(problems)
