"""py-spy on the running milter: where its CPU goes, summarised from collapsed stacks."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from bench.backing import VENV_BIN
from bench.procs import BenchFailure


class Profiler:
    """`py-spy record` of one process while a scenario runs.

    gil=True keeps only samples of the thread holding the GIL: the milter's Python CPU.
    gil=False keeps every thread py-spy does not see idle: closer to wall-clock time, so
    waits on PostgreSQL and Redis show up (py-spy cannot tell them from work).
    """

    def __init__(self, pid: int, output: Path, *, gil: bool, rate: int = 250) -> None:
        tool = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
        if not Path(tool).exists():
            raise BenchFailure(f"py-spy is not installed: {VENV_BIN / 'pip'} install "
                               "py-spy (or run without --profile)")
        self.output = output
        self.log = output.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [tool, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                 "--output", str(output), "--nonblocking", *(["--gil"] if gil else [])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if not self.output.exists():
            raise BenchFailure(f"py-spy wrote no profile; see {self.log}")


def summarise(collapsed: Path, top: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive shares (% of busy samples) per function, biggest first."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"self": [], "inclusive": [], "samples": []}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"self": share(own), "inclusive": share(inclusive), "samples": [("busy", total)]}


def _short(frame: str) -> str:
    """'func (/path/to/site-packages/pkg/mod.py:12)' -> 'func (pkg/mod.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name
