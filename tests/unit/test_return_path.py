"""Return-path and CFBL feedback tokens: they name the message, and nothing else passes."""

from __future__ import annotations

import uuid

from txrelay.policy.return_path import (
    feedback_id,
    read_feedback_id,
    read_return_path,
    return_path,
)

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_a_return_path_names_its_message_and_survives_case_changes() -> None:
    txn = uuid.uuid4()
    address = return_path(SECRET, txn, "bounces.relay.example")
    local, _, domain = address.partition("@")
    assert domain == "bounces.relay.example" and len(local) <= 64
    assert read_return_path(SECRET, address) == txn
    assert read_return_path(SECRET, f"<{address.upper()}>") == txn


def test_a_forged_altered_or_foreign_return_path_is_not_read() -> None:
    txn = uuid.uuid4()
    address = return_path(SECRET, txn, "b.example")
    local, _, domain = address.partition("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert read_return_path(SECRET, f"{flipped}@{domain}") is None
    assert read_return_path(OTHER, address) is None
    assert read_return_path(SECRET, "b-short@b.example") is None
    assert read_return_path(SECRET, "shop@b.example") is None
    # Another message's id with this message's MAC: the MAC binds the id.
    other = return_path(SECRET, uuid.uuid4(), "b.example").partition("@")[0]
    spliced = other[:28] + local[28:]
    assert read_return_path(SECRET, f"{spliced}@{domain}") is None


def test_a_feedback_id_binds_account_connection_and_message() -> None:
    txn = uuid.uuid4()
    value = feedback_id(SECRET, 7, 42, txn)
    read = read_feedback_id(SECRET, value)
    assert read is not None and (read.account_id, read.connection_id, read.txn_id) == (7, 42, txn)
    _, _, token = value.split(".")
    assert read_feedback_id(SECRET, f"8.42.{token}") is None
    assert read_feedback_id(SECRET, f"7.43.{token}") is None
    assert read_feedback_id(OTHER, value) is None
    assert read_feedback_id(SECRET, "7.42.not-a-token") is None
