"""How documentation examples are read out of Markdown and matched against printed output."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.docs.examples import Example, matches, mismatch_report, read_blocks

GUIDE = """# Guide

```sh
systemctl restart txrelay-milter
```

```console
$ txrelay account list
ACCOUNT  QUOTA
```

Some prose.

<!-- not run: needs published DNS -->
```console
$ txrelay domain check acme.example
OK
```

```console
$ txrelay init --database-url postgresql://txrelay@127.0.0.1/txrelay \\
      --smtp-host relay.example.net   # the host shops connect to
Wrote /etc/txrelay/txrelay.toml (mode 0640).
$ txrelay db status
Schema version: 10
```
"""


def test_only_console_blocks_are_read_in_order_with_their_not_run_marks() -> None:
    blocks = read_blocks("guide.md", GUIDE)
    assert [block.line for block in blocks] == [7, 15, 20]
    assert [block.not_run for block in blocks] == [None, "needs published DNS", None]


def test_a_continued_command_is_one_example_at_the_line_of_its_prompt() -> None:
    init, status = read_blocks("guide.md", GUIDE)[2].examples
    assert init.where == "guide.md:21"
    assert init.argv == ["txrelay", "init", "--database-url",
                         "postgresql://txrelay@127.0.0.1/txrelay", "--smtp-host",
                         "relay.example.net"]
    assert init.expected == ("Wrote /etc/txrelay/txrelay.toml (mode 0640).",)
    assert (status.where, status.expected) == ("guide.md:24", ("Schema version: 10",))


DNS_GUIDE = """
<!-- publish: the records `txrelay domain dns acme.example` prints -->

<!-- publish: the records `txrelay domain dns shop.example` prints -->
```console
$ txrelay domain check acme.example
```

Prose between: the directives apply to the next block only.
<!-- clock: 2026-12-05 09:00 UTC -->
```console
$ txrelay domain retire-key acme.example txr202611
```

```console
$ txrelay domain list
```
"""


def test_publish_and_clock_lines_above_a_fence_belong_to_that_block_only() -> None:
    check, retire, listing = read_blocks("guide.md", DNS_GUIDE)
    assert (check.publish, check.clock) == (("acme.example", "shop.example"), None)
    assert (retire.publish, retire.clock) == ((), dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC))
    assert (listing.publish, listing.clock, listing.not_run) == ((), None, None)


@pytest.mark.parametrize(("directive", "says"), [
    ("<!-- publish: acme.example -->", "guide.md:1: write the directive as <!-- publish: the "
                                       "records `txrelay domain dns DOMAIN` prints -->"),
    ("<!-- clock: next Friday -->", "guide.md:1: write the directive as <!-- clock: "
                                    "2026-12-05 09:00 UTC -->"),
])
def test_a_directive_that_cannot_be_read_is_refused_with_its_form(directive: str,
                                                                  says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        read_blocks("guide.md", f"{directive}\n```console\n$ txrelay domain list\n```\n")


def test_a_console_block_that_does_not_start_with_a_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match=r"notes.md:2: a console block must start with"):
        read_blocks("notes.md", "```console\ntxrelay account list\n```\n")


@pytest.mark.parametrize(("documented", "printed", "same"), [
    (["Schema version: 10"], "Schema version: 10\n", True),
    (["Schema version: 5"], "Schema version: 10\n", False),
    (["Schema version: 10"], "Schema version: 10\nNo pending migrations.\n", False),
    (["password:  <PASSWORD>"], "password:  qrtqKBzp-qvB_wYBev\n", True),
    (["created:  <DATE>"], "created:  2026-11-27 22:48\n", False),
    (["created:  <DATE> <TIME>"], "created:  2026-11-27 22:48\n", True),
    (['p=MIIBIjAN…" "…IDAQAB"'], 'p=MIIBIjANBgkq" "Ab12IDAQAB"\n', True),
    (['p=MIIBIjAN…" "…IDAQAB"'], 'p=MIIBIjANBgkq" "Ab12IDAQAC"\n', False),
    (["first", "...", "last"], "first\nlast\n", True),
    (["first", "...", "last"], "first\na\nb\nlast\n", True),
    (["first", "…", "last"], "first\na\nb\nlast\n", False),
    (["CRM  500/h", "Web shop  default"], "CRM       500/h\nWeb shop  default  \n\n", True),
    (["CRM 500/h"], "CRM500/h\n", False),
])
def test_documented_output_matches_with_placeholders_and_only_then(
        documented: list[str], printed: str, same: bool) -> None:
    assert matches(documented, printed) is same


def test_a_mismatch_names_the_file_line_and_command_and_shows_a_diff() -> None:
    example = Example("docs/admin-guide.md", 74, "txrelay db status",
                      ("Schema version: 5", "No pending migrations."))
    report = mismatch_report(example, "Schema version: 10\nNo pending migrations.\n", 0)
    assert report.splitlines() == [
        "docs/admin-guide.md:74: `$ txrelay db status` printed something else than "
        "documented (exit status 0):",
        "--- docs/admin-guide.md:74 (documented)",
        "+++ printed",
        "@@ -1,2 +1,2 @@",
        "-Schema version: 5",
        "+Schema version: 10",
        " No pending migrations.",
    ]
