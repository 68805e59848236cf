"""The signature checks docs/bounces-and-webhooks.md gives shop developers (Python, PHP and
Node one-liners), run as written against a request txrelay's delivery code really sent to
an HTTP receiver: each accepts it, and refuses it once the body, the secret or the
timestamp is not the one signed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.webhook_receiver import Received, WebhookReceiver
from txrelay.config import DnsConfig
from txrelay.policy import webhooks as policy
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.webhooks.delivery import post

DOC = Path(__file__).resolve().parents[2] / "docs" / "bounces-and-webhooks.md"
SECRET = "whsec_recipe-test-secret"
RECIPE = re.compile(r"<!-- webhook-recipe: (\w+) -->\n```sh\n(.*?)\n```", re.S)
PROGRAMS = {"python": "python3", "php": "php", "node": "node"}


def recipes() -> dict[str, str]:
    return dict(RECIPE.findall(DOC.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def signed_request() -> Iterator[Received]:
    receiver = WebhookReceiver().start()
    try:
        outcome = post(receiver.url, {"id": "6f1d", "event": "bounced",
                                      "data": {"recipient": "jörg@example.org"}},
                       "6f1d", SECRET, resolver=DnsLookup(DnsConfig()), allow_private=True,
                       timeout=5)
        assert outcome.delivered, outcome
        [request] = receiver.received
        yield request
    finally:
        receiver.stop()


def check(command: str, body: bytes, signature: str, secret: str = SECRET) -> int:
    env = {**os.environ, "TXRELAY_SIGNATURE": signature, "WEBHOOK_SECRET": secret}
    return subprocess.run(["bash", "-c", command], input=body, env=env, capture_output=True,
                          timeout=30, check=False).returncode


def test_the_doc_has_the_three_recipes() -> None:
    assert sorted(recipes()) == ["node", "php", "python"]


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_recipe_accepts_txrelays_signed_request_and_refuses_a_changed_one(
        language: str, signed_request: Received) -> None:
    program = PROGRAMS[language]
    if shutil.which(program) is None:
        pytest.fail(f"{program} is missing: scripts/install-test-deps.sh installs it",
                    pytrace=False)
    command = recipes()[language]
    signature = signed_request.headers["Txrelay-Signature"]
    body = signed_request.body
    assert check(command, body, signature) == 0
    assert check(command, body.replace(b"bounced", b"delivered"), signature) == 1
    assert check(command, body, signature, secret="whsec_another") == 1
    stamp = int(signature.split(",")[0].removeprefix("t="))
    # Signed right, but an hour old: a replayed request.
    assert check(command, body, policy.signature(SECRET, stamp - 3600, body)) == 1
    assert check(command, body, policy.signature(SECRET, stamp - 10, body)) == 0
