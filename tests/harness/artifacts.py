"""Files the tests leave for CI to keep (the dashboard's screenshots): where they are
written, and the list that tests/e2e/conftest.py prints at the end of the run, so that a CI
log says where to find them."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITTEN: list[Path] = []


def artifacts_dir(name: str) -> Path:
    """$TXRELAY_ARTIFACTS/NAME, else the checkout's test-artifacts/NAME (.gitignore'd)."""
    base = Path(os.environ.get("TXRELAY_ARTIFACTS") or ROOT / "test-artifacts")
    directory = base / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def record(path: Path) -> Path:
    """Note PATH as written in this run (once)."""
    if path not in WRITTEN:
        WRITTEN.append(path)
    return path


def summary() -> list[str]:
    """One line per directory, then its files' full paths, in the order they were written."""
    lines: list[str] = []
    for directory in dict.fromkeys(path.parent for path in WRITTEN):
        lines.append(f"{len([p for p in WRITTEN if p.parent == directory])} files in "
                     f"{directory}/:")
        lines += [f"  {path}" for path in WRITTEN if path.parent == directory]
    return lines
