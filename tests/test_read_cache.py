"""The store's read cache (`sessionary.read_cache`) on the real Redis: no stale read after a
write acknowledged in another process, the cache emptied and bypassed when its
invalidation feed is lost, touches coalesced within the stated window, a bounded size."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from datetime import timedelta
from multiprocessing.connection import Connection

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from sessionary import ManualClock, Namespace, Store, connect
from sessionary.read_cache import COALESCE_MAX_MS, ReadCache, coalesce_ms

IDLE = timedelta(minutes=30)
ROUNDS = 300


def namespace_of(store: Store) -> Namespace:
    return store.namespace("web", idle_ttl=IDLE)


@pytest_asyncio.fixture
async def cached(redis_url: str) -> AsyncIterator[Store]:
    store = await connect(redis_url, read_cache=100)
    yield store
    await store.close()


@pytest_asyncio.fixture
async def other(redis_url: str) -> AsyncIterator[Store]:
    """Another store on the same Redis, without a cache: another client's writes."""
    store = await connect(redis_url)
    yield store
    await store.close()


def cache_of(store: Store) -> ReadCache:
    assert store.read_cache is not None
    return store.read_cache


def writer(url: str, session_id: str, pipe: Connection) -> None:
    """Process B: on each "go", write the round's number and report it once acknowledged."""

    async def run() -> None:
        store = await connect(url)
        web = namespace_of(store)
        while (round_ := pipe.recv()) is not None:
            await web.update(session_id, data={"n": round_})
            pipe.send(round_)
        await store.close()

    asyncio.run(run())


async def test_a_write_acknowledged_in_another_process_is_seen_by_the_next_read(
    redis_url: str, cached: Store
) -> None:
    web = namespace_of(cached)
    session = await web.create(data={"n": -1})
    mine, theirs = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=writer, args=(redis_url, session.id, theirs)
    )
    process.start()
    loop = asyncio.get_running_loop()
    stale = 0
    try:
        for round_ in range(ROUNDS):
            before = await web.touch(session.id)  # cached: a hit from the second round on
            assert before is not None
            mine.send(round_)
            # B's write is acknowledged; waited for blocking the loop, so that no reader
            # callback runs in between: only the read's own drain of the feed can see it
            assert mine.recv() == round_
            after = await web.touch(session.id)
            assert after is not None
            stale += after.data != {"n": round_}
    finally:
        mine.send(None)
        await loop.run_in_executor(None, process.join, 30)
    assert stale == 0
    cache = cache_of(cached)
    assert cache.hits >= ROUNDS - 2  # each first read of a round came from the cache


async def test_the_cache_is_emptied_and_bypassed_when_its_feed_is_lost(
    cached: Store, other: Store, redis_client: Redis
) -> None:
    web, elsewhere = namespace_of(cached), namespace_of(other)
    session = await web.create(data={"n": 1})
    await web.touch(session.id)
    await web.touch(session.id)
    cache = cache_of(cached)
    assert (cache.hits, len(cache)) == (1, 1)
    tracking = cache.tracking
    assert tracking.active
    killed = tracking.client_id
    assert await redis_client.execute_command("CLIENT", "KILL", "ID", str(killed)) == 1
    await elsewhere.update(session.id, data={"n": 2})  # no invalidation reaches us now
    seen = await web.touch(session.id)
    assert seen is not None
    assert seen.data == {"n": 2}  # the cache was emptied, not served
    assert (cache.hits, len(cache)) == (1, 0)
    assert not tracking.active
    await web.touch(session.id)  # bypassed while the feed is down: not cached
    assert (cache.hits, len(cache)) == (1, 0)

    await tracking.wait_active()  # a new connection, tracking on again
    assert tracking.client_id not in (None, killed)
    await web.touch(session.id)
    await web.touch(session.id)
    assert cache.hits == 2
    await elsewhere.update(session.id, data={"n": 3})
    seen = await web.touch(session.id)
    assert seen is not None
    assert seen.data == {"n": 3}


async def test_touches_are_coalesced_within_the_window_and_no_longer(redis_url: str) -> None:
    clock = ManualClock()
    store = await connect(redis_url, clock=clock, read_cache=100)
    peek = await connect(redis_url, clock=clock)
    try:
        web, stored = namespace_of(store), namespace_of(peek)
        window = coalesce_ms(int(IDLE.total_seconds() * 1000))
        assert window == COALESCE_MAX_MS  # min(30 min / 20, 5 s)
        assert coalesce_ms(20_000) == 1_000
        session = await web.create(data={})
        start = clock.now_ms()
        clock.advance(window - 1)
        await web.touch(session.id)  # a plain read fills the cache: no write
        await web.touch(session.id)  # from the cache
        after = await stored.get(session.id)
        assert after is not None
        assert (after.last_seen_at, after.expires_at) == (start, session.expires_at)
        clock.advance(1)  # the window is over: a touch writes again
        touched = await web.touch(session.id)
        assert touched is not None
        assert touched.last_seen_at == clock.now_ms()
        after = await stored.get(session.id)
        assert after is not None
        assert after.expires_at == clock.now_ms() + int(IDLE.total_seconds() * 1000)
    finally:
        await store.close()
        await peek.close()


async def test_the_cache_holds_at_most_its_size(redis_url: str) -> None:
    store = await connect(redis_url, read_cache=2)
    try:
        web = namespace_of(store)
        sessions = [await web.create(data={"i": i}) for i in range(3)]
        for session in sessions:
            await web.touch(session.id)
        cache = cache_of(store)
        assert len(cache) == 2
        await web.touch(sessions[0].id)  # the least recently used went out first
        assert cache.hits == 0
        await web.touch(sessions[2].id)
        assert cache.hits == 1
    finally:
        await store.close()


async def test_writes_of_this_process_drop_the_entry_at_once(cached: Store) -> None:
    web = namespace_of(cached)
    session = await web.create(data={"n": 1})
    await web.touch(session.id)
    await web.update(session.id, data={"n": 2})
    assert len(cache_of(cached)) == 0
    seen = await web.touch(session.id)
    assert seen is not None
    assert seen.data == {"n": 2}
    await web.delete(session.id)
    assert await web.touch(session.id) is None


@pytest.mark.parametrize("url", ["memory://?read_cache=100", "sqlite:///s.db?read_cache=100"])
async def test_backends_that_cannot_report_changes_get_no_cache(url: str) -> None:
    store = await connect(url)
    try:
        assert store.read_cache is None
    finally:
        await store.close()
