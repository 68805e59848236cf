"""The ledger's states, named once for the statements that filter on them and for the code
that predicts what those statements will do (migration 0001's CHECK allows exactly these)."""

from __future__ import annotations

from collections.abc import Iterable

# An outcome is still to come: Postfix has not said delivered or bounced yet.
OPEN = ("accepted", "queued", "deferred")
# No delivery line changes them any more (a DSN may still turn delivered into bounced);
# voided rows were never Postfix's to deliver.
FINAL = ("delivered", "bounced", "voided")


def sql_list(states: Iterable[str]) -> str:
    """The states as an SQL list of literals, for `state IN …` in a statement composed of
    constants (they are this module's names, never input)."""
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"
