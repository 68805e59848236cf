"""The habits the README's test command enforces: ruff's rules, ruff format over the package
and mypy --strict over it (pyproject.toml sets strict), so CI fails on the first lapse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing_in_the_package_and_the_tests() -> None:
    done = run(str(TOOLS / "ruff"), "check", "--quiet", "txrelay", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_is_as_ruff_format_writes_it() -> None:
    done = run(str(TOOLS / "ruff"), "format", "--check", "txrelay")
    assert done.returncode == 0, done.stdout + done.stderr + "\nrun: ruff format txrelay"


def test_mypy_strict_is_clean_over_the_package() -> None:
    done = run(str(TOOLS / "mypy"), "--strict", "txrelay")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr


PACKAGE = ROOT / "txrelay"


def _is_protocol(base: ast.expr) -> bool:
    if isinstance(base, ast.Subscript):  # Protocol[T]
        base = base.value
    return (isinstance(base, ast.Name) and base.id == "Protocol") or (
        isinstance(base, ast.Attribute) and base.attr == "Protocol"
    )


def protocols_without_docstring(source: str, name: str) -> list[str]:
    """The Protocol classes of one module that do not say what they stand for."""
    return [
        f"{name}:{node.lineno} {node.name}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef)
        and any(_is_protocol(base) for base in node.bases)
        and not (ast.get_docstring(node) or "").strip()
    ]


def test_every_protocol_in_the_package_says_what_it_stands_for() -> None:
    """A Protocol is the seam a test's in-memory double and the real store meet at; its
    docstring is the contract both keep."""
    missing = [
        found
        for path in sorted(PACKAGE.rglob("*.py"))
        for found in protocols_without_docstring(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert missing == []


def test_the_protocol_check_sees_bare_qualified_and_generic_protocols() -> None:
    source = (
        "import typing\n"
        "class A(Protocol):\n    def f(self) -> None: ...\n"
        "class B(typing.Protocol):\n    x: int\n"
        "class C(Protocol[T]):\n    pass\n"
        "class D(Protocol):\n    '''Documented.'''\n"
        "class E(Base):\n    pass\n"
    )
    assert protocols_without_docstring(source, "m.py") == ["m.py:2 A", "m.py:4 B", "m.py:6 C"]
