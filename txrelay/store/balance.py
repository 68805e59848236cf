"""Keeps the live quota balance in Redis in step with quota changes made in PostgreSQL."""

from __future__ import annotations

import redis

from txrelay.store.keys import AccountKeys
from txrelay.store.scripts import register


def credit_balance(client: redis.Redis, prefix: str, account_id: int, units: int) -> int | None:
    """Add units (booked block, renewal) or remove them (expiry) after PostgreSQL committed.

    Returns the new balance, or None when Redis held none (it will be loaded from PostgreSQL).
    """
    script = register(client, "credit_balance")
    result = script(keys=[AccountKeys(prefix, account_id).balance], args=[units])
    return None if result is None else int(result)
