"""Files the tests leave for CI to keep (the dashboard's screenshots): where they are
written, and the list tests/conftest.py prints at the end of the run, so that a CI log says
where to find them. The list is read from the directory (files written since this module was
first imported, i.e. since the run started): with pytest-xdist the files are written by the
workers, the summary is printed by the controller."""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTED = time.time()


def base_dir() -> Path:
    """$TXRELAY_ARTIFACTS, else the checkout's test-artifacts (.gitignore'd)."""
    return Path(os.environ.get("TXRELAY_ARTIFACTS") or ROOT / "test-artifacts")


def artifacts_dir(name: str) -> Path:
    """base_dir()/NAME, made if missing."""
    directory = base_dir() / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def summary() -> list[str]:
    """One line per directory, then the full paths of its files written in this run."""
    base = base_dir()
    written = sorted(path for path in base.rglob("*")
                     if path.is_file() and path.stat().st_mtime >= STARTED - 1) \
        if base.is_dir() else []
    lines: list[str] = []
    for directory in dict.fromkeys(path.parent for path in written):
        mine = [path for path in written if path.parent == directory]
        lines.append(f"{len(mine)} files in {directory}/:")
        lines += [f"  {path}" for path in mine]
    return lines
