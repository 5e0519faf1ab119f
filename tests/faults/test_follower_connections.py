"""Followers of many logs share a few Redis connections, and leave none behind.

Each test runs its own redis-server, so `CLIENT LIST` counts only this process's connections.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import redis

from sessionary import connect
from sessionary.logs import Event, LogEvent
from tests.faults.conftest import collect
from tests.servers import RedisClusterNodes, RedisServer, eventually

HOUR = timedelta(hours=1)
LOGS = 200


async def test_200_followed_logs_share_the_wait_connections_and_release_them(
    private_redis: RedisServer,
) -> None:
    store = await connect(f"{private_redis.url}?wait_connections=4&autopipeline=2")
    try:
        runs = store.namespace("runs", idle_ttl=HOUR)
        sessions = [await runs.create() for _ in range(LOGS)]
        # every script the test uses runs once first, so what is counted below is steady state
        await runs.append(sessions[0].id, "e", 0)
        await runs.read(sessions[0].id)
        await runs.delete(sessions[0].id)
        sessions[0] = await runs.create()
        followers = [
            asyncio.create_task(collect(runs, s.id)) for s in sessions for _ in range(2)
        ]  # two followers per log: one wait per log in the hub, shared
        # every follower waits now: 4 waiting connections (on a loaded machine the last
        # ones open later than a fixed pause allowed: seen in a full run), 2 of the
        # auto-pipeline, at most 1 of redis-py's pool
        await eventually(lambda: private_redis.clients("xread") == 4, 10)
        assert private_redis.clients() <= 4 + 2 + 1
        for n in range(5):
            await asyncio.gather(*(runs.append(s.id, "e", n) for s in sessions))
            await asyncio.sleep(0)
            assert private_redis.clients() <= 4 + 2 + 1
        await asyncio.gather(*(runs.append(s.id, "end", None, final=True) for s in sessions))
        results = await asyncio.wait_for(asyncio.gather(*followers), 10)
        assert all(got == [0, 1, 2, 3, 4, None] for got in results)
        # the waits still in flight end by their timeout (5 s): then the lanes close
        await eventually(lambda: private_redis.clients("xread") == 0, 10)
        assert private_redis.clients() <= 2 + 1
    finally:
        await store.close()


async def test_a_new_follower_interrupts_the_shared_wait_and_hears_at_once(
    private_redis: RedisServer,
) -> None:
    store = await connect(f"{private_redis.url}?wait_connections=1")
    try:
        runs = store.namespace("runs", idle_ttl=HOUR)
        first, second = await runs.create(), await runs.create()
        following_first = asyncio.create_task(collect(runs, first.id))
        await asyncio.sleep(0.2)  # the one lane blocks in XREAD on the first log only
        following_second = asyncio.create_task(collect(runs, second.id))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await runs.extend(second.id, [Event("e", 1), Event("end", None, final=True)])
        assert await asyncio.wait_for(following_second, 10) == [1, None]
        assert time.monotonic() - started < 1.0  # not after the first wait's 5 s timeout
        await runs.append(first.id, "end", None, final=True)
        assert await asyncio.wait_for(following_first, 10) == [None]
    finally:
        await store.close()


async def test_a_follower_back_at_once_finds_the_lane_connection_still_open(
    private_redis: RedisServer,
) -> None:
    """A follower that reads, leaves and comes back (a run's producer watching its run does
    so every few events) costs no new connection each time: a lane with no waits left keeps
    its connection a moment (`LINGER_S`). Each lane connection asks its CLIENT ID once."""
    store = await connect(f"{private_redis.url}?wait_connections=1")
    try:
        runs = store.namespace("runs", idle_ttl=HOUR)
        session = await runs.create()
        position = None
        for n in range(5):
            events = runs.follow(session.id, position)
            took = asyncio.ensure_future(anext(events))
            await eventually(lambda: private_redis.clients("xread") == 1, 10)
            await runs.append(session.id, "e", n)
            event = await asyncio.wait_for(took, 10)
            assert isinstance(event, LogEvent)
            assert event.data == n
            position = event.cursor
            await events.aclose()  # it leaves: the lane's read returned, no wait is left
        with redis.Redis(port=private_redis.port) as client:
            asked = client.info("commandstats")["cmdstat_client|id"]["calls"]
        assert asked == 1
    finally:
        await store.close()


async def test_on_a_cluster_followers_wait_one_connection_per_hash_slot(
    redis_cluster: RedisClusterNodes, redis_cluster_url: str
) -> None:
    def waiting() -> int:
        return sum(node.clients("xread") for node in redis_cluster.nodes)

    store = await connect(redis_cluster_url)
    try:
        runs = store.namespace("runs", idle_ttl=HOUR)
        sessions = [await runs.create() for _ in range(LOGS)]
        warm = await runs.create()  # load the scripts first (as above)
        await runs.append(warm.id, "e", 0)
        await runs.read(warm.id)
        followers = [asyncio.create_task(collect(runs, s.id)) for s in sessions]
        await eventually(lambda: waiting() == 16, 5)  # the namespace's 16 shards: 16 slots
        await asyncio.gather(*(runs.append(s.id, "e", 1) for s in sessions))
        await asyncio.gather(*(runs.append(s.id, "end", None, final=True) for s in sessions))
        results = await asyncio.wait_for(asyncio.gather(*followers), 10)
        assert all(got == [1, None] for got in results)
        await eventually(lambda: waiting() == 0, 10)
    finally:
        await store.close()
