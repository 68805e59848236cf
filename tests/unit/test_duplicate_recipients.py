"""The milter keys recipients the way Postfix's duplicate filter does (cleanup_out_recipient.c):
DSN ORCPT, NOTIFY and the address, case-folded; the address alone without original
recipients."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from txrelay.policy.recipients import duplicate_key


def copies(rcpts: Sequence[tuple[str, tuple[str, ...]]], *,
           original_recipient: bool = True) -> int:
    return len({duplicate_key(to, params, original_recipient=original_recipient)
                for to, params in rcpts})


@pytest.mark.parametrize(("rcpts", "queued"), [
    # Postfix queues one copy: the same key after case folding.
    ([("<a@x.example>", ()), ("<a@x.example>", ()), ("<A@X.example>", ())], 1),
    ([("<a@x.example>", ("NOTIFY=SUCCESS,FAILURE",)),
      ("<a@x.example>", ("notify=failure,success",))], 1),
    ([("<a@x.example>", ("ORCPT=rfc822;a@x.example",)), ("<a@x.example>", ())], 1),
    ([("<a@x.example>", ("ORCPT=rfc822;n+2B1@x.example",)),
      ("<a@x.example>", ("ORCPT=rfc822;N+2b1@X.example",))], 1),
    # Another ORCPT or NOTIFY is another copy.
    ([("<a@x.example>", (f"ORCPT=rfc822;n{n}@x.example",)) for n in range(5)], 5),
    ([("<a@x.example>", ()), ("<a@x.example>", ("NOTIFY=NEVER",)),
      ("<a@x.example>", ("NOTIFY=SUCCESS",)), ("<a@x.example>", ("NOTIFY=DELAY",))], 4),
    # Without ORCPT smtpd takes the address as written: a quoted or routed form is another.
    ([("<a@x.example>", ()), ('<"a"@x.example>', ())], 2),
    ([("<a@x.example>", ("ORCPT=rfc822;a@x.example",)),
      ('<"a"@x.example>', ("ORCPT=rfc822;a@x.example",))], 1),
    ([("<a@x.example>", ("ORCPT=utf-8;\\x{E4}@x.example",)),
      ("<a@x.example>", ("ORCPT=utf-8;\\x{C4}@x.example",))], 1),
])
def test_copies_are_counted_as_postfix_queues_them(rcpts: list[tuple[str, tuple[str, ...]]],
                                                   queued: int) -> None:
    assert copies(rcpts) == queued


def test_without_original_recipients_postfix_keeps_one_copy_per_address() -> None:
    rcpts = [("<a@x.example>", (f"ORCPT=rfc822;n{n}@x.example", "NOTIFY=SUCCESS"))
             for n in range(5)] + [("<A@x.example>", ())]
    assert copies(rcpts, original_recipient=False) == 1
