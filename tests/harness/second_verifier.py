"""DKIM verified by a second implementation, independent of dkimpy: Perl's Mail::DKIM
(tests/harness/mail_dkim_verify.pl), with the public keys taken from PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import psycopg

from tests.harness.processes import run

SCRIPT = Path(__file__).with_name("mail_dkim_verify.pl")

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
    with tempfile.TemporaryDirectory(prefix="mail-dkim-") as directory:
        folder = Path(directory)
        keys = folder / "keys"
        keys.write_text(published_keys(database_url))
        files = {}
        for index, (name, raw) in enumerate(messages.items()):
            path = folder / f"{index}.eml"
            path.write_bytes(raw)
            files[str(path)] = name
        done = run(["perl", str(SCRIPT), str(keys), *files], timeout=300)
    results = {}
    for line in done.stdout.splitlines():
        path, _, verdict = line.partition("\t")
        results[files[path]] = verdict
    return results


def passes_for(verdict: str, domain: str) -> bool:
    """Whether Mail::DKIM found a signature of `domain` that verifies."""
    return any(part.strip().startswith(f"{domain}=pass ") for part in verdict.split(";"))
