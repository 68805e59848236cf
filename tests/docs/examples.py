"""Reads the command examples out of Markdown and compares what a command prints with them.

The conventions (docs/admin-guide.md's "Documentation is tested" says the same for writers):

- Only ```console blocks run. In one, a line starting with `$ ` is a command (a line ending
  in `\\` continues on the next); the lines after it, up to the next `$ `, are what it prints
  (stdout and stderr as a terminal shows them). A trailing `# comment` is not part of the
  command. A command must exit 0 unless its documented output has an error line
  (`txrelay: error: …`, or click's `Error: …`).
- ```sh, ```text and unlabelled blocks never run: use them for what cannot run here
  (systemctl, apt, postfix reload, a daemon started with `&`).
- A console block that cannot run yet is marked by the line `<!-- not run: REASON -->`
  right above its fence; the reason says what it waits for.
- DNS: each document has a DNS server of its own (NSD on loopback, authoritative for
  `example.`, through txrelay's [dns] resolver: TXRELAY_DNS_RESOLVER, not shown), empty at
  the start. The line `<!-- publish: the records `txrelay domain dns DOMAIN` prints -->`
  above a fence makes the zone hold, from then on, exactly the records that command prints
  at that moment (with --json) for DOMAIN, as a reader who pastes them into the zone would;
  a later publish for the same DOMAIN replaces them (a retired key's record goes). One line
  per domain; a block without it sees DNS as it was.
- `<!-- clock: 2026-12-05 09:00 UTC -->` above a fence runs that block at that time (a
  rotation's "a week later"); the next block runs at the document's time again.
- Expected output may hold placeholders: `<NAME>` in capitals (`<PASSWORD>`, `<RANDOM>`,
  `<DATE>`) stands for one word (no spaces); `…` stands for any text within a line; a line
  that is only `...` stands for any number of lines, none included. Runs of spaces match
  runs of spaces of any length, so tables with a placeholder stay readable; trailing spaces
  and trailing blank lines do not count.
- The blocks of one file run in order as one scenario: what one block creates, the next
  uses. Each file starts with a database of its own and on a clock fixed at
  2026-11-27 22:48 UTC; README.md starts where its install section ends ('txrelay init'
  has run), docs/admin-guide.md on a bare node (DOCUMENTS in tests/docs/test_examples.py).
- Commands run as the documentation shows them: `txrelay ...` goes through txrelay's own
  entry point (in-process, for speed) with TXRELAY_CONFIG in the environment (an
  `export TXRELAY_CONFIG=...` line sets it); the only other commands understood are
  `export` and `unset`. Paths under /etc/txrelay, /var/lib/txrelay*, /run/txrelay,
  /var/log/txrelay and /var/spool/postfix (and init's defaults there) are moved into a
  temporary directory, both in the command and in what it prints; the database URL
  postgresql://txrelay@127.0.0.1/txrelay and redis://127.0.0.1:6379/0 are the test run's.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import shlex
from dataclasses import dataclass

FENCE = re.compile(r"^(```+|~~~+)\s*([\w-]*)")
DIRECTIVE = re.compile(r"^<!--\s*(not run|publish|clock):\s*(.+?)\s*-->$")
PUBLISHED_BY = re.compile(r"^the records `txrelay domain dns (\S+)` prints$")
CLOCK_FORMAT = "%Y-%m-%d %H:%M UTC"
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_-]*>")
ANY_LINES = "..."


@dataclass(frozen=True)
class Example:
    """One `$ ` command of a console block and the output the documentation shows for it."""

    path: str
    line: int  # 1-based line of the `$ ` in the file
    command: str  # as written, continuation lines joined, without the `$ `
    expected: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command, comments=True)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Block:
    """A ```console block: its examples, or the reason it is not run, and what the
    directives above it ask for before it runs."""

    path: str
    line: int
    examples: tuple[Example, ...]
    not_run: str | None
    publish: tuple[str, ...] = ()  # domains whose `domain dns` records DNS then holds
    clock: dt.datetime | None = None  # the time the block runs at, if not the document's


def read_blocks(path: str, text: str) -> list[Block]:
    """Every ```console block of a Markdown file, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start, marker, language = index, fence.group(1), fence.group(2)
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith(marker):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        if language == "console":
            blocks.append(_block(path, start, lines, _examples(path, start + 2, body)))
    return blocks


def _block(path: str, fence_index: int, lines: list[str],
           examples: tuple[Example, ...]) -> Block:
    """The block with the directives on the lines right above its fence (blank lines
    between them allowed)."""
    not_run: str | None = None
    publish: list[str] = []
    clock: dt.datetime | None = None
    above = fence_index - 1
    while above >= 0:
        line = lines[above].strip()
        directive = DIRECTIVE.match(line)
        if line and not directive:
            break
        if directive:
            kind, value = directive.group(1), directive.group(2)
            where = f"{path}:{above + 1}"
            if kind == "not run":
                not_run = value
            elif kind == "publish":
                publish.insert(0, _published_domain(where, value))
            else:
                clock = _clock(where, value)
        above -= 1
    return Block(path, fence_index + 1, examples, not_run, tuple(publish), clock)


def _published_domain(where: str, value: str) -> str:
    named = PUBLISHED_BY.match(value)
    if not named:
        raise ValueError(f"{where}: write the directive as <!-- publish: the records "
                         "`txrelay domain dns DOMAIN` prints -->")
    return named.group(1)


def _clock(where: str, value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, CLOCK_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{where}: write the directive as <!-- clock: 2026-12-05 09:00 UTC "
                         "-->") from None


def _examples(path: str, first_line: int, body: list[str]) -> tuple[Example, ...]:
    examples: list[Example] = []
    index = 0
    while index < len(body):
        line = body[index]
        if not line.startswith("$ "):
            raise ValueError(f"{path}:{first_line + index}: a console block must start with a "
                             "'$ ' command; put text that is not a command in a ```text block")
        number = first_line + index
        parts = [line[2:]]
        while parts[-1].endswith("\\") and index + 1 < len(body):
            index += 1
            parts[-1] = parts[-1][:-1]
            parts.append(body[index].strip())
        index += 1
        expected: list[str] = []
        while index < len(body) and not body[index].startswith("$ "):
            expected.append(body[index])
            index += 1
        examples.append(Example(path, number, " ".join(p.strip() for p in parts),
                                tuple(expected)))
    return tuple(examples)


def _line_pattern(line: str) -> str:
    pattern: list[str] = []
    for piece in re.split(r"(…|<[A-Z][A-Z0-9_-]*>| +)", line.rstrip()):
        if piece == "…":
            pattern.append(".*?")
        elif PLACEHOLDER.fullmatch(piece):
            pattern.append(r"\S+")
        elif piece and not piece.strip():
            pattern.append(" +")
        else:
            pattern.append(re.escape(piece))
    return "".join(pattern)


def output_pattern(expected: tuple[str, ...] | list[str]) -> re.Pattern[str]:
    """The documented output as a regular expression over the printed lines."""
    lines = _trimmed(list(expected))
    parts = [r"(?:[^\n]*\n)*?" if line.strip() == ANY_LINES else _line_pattern(line) + "\n"
             for line in lines]
    return re.compile("".join(parts))


def matches(expected: tuple[str, ...] | list[str], printed: str) -> bool:
    text = "".join(line + "\n" for line in _trimmed(printed.splitlines()))
    return output_pattern(expected).fullmatch(text) is not None


def _trimmed(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def mismatch_report(example: Example, printed: str, exit_status: int) -> str:
    """What a failing example shows: where it is, the command, and a diff."""
    diff = difflib.unified_diff(_trimmed(list(example.expected)), _trimmed(printed.splitlines()),
                                fromfile=f"{example.where} (documented)",
                                tofile="printed", lineterm="")
    return (f"{example.where}: `$ {example.command}` printed something else than documented "
            f"(exit status {exit_status}):\n" + "\n".join(diff))
