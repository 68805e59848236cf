"""Opens the shared, thread-safe Redis client with short timeouts: one server, a master
found through Sentinel, or a Redis Cluster."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import redis
from redis._parsers.encoders import Encoder
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import parse_url
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from txrelay.config import RedisConfig
from txrelay.errors import ServiceUnavailable


def open_redis(config: RedisConfig, *, lazy: bool = False) -> redis.Redis:
    """The client for [redis] mode.

    lazy (the daemons): a Redis Cluster client is made on first use, so that a milter or
    tracker starts while no seed node answers and works degraded meanwhile, as it does with
    one server or Sentinel (whose clients connect on use anyway). Without it (the CLI) an
    unreachable cluster is a clear error at once.

    A RedisCluster is not a redis.Redis subclass, but it offers every command txrelay uses
    (scripts, single-key commands, non-transactional pipelines, scan_iter over all masters),
    and each script and multi-key call stays within one {a<id>} hash tag (store/keys.py):
    the callers keep their redis.Redis annotations, and tests/store/test_redis_topologies.py
    runs the store through a real cluster to hold that promise.
    """
    if config.mode == "sentinel":
        return _sentinel_master(config)
    if config.mode == "cluster":
        return cast(redis.Redis, LazyCluster(config) if lazy else _cluster(config))
    timeout = config.timeout_ms / 1000
    return redis.Redis.from_url(
        config.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=False,
    )


def reply_text(value: object) -> str:
    """A Redis reply (a key, a member) as text, whether the client decodes replies or not; a
    byte that is not UTF-8 (a key someone else wrote) becomes U+FFFD instead of an error."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _data_node_options(config: RedisConfig) -> dict[str, Any]:
    """User, password, database and TLS of the data nodes, from url (its host is unused)."""
    parsed = parse_url(config.url)
    timeout = config.timeout_ms / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "decode_responses": False,
        "username": parsed.get("username"),
        "password": parsed.get("password"),
    }
    if config.url.startswith("rediss://"):
        options["ssl"] = True
    return options


def _sentinel_master(config: RedisConfig) -> redis.Redis:
    """A client that asks the sentinels for the current master on every (re)connect, so a
    failover is followed without a restart (redis-py's SentinelConnectionPool)."""
    timeout = config.timeout_ms / 1000
    sentinel_options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if config.sentinel_password:
        sentinel_options["password"] = config.sentinel_password
    sentinel = Sentinel(config.addresses("sentinels"), sentinel_kwargs=sentinel_options)
    options = _data_node_options(config)
    options["db"] = parse_url(config.url).get("db", 0)
    master: redis.Redis = sentinel.master_for(config.sentinel_master, **options)
    return master


def _cluster(config: RedisConfig) -> RedisCluster:
    """A cluster client; it reads the slot map from the first seed node that answers."""
    nodes = [ClusterNode(host, port) for host, port in config.addresses("cluster_nodes")]
    try:
        return RedisCluster(startup_nodes=nodes, **_data_node_options(config))
    except (RedisClusterException, redis.RedisError) as exc:
        raise ServiceUnavailable(
            f"no Redis Cluster node of [redis] cluster_nodes ({config.cluster_nodes}) answered "
            f"({exc.__class__.__name__}); start the cluster or fix the list"
        ) from exc


class LazyCluster:
    """A RedisCluster made on first use; until a seed node answers, every use raises
    redis.ConnectionError (what the callers already treat as "Redis is away") and a new
    attempt is made at most once per RETRY_SECONDS, so a message never waits for more than
    one round of connection timeouts. Scripts can be registered before: their SHA is
    computed here, without a server."""

    RETRY_SECONDS = 1.0

    def __init__(self, config: RedisConfig) -> None:
        self._config = config
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()
        self._next_attempt = 0.0
        self._failure = ""
        self._encoder = Encoder("utf-8", "strict", False)

    def get_encoder(self) -> Encoder:
        return self._encoder

    def register_script(self, script: str) -> Script:
        return Script(self, script)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cluster(), name)

    def _cluster(self) -> RedisCluster:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                now = time.monotonic()
                if now < self._next_attempt:
                    raise redis.ConnectionError(self._failure)
                try:
                    self._client = _cluster(self._config)
                except ServiceUnavailable as exc:
                    self._next_attempt = now + self.RETRY_SECONDS
                    self._failure = str(exc)
                    raise redis.ConnectionError(self._failure) from exc
            return self._client
