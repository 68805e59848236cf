"""Loads the Redis Lua scripts shipped in txrelay/store/lua/ (one atomic decision per file)."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import redis


@functools.cache
def lua_source(name: str) -> str:
    return (resources.files("txrelay.store") / "lua" / f"{name}.lua").read_text()


def register(client: redis.Redis, name: str) -> Any:
    """A callable script object (EVALSHA with automatic reload on NOSCRIPT)."""
    return client.register_script(lua_source(name))
