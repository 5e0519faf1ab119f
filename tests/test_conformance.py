"""The conformance suite on every built-in backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionary import Store
from sessionary.backends.memory import MemoryBackend
from sessionary.backends.redis import RedisBackend
from sessionary.testing import MultiProcessConformance, StoreConformance


class TestMemory(StoreConformance):
    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"

    async def footprint(self, store: Store) -> int:
        assert isinstance(store.backend, MemoryBackend)
        return store.backend.footprint()


class TestSQLite(MultiProcessConformance):
    """The whole `StoreConformance` suite on SQLite is `tests/core_install`'s (which CI also
    runs on a bare `pip install .`); here, what needs several processes."""

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'sessions.db'}"


class TestRedis(StoreConformance, MultiProcessConformance):
    hypothesis_examples = 30
    sweeps_counters = False

    @pytest.fixture
    def store_url(self, redis_url: str) -> str:
        return redis_url

    async def footprint(self, store: Store) -> int:
        """The keys under this test's prefix: the shared server's database also holds other
        runs' keys, which may expire while the test runs."""
        assert isinstance(store.backend, RedisBackend)
        client, prefix = store.backend.client, store.backend.prefix
        return len([key async for key in client.scan_iter(match=f"{prefix}*", count=1000)])


class TestRedisCluster(StoreConformance, MultiProcessConformance):
    """The same suite on a three-node Redis Cluster: every script's keys share one slot."""

    hypothesis_examples = 20
    sweeps_counters = False

    @pytest.fixture
    def store_url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url

    async def footprint(self, store: Store) -> int:
        assert isinstance(store.backend, RedisBackend)
        assert store.backend.cluster
        return int(await store.backend.client.dbsize())
