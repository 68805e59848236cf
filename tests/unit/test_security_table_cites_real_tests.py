"""docs/security.md names the test that proves each row of its tables (`path::name`, or
`::name` for another test of the file just named), and a few in its text: every one must
exist, so the document cannot go stale when a test is renamed or removed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECURITY = ROOT / "docs" / "security.md"
CITATION = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")
FILE = re.compile(r"`(tests/[\w/]+\.py)`")


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(path, test name) of every citation, in order; `::name` belongs to the file named
    last on the same line (a table row or a sentence)."""
    cited = []
    for line in text.splitlines():
        path = ""
        for match in CITATION.finditer(line):
            path = match.group(1) or path
            assert path, f"`::{match.group(2)}` follows no test file in: {line}"
            cited.append((path, match.group(2)))
    return cited


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_every_test_the_security_tables_cite_exists() -> None:
    cited = cited_tests(SECURITY.read_text())
    assert len(cited) >= 40, f"only {len(cited)} citations found: has the table format changed?"
    missing = []
    for path, name in cited:
        file = ROOT / path
        if not file.is_file() or name not in defined_functions(file):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/security.md cites tests that do not exist: {missing}"


def test_every_test_file_the_security_tables_cite_exists() -> None:
    files = {match.group(1) for match in FILE.finditer(SECURITY.read_text())}
    assert files and not [f for f in files if not (ROOT / f).is_file()]


def test_a_misspelt_citation_is_caught() -> None:
    row = (
        "| x | y | `tests/unit/test_postfix_check.py::test_no_auth_rate_limit_is_a_warning`, "
        "`::test_auth_rate_limit_above_ten_a_minute_is_a_warning` |"
    )
    (path, first), (same, second) = cited_tests(row)
    assert path == same == "tests/unit/test_postfix_check.py"
    names = defined_functions(ROOT / path)
    assert first in names and second not in names
