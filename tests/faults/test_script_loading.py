"""Loading the Lua scripts is single-flight: a burst of first calls (a cold start, a restart
without persistence, SCRIPT FLUSH) sends one SCRIPT LOAD per script and server, over the
auto-pipeline's connections, instead of one per caller over redis-py's pool; every call
succeeds. A full connection pool is `StoreUnavailable`, never a bug.

Each single-server test runs its own redis-server, so `CLIENT LIST` and `INFO commandstats`
count only this process's connections and commands.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
import redis
from redis.asyncio import Redis

from sessionary import StoreUnavailable, connect
from sessionary.backends.redis.scripts import Script
from tests.faults.conftest import collect
from tests.servers import RedisClusterNodes, RedisServer

HOUR = timedelta(hours=1)
CALLERS = 200
CREATE_SHA = Script.load("create").sha


def script_loads(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


class PeakConnections:
    """The most clients the server had at once (polled), not counting the one asking."""

    def __init__(self, server: RedisServer) -> None:
        self.client = Redis(port=server.port)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            self.peak = max(self.peak, len(await self.client.client_list()) - 1)
            await asyncio.sleep(0.002)

    async def __aenter__(self) -> PeakConnections:
        self._task = asyncio.create_task(self._watch())
        await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.client.aclose()


async def test_a_burst_of_first_calls_loads_the_script_once_over_few_connections(
    private_redis: RedisServer,
) -> None:
    store = await connect(f"{private_redis.url}?autopipeline=2")
    try:
        sessions = store.namespace("s", idle_ttl=HOUR)
        async with PeakConnections(private_redis) as connections:
            created = await asyncio.gather(*(sessions.create() for _ in range(CALLERS)))
        assert len({s.id for s in created}) == CALLERS
        assert await sessions.count() == CALLERS
        assert script_loads(private_redis) == 1  # not one per caller
        # the auto-pipeline's 2 connections (redis-py's pool opened none: up to 64 before)
        assert connections.peak <= 2
    finally:
        await store.close()


async def test_a_script_flush_in_the_middle_of_a_burst_fails_no_call(
    private_redis: RedisServer,
) -> None:
    store = await connect(private_redis.url)
    flusher = Redis(port=private_redis.port)
    try:
        sessions = store.namespace("s", idle_ttl=HOUR)
        burst = [asyncio.create_task(sessions.create()) for _ in range(4 * CALLERS)]
        deadline = time.monotonic() + 5
        while not (await flusher.script_exists(CREATE_SHA))[0]:  # the first load is done
            assert time.monotonic() < deadline, "the script was never loaded"
            await asyncio.sleep(0)
        await flusher.script_flush()
        assert not all(call.done() for call in burst), "the burst ended before the flush"
        created = await asyncio.gather(*burst)
        assert len({s.id for s in created}) == 4 * CALLERS
        assert await sessions.count() == 4 * CALLERS  # each ran once: nothing twice
        assert script_loads(private_redis) == 2  # once cold, once after the flush
    finally:
        await flusher.aclose()
        await store.close()


async def flush_scripts(cluster: RedisClusterNodes) -> None:
    for node in cluster.nodes:
        client = Redis(port=node.port)
        await client.script_flush()
        await client.aclose()


async def test_on_a_cluster_a_burst_of_first_calls_beside_followers_raises_nothing(
    redis_cluster: RedisClusterNodes, redis_cluster_url: str
) -> None:
    """Followers hold connections of the nodes' pools; a load per caller on top of them ran
    out of connections (MaxConnectionsError, then 503s)."""
    store = await connect(redis_cluster_url)
    try:
        runs = store.namespace("runs", idle_ttl=HOUR)
        sessions = [await runs.create() for _ in range(CALLERS)]
        await flush_scripts(redis_cluster)  # the session's cluster: make these first calls
        followers = [asyncio.create_task(collect(runs, s.id)) for s in sessions]
        await asyncio.sleep(0.3)  # the followers wait now
        await asyncio.gather(*(runs.append(s.id, "e", 1) for s in sessions))
        await asyncio.gather(*(runs.append(s.id, "end", None, final=True) for s in sessions))
        results = await asyncio.wait_for(asyncio.gather(*followers), 10)
        assert all(got == [1, None] for got in results)
    finally:
        await store.close()


async def test_on_a_cluster_concurrent_calls_over_several_shards_raise_nothing(
    redis_cluster_url: str,
) -> None:
    """A revoke runs a script per shard holding the subject's sessions: side by side, 64
    calls at once took several connections of a node each, past its pool's 64."""
    store = await connect(redis_cluster_url)
    try:
        sessions = store.namespace("s", idle_ttl=HOUR)
        await asyncio.gather(*(sessions.create(subject=f"u{n % 100}") for n in range(400)))
        revoked = await asyncio.gather(*(sessions.revoke_subject(f"u{n}") for n in range(100)))
        assert revoked == [4] * 100
        assert await sessions.count() == 0
    finally:
        await store.close()


async def test_a_full_connection_pool_is_store_unavailable(
    redis_cluster: RedisClusterNodes, redis_cluster_url: str
) -> None:
    """One connection per node, held by someone else: a call finds its node's pool empty
    (redis-py's MaxConnectionsError, which carries no message)."""
    store = await connect(f"{redis_cluster_url}&max_connections=1")
    try:
        runs = store.namespace("runs", idle_ttl=HOUR)
        session = await runs.create()
        await runs.append(session.id, "e", 0)  # the scripts are loaded: only the pool is short
        client = store.backend.client  # type: ignore[attr-defined]
        held = [(node, node.acquire_connection()) for node in client.get_nodes()]
        try:
            with pytest.raises(StoreUnavailable, match="MaxConnectionsError"):
                await runs.append(session.id, "e", 1)
        finally:
            for node, connection in held:
                node.release(connection)
    finally:
        await store.close()
