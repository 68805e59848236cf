"""The fast milter ring: RelayMilter through TestCtx with in-memory stores, no services.

Every network connection is refused here, so a test that reached PostgreSQL or Redis by
mistake fails instead of passing slowly; the ring's time is printed at the end of the run
(tests/conftest.py, which pytest-xdist's controller loads too).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.memory_store import MemoryStores, memory_runtime, memory_stores
from tests.milter.conftest import Driver
from tests.store.builders import Tenant
from txrelay.clock import SystemClock
from txrelay.config import Config, load_config
from txrelay.milter.runtime import Runtime


@pytest.fixture(autouse=True)
def no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse TCP connections and PostgreSQL connects: this ring must need neither."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"the fast milter ring connected to {address}")
        real_connect(self, address)

    def no_postgresql(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the fast milter ring connected to PostgreSQL")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(psycopg.Connection, "connect", no_postgresql)  # the pool's way
    monkeypatch.setattr(psycopg, "connect", no_postgresql)  # an alias bound at import


@pytest.fixture(scope="session")
def memory_config() -> Config:
    """Built-in defaults only: no file, no environment, so nothing points at a service."""
    return load_config(None, environ={})


@pytest.fixture()
def stores(memory_config: Config) -> MemoryStores:
    return memory_stores(memory_config, SystemClock())


@pytest.fixture()
def runtime(memory_config: Config, stores: MemoryStores) -> Iterator[Runtime]:
    rt = memory_runtime(memory_config, SystemClock(), stores)
    yield rt
    rt.close()


@pytest.fixture()
def driver(runtime: Runtime) -> Driver:
    return Driver(runtime)


@pytest.fixture()
def tenant(stores: MemoryStores) -> Tenant:
    return stores.add_tenant("fast")
