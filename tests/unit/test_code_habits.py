"""The habits the README's test command enforces: ruff's rules, ruff format over the package
and mypy --strict over it (pyproject.toml sets strict), so CI fails on the first lapse."""

from __future__ import annotations

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
