"""The hourly rate limit counts recipients (txrelay/policy/quota.py, reserve.lua: one unit per
RCPT), so nothing the admin reads may call it mails or messages per hour."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What an admin reads: the docs, the package (--help, errors, the apply schema, web pages)
# the Postfix configuration txrelay writes, the units, alerts and scripts it ships.
READ_BY_ADMINS = ("README.md", "docs", "txrelay", "postfix-conf", "deploy", "scripts")
SUFFIXES = {".md", ".py", ".json", ".html", ".cf", ".fragment", ".conf", ".service", ".sh", ".sql",
            ".lua", ".toml", ".yaml", ".yml"}
MAILS_PER_HOUR = re.compile(
    r"\b(e-?)?(mails?|messages?|msgs?)\s*(per|an|a|each|every|/)\s*h(ou)?r?\b", re.IGNORECASE
)


def _files() -> list[Path]:
    found = []
    for name in READ_BY_ADMINS:
        top = ROOT / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        found += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES]
    return found


def test_the_pattern_finds_the_wordings_it_is_meant_to() -> None:
    for wording in ("25 mails per hour", "Mails per hour", "500 mails/hour", "messages an hour",
                    "10 e-mails/h", "messages per hr"):
        assert MAILS_PER_HOUR.search(wording), wording
    assert not MAILS_PER_HOUR.search("25 recipients per hour; 1,000 mails per month")


def test_no_file_an_admin_reads_calls_the_hourly_rate_mails_or_messages() -> None:
    files = _files()
    assert ROOT / "txrelay" / "schema" / "apply.schema.json" in files
    wrong = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if MAILS_PER_HOUR.search(line)
    ]
    assert wrong == [], "the hourly limit counts recipients:\n" + "\n".join(wrong)
