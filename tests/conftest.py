"""Shared fixtures: a real Redis (never a mock), isolated per test by a key prefix in a
logical database of its own, and cleaned up afterwards."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from sessionary import ManualClock, Store, connect
from sessionary.analytics.sink import Sink, sink_from_url
from tests.servers import ClickHouseServer, RedisClusterNodes, RedisServer

REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture(autouse=True)
def _in_a_directory_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory: defaults that name files in the working
    directory (sessionary.db, sessionary-analytics.db) never land in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, protocol=2)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn (for tests of features, which must behave alike on all)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The backends several processes can share, in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def store(store_url: str, clock: ManualClock) -> AsyncIterator[Store]:
    """A store on each backend in turn, on the test's clock."""
    opened = await connect(store_url, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


@pytest_asyncio.fixture
async def sink(tmp_path: Path) -> AsyncIterator[Sink]:
    """An analytics sink of the test's own (SQLite, in its directory)."""
    opened = await sink_from_url(f"sqlite:///{tmp_path / 'analytics.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest_asyncio.fixture
async def redis_url(redis_client: Redis, redis_prefix: str) -> AsyncIterator[str]:
    """A store URL whose keys all start with a fresh prefix; they are deleted afterwards."""
    yield f"{REDIS_URL}?prefix={redis_prefix}"
    async for key in redis_client.scan_iter(match=f"{redis_prefix}*", count=1000):
        await redis_client.delete(key)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A three-master Redis Cluster of the test run's own, on free ports."""
    cluster = RedisClusterNodes(Path(tmp_path_factory.mktemp("cluster")))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest_asyncio.fixture
async def redis_cluster_url(
    redis_cluster: RedisClusterNodes, redis_prefix: str
) -> AsyncIterator[str]:
    yield f"{redis_cluster.url}?prefix={redis_prefix}"
    client = RedisCluster.from_url(redis_cluster.url.replace("redis+cluster", "redis"))
    try:
        async for key in client.scan_iter(match=f"{redis_prefix}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop, pause and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def paused(private_redis: RedisServer) -> Iterator[Callable[[bool], None]]:
    """`paused(True)` stops the private redis-server with SIGSTOP (it keeps its data and its
    connections, and answers nothing), `paused(False)` lets it go on; it goes on at the end."""
    assert private_redis.process is not None
    pid = private_redis.process.pid

    def pause(stopped: bool) -> None:
        os.kill(pid, signal.SIGSTOP if stopped else signal.SIGCONT)

    yield pause
    pause(False)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """A clickhouse-server of the test run's own (Debian's package, see
    scripts/ensure-clickhouse), on free ports, for the whole session; the tests that use it
    fail, never skip, when it cannot start. Isolate a test by a database of its own."""
    server = ClickHouseServer(Path(tmp_path_factory.mktemp("clickhouse")))
    server.start()
    yield server
    server.stop()
