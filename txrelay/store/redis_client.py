"""Opens the shared, thread-safe Redis client with short timeouts."""

from __future__ import annotations

import redis

from txrelay.config import RedisConfig


def open_redis(config: RedisConfig) -> redis.Redis:
    timeout = config.timeout_ms / 1000
    return redis.Redis.from_url(
        config.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=False,
    )
