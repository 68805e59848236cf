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


RENAMES = {"os.replace", "os.rename", "os.renames", "shutil.move"}
# Renames that are moves, not file writes: each with its reason.
RENAME_ALLOWED = {
    ("txrelay/atomic_file.py", "os.replace"): "the one atomic write",
    ("txrelay/store/journal.py", "os.rename"): (
        "the active journal file is made under a hidden name, locked, then moved where the "
        "replay's glob sees it while it stays open for appends: a move of a live file"
    ),
}


def renames_in(source: str, name: str) -> list[tuple[str, str]]:
    """(module, call) for each os.replace/os.rename/shutil.move in one module, also when
    imported by name (from os import replace)."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in {"os", "shutil"}:
            found += [
                (name, f"{node.module}.{alias.name}")
                for alias in node.names
                if f"{node.module}.{alias.name}" in RENAMES
            ]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            called = f"{owner.id}.{node.func.attr}" if isinstance(owner, ast.Name) else ""
            if called in RENAMES:
                found.append((name, called))
    return found


def test_files_are_replaced_only_through_atomic_file() -> None:
    """One atomic write (txrelay/atomic_file.write_atomically: mode before content, fsync,
    rename, nothing left behind); a hand-rolled temp file + rename elsewhere is a copy of it
    that drifts. A rename that is a move, not a write, goes in RENAME_ALLOWED with why."""
    found = {
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        for hit in renames_in(path.read_text(), str(path.relative_to(ROOT)))
    }
    assert found - RENAME_ALLOWED.keys() == set()
    assert RENAME_ALLOWED.keys() - found == set(), "an allowed rename is gone: drop its entry"


def test_the_rename_check_sees_each_spelling() -> None:
    source = (
        "import os, shutil\n"
        "from os import rename\n"
        "os.replace(a, b)\n"
        "shutil.move(a, b)\n"
        "text.replace('a', 'b')\n"
    )
    assert sorted(renames_in(source, "m.py")) == [
        ("m.py", "os.rename"),
        ("m.py", "os.replace"),
        ("m.py", "shutil.move"),
    ]
