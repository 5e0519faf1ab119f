"""The conformance suite through the blocking API (`sessionary.sync`) on every built-in
backend: the facade must keep the async API's semantics exactly."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import cast

import pytest

from sessionary import Store
from sessionary.backends.memory import MemoryBackend
from sessionary.backends.redis import RedisBackend
from sessionary.backends.sqlite import SQLiteBackend
from sessionary.testing import SyncBackedStore, SyncStoreConformance


def backend_of(store: Store) -> object:
    return cast(SyncBackedStore, store).async_store.backend


class TestSyncMemory(SyncStoreConformance):
    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"

    async def footprint(self, store: Store) -> int:
        backend = backend_of(store)
        assert isinstance(backend, MemoryBackend)

        async def measure(_store: Store) -> int:
            return backend.footprint()

        return await cast(SyncBackedStore, store).sync_store.arun(measure)


class TestSyncSQLite(SyncStoreConformance):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'sessions.db'}"

    async def footprint(self, store: Store) -> int:
        backend = backend_of(store)
        assert isinstance(backend, SQLiteBackend)
        with sqlite3.connect(backend.path) as db:
            return int(
                db.execute(
                    "SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM work)"
                ).fetchone()[0]
            )


class TestSyncRedis(SyncStoreConformance):
    hypothesis_examples = 30
    sweeps_counters = False

    @pytest.fixture
    def store_url(self, redis_url: str) -> str:
        return redis_url

    async def footprint(self, store: Store) -> int:
        """The keys under this test's prefix (the database is shared with other tests)."""
        backend = backend_of(store)
        assert isinstance(backend, RedisBackend)

        async def count_keys(_store: Store) -> int:
            return len([key async for key in backend.client.scan_iter(f"{backend.prefix}*")])

        return await cast(SyncBackedStore, store).sync_store.arun(count_keys)
