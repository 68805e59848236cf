"""The ledger states the code names are the ones the schema allows, each open or final."""

from __future__ import annotations

import re

from txrelay.store.database import available_migrations
from txrelay.store.ledger_states import FINAL, OPEN, sql_list


def schema_states() -> set[str]:
    """The states in the ledger table's CHECK, as the migrations leave it."""
    checks = []
    for migration in available_migrations():
        for table in re.finditer(r"(?:CREATE|ALTER) TABLE (?:IF NOT EXISTS )?ledger\b(.*?);",
                                 migration.sql, re.S):
            checks += re.findall(r"CHECK \(state IN \(([^)]*)\)\)", table.group(1))
    assert checks, "no CHECK on the ledger's state in the migrations"
    return set(re.findall(r"'([a-z_]+)'", checks[-1]))


def test_open_and_final_are_every_state_the_schema_allows_once() -> None:
    assert set(OPEN).isdisjoint(FINAL)
    assert set(OPEN) | set(FINAL) == schema_states()


def test_sql_list_is_a_list_of_literals() -> None:
    assert sql_list(OPEN) == "('accepted', 'queued', 'deferred')"
    assert sql_list(("delivered",)) == "('delivered')"
