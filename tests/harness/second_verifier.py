"""DKIM verified by implementations independent of dkimpy: Perl's Mail::DKIM
(tests/harness/mail_dkim_verify.pl; RSA only in Debian's 1.20230212) and Node.js's mailauth
(tests/harness/mailauth_verify.js; RSA and Ed25519), with the public keys taken from
PostgreSQL."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg

from tests.harness.processes import run

SCRIPT = Path(__file__).with_name("mail_dkim_verify.pl")
MAILAUTH_SCRIPT = Path(__file__).with_name("mailauth_verify.js")
# scripts/install-test-deps.sh installs mailauth beside the venv's Python.
MAILAUTH_MODULES = Path(sys.prefix) / "node" / "node_modules"

# Every key a domain's DNS would publish: the signing key and any being rotated in or out.
SELECT_PUBLISHED_KEYS = """
SELECT k.selector, d.domain, k.algorithm, k.public_key_b64
  FROM sending_domains d
  JOIN dkim_keys k ON k.id = d.dkim_key_id OR k.id = d.second_dkim_key_id
       OR k.id IN (SELECT r.dkim_key_id FROM dkim_key_rotations r WHERE r.domain_id = d.id)"""


def published_keys(database_url: str) -> str:
    """The KEYS file's text: 'selector._domainkey.domain<TAB>record' per key."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(SELECT_PUBLISHED_KEYS).fetchall()
    return "".join(f"{selector}._domainkey.{domain}\tv=DKIM1; k={algorithm}; p={key}\n"
                   for selector, domain, algorithm, key in rows)


def mail_dkim_results(database_url: str, messages: Mapping[str, bytes]) -> dict[str, str]:
    """Mail::DKIM's verdict on each message: 'domain=result (detail); ...' or 'none'."""
    return _verdicts(["perl", str(SCRIPT)], database_url, messages)


def mailauth_results(database_url: str, messages: Mapping[str, bytes]) -> dict[str, str]:
    """mailauth's verdict on each message: 'domain=result (algorithm, selector, comment);
    ...' or 'none'."""
    if not (MAILAUTH_MODULES / "mailauth").is_dir():
        raise RuntimeError(f"mailauth is missing in {MAILAUTH_MODULES}: run scripts/test.sh "
                           "(scripts/install-test-deps.sh installs it)")
    env = {**os.environ, "NODE_PATH": str(MAILAUTH_MODULES)}
    return _verdicts(["node", str(MAILAUTH_SCRIPT)], database_url, messages, env)


def _verdicts(command: Sequence[str], database_url: str, messages: Mapping[str, bytes],
              env: dict[str, str] | None = None) -> dict[str, str]:
    """Run a verifier script over the messages, with the keys DNS would publish."""
    with tempfile.TemporaryDirectory(prefix="mail-dkim-") as directory:
        folder = Path(directory)
        keys = folder / "keys"
        keys.write_text(published_keys(database_url))
        files = {}
        for index, (name, raw) in enumerate(messages.items()):
            path = folder / f"{index}.eml"
            path.write_bytes(raw)
            files[str(path)] = name
        done = run([*command, str(keys), *files], timeout=300, env=env)
    results = {}
    for line in done.stdout.splitlines():
        path, _, verdict = line.partition("\t")
        results[files[path]] = verdict
    return results


def passes_for(verdict: str, domain: str, algorithm: str = "") -> bool:
    """Whether the verifier found a signature of `domain` (made with `algorithm`, e.g.
    "ed25519-sha256", when given: mailauth's verdicts name it) that verifies."""
    return any(part.strip().startswith(f"{domain}=pass (") and algorithm in part
               for part in verdict.split(";"))
