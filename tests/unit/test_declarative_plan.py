"""The plan `txrelay apply` makes from the file's objects and the database's (policy/
declarative.py): what is created, changed and deleted, in which order, what it refuses,
and the export document."""

from __future__ import annotations

import pytest

from txrelay.policy.declarative import (
    AccountSpec,
    ConnectionSpec,
    DomainSpec,
    PlanError,
    State,
    SuppressionSpec,
    WebhookSpec,
    describe,
    document,
    plan,
)

ACME = AccountSpec("Acme", "ops@acme.example")
BETA = AccountSpec("Beta", "ops@beta.example")
ACME_DOMAIN = DomainSpec("Acme", "acme.example", "https://acme.example/help", None, ("rsa",))
BETA_DOMAIN = DomainSpec("Beta", "beta.example", "https://beta.example/help", None, ("ed25519",))
WEB = ConnectionSpec("Acme", "web", ("acme.example",))
CRM = ConnectionSpec("Beta", "crm", ("beta.example",))
HOOK = WebhookSpec("Beta", "https://beta.example/hook", ("bounced",))
QUIET = SuppressionSpec("Beta", "quiet@example.org", "asked")

FULL = State((ACME, BETA), (ACME_DOMAIN, BETA_DOMAIN), (WEB, CRM), (HOOK,), (QUIET,))


def labels(state: State, current: State, prune: bool = False) -> list[str]:
    return [f"{s.action} {s.kind} {'/'.join(s.key)}" for s in plan(state, current, prune=prune)]


def test_from_nothing_everything_is_created_referenced_kinds_first() -> None:
    assert labels(FULL, State()) == [
        "create account Acme", "create account Beta",
        "create domain acme.example", "create domain beta.example",
        "create connection Acme/web", "create connection Beta/crm",
        "create webhook Beta/https://beta.example/hook",
        "create suppression Beta/quiet@example.org",
    ]


def test_the_same_state_plans_nothing_and_line_numbers_do_not_count() -> None:
    from_file = State((AccountSpec("Acme", "ops@acme.example", line=7),))
    assert plan(from_file, State((ACME,)), prune=True) == []
    assert plan(FULL, FULL, prune=True) == []


def test_a_change_lists_each_field_that_differs() -> None:
    wanted = State((AccountSpec("Acme", "ops@acme.example", 500, None, True),))
    [step] = plan(wanted, State((ACME,)), prune=False)
    assert (step.action, step.changes) == (
        "change", {"low_quota_threshold": (0, 500), "disabled": (False, True)})
    assert describe(step) == ["~ account 'Acme'", "    low_quota_threshold: 0 -> 500",
                              "    disabled: false -> true"]


def test_without_prune_nothing_is_deleted_with_prune_children_of_a_deleted_account_go_with_it(
) -> None:
    only_acme = State((ACME,), (ACME_DOMAIN,), (WEB,))
    assert labels(only_acme, FULL) == []
    assert labels(only_acme, FULL, prune=True) == ["delete account Beta"]
    no_web = State((ACME, BETA), (ACME_DOMAIN, BETA_DOMAIN), (CRM,), (HOOK,), ())
    assert labels(no_web, FULL, prune=True) == [
        "delete suppression Beta/quiet@example.org", "delete connection Acme/web"]


def test_a_domain_left_without_algorithms_keeps_its_keys_but_other_ones_are_refused() -> None:
    unsaid = DomainSpec("Acme", "acme.example", "https://acme.example/help", line=4)
    assert plan(State((ACME,), (unsaid,)), State((ACME,), (ACME_DOMAIN,)), prune=False) == []
    dual = DomainSpec("Acme", "acme.example", "https://acme.example/help", None,
                      ("rsa", "ed25519"), line=4)
    with pytest.raises(PlanError) as refused:
        plan(State((ACME,), (dual,)), State((ACME,), (ACME_DOMAIN,)), prune=False)
    assert (refused.value.line, refused.value.field) == (4, "algorithms")
    assert "txrelay domain rotate-key acme.example" in refused.value.problem


def test_a_domain_of_another_account_is_refused_with_the_move_command() -> None:
    moved = DomainSpec("Beta", "acme.example", "https://acme.example/help", line=9)
    with pytest.raises(PlanError) as refused:
        plan(State((ACME, BETA), (moved,)), State((ACME, BETA), (ACME_DOMAIN,)), prune=False)
    assert refused.value.field == "account"
    assert "txrelay domain move acme.example --to ACCOUNT" in refused.value.problem


def test_with_prune_a_connection_may_only_name_the_files_domains() -> None:
    stray = ConnectionSpec("Acme", "web", ("acme.example", "old.example"), line=12)
    wanted = State((ACME,), (ACME_DOMAIN,), (stray,))
    assert labels(wanted, State(), prune=False)[-1] == "create connection Acme/web"
    with pytest.raises(PlanError) as refused:
        plan(wanted, State(), prune=True)
    assert (refused.value.line, refused.value.field) == (12, "domains")


def test_the_export_document_leaves_defaults_out_but_keeps_required_fields() -> None:
    shown = document(State((ACME, AccountSpec("Beta", "b@beta.example", 0, 0, False)),
                           (ACME_DOMAIN,), (WEB,), (HOOK,), (SuppressionSpec("Acme", "a@b.c"),)))
    assert shown == {
        "accounts": [{"name": "Acme", "admin_email": "ops@acme.example"},
                     {"name": "Beta", "admin_email": "b@beta.example", "overage_cap": 0}],
        "domains": [{"account": "Acme", "domain": "acme.example",
                     "list_help": "https://acme.example/help", "algorithms": ["rsa"]}],
        "connections": [{"account": "Acme", "name": "web", "domains": ["acme.example"]}],
        "webhooks": [{"account": "Beta", "url": "https://beta.example/hook",
                      "events": ["bounced"]}],
        "suppressions": [{"account": "Acme", "address": "a@b.c"}],
    }
