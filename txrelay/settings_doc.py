"""docs/configuration.md's tables, generated from the settings' declarations in config.py.

`python -m txrelay.settings_doc docs/configuration.md` rewrites every `## [section]` table from
the code (the prose around the tables stays the file's own); tests/unit/test_config.py fails
while the file and the code differ, or while the page has a section twice or a table row
outside a section's table (layout_problems; the command then refuses to write).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from txrelay.config import SECTIONS, environment_variable

_HEADING = re.compile(r"^## \[(\w+)\]$")


def settings_table(section: str) -> str:
    """The Markdown table of one section: key, default, environment variable, meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for declared in dataclasses.fields(SECTIONS[section]):
        qualified = f"{section}.{declared.name}"
        meaning = f"{declared.metadata['doc']} Environment: `{environment_variable(qualified)}`."
        rows.append(f"| `{declared.name}` | `{_shown(declared.default)}` | {meaning} |")
    return "\n".join(rows) + "\n"


def rewrite_tables(text: str) -> str:
    """text with the table under each `## [section]` heading replaced by the generated one."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    section: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        heading = _HEADING.match(line.rstrip("\n"))
        if heading:
            section = heading.group(1)
        if section is not None and line.startswith("| key |"):
            while index < len(lines) and lines[index].startswith("|"):
                index += 1
            out.append(settings_table(section))
            section = None
            continue
        out.append(line)
        index += 1
    return "".join(out)


def layout_problems(text: str) -> list[str]:
    """What rewrite_tables cannot see: a section heading twice, a heading of no section, a
    section without a heading, or a table row outside the generated table of its section
    (merges have left each of these behind, and rewriting the tables keeps them)."""
    problems: list[str] = []
    seen: set[str] = set()
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        heading = _HEADING.match(line)
        if heading:
            section = heading.group(1)
            if section in seen:
                problems.append(f"line {number}: [{section}] has a second heading")
            elif section not in SECTIONS:
                problems.append(f"line {number}: [{section}] is not a section of config.py")
            seen.add(section)
        if line.startswith("| key |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif not in_table:
            problems.append(f"line {number}: a table row outside its section's table")
    problems.extend(f"[{name}] has no heading" for name in SECTIONS if name not in seen)
    return problems


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Decimal):
        return f'"{value}"'
    return str(value)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m txrelay.settings_doc docs/configuration.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    text = path.read_text(encoding="utf-8")
    problems = layout_problems(text)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        return 1
    path.write_text(rewrite_tables(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
