"""High availability through Redis Sentinel: a primary, two replicas and three sentinels of
the test's own (`RedisSentinelSet`). The primary is killed (-9) under load: the service follows
the new primary without a restart, the calls in between answer 503 with Retry-After, and every
write that answered success with `wait_replicas=1` is there afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from sessionary import connect, ids
from sessionary.backends.redis import RedisBackend
from sessionary.errors import StoreUnavailable
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.servers import RedisSentinelSet
from tests.web.conftest import client_for

KEY = "test-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {KEY}"}
OPTIONS = "wait_replicas=1&wait_timeout_ms=500&socket_timeout=1&socket_connect_timeout=0.5"


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[RedisSentinelSet]:
    started = RedisSentinelSet(tmp_path, replicas=2)
    started.start()
    yield started
    started.stop()


async def test_a_failover_under_load_answers_503_then_follows_the_new_primary_losing_nothing(
    sentinels: RedisSentinelSet, tmp_path: Path
) -> None:
    app = create_app(
        Settings(
            store=f"{sentinels.url}?{OPTIONS}",
            api_keys=[KEY],
            reaper={"enabled": False},
            analytics={"enabled": False},
        )
    )
    acknowledged: dict[str, int] = {}  # session id -> the n it was written with
    unavailable = 0
    old = sentinels.primary()
    async with app.router.lifespan_context(app), client_for(app) as client:

        async def write(n: int) -> bool:
            nonlocal unavailable
            answer = await client.post(
                "/v1/namespaces/web/sessions", json={"data": {"n": n}}, headers=ADMIN
            )
            if answer.status_code == 503:
                assert answer.json()["error"] == "store_unavailable"
                assert int(answer.headers["retry-after"]) > 0
                unavailable += 1
                return False
            assert answer.status_code == 201, answer.text
            acknowledged[answer.json()["id"]] = n
            return True

        n = 0
        while len(acknowledged) < 50:
            n += 1
            assert await write(n)
        killed = asyncio.create_task(asyncio.to_thread(old.stop))  # kill -9, mid-load
        started = time.monotonic()
        while len(acknowledged) < 100:
            assert time.monotonic() - started < 20, "the service never came back"
            n += 1
            if not await write(n):
                await asyncio.sleep(0.02)  # the sentinels need a moment: keep the load light
        await killed
        assert sentinels.primary() is not old
        assert unavailable > 0  # the calls between the kill and the failover
        for session_id, written in acknowledged.items():
            answer = await client.get(f"/v1/namespaces/web/sessions/{session_id}", headers=ADMIN)
            assert answer.status_code == 200, session_id
            assert answer.json()["data"] == {"n": written}


async def test_without_enough_replicas_a_write_answers_unavailable_not_success(
    sentinels: RedisSentinelSet,
) -> None:
    """wait_replicas=3 with two replicas: the write happens on the primary, but is not
    acknowledged; the caller hears StoreUnavailable (a write that may not survive a
    failover), while reads answer."""
    # (fail_fast_ms=0: the read right after the refused write is not failed fast)
    store = await connect(f"{sentinels.url}?wait_replicas=3&wait_timeout_ms=200&fail_fast_ms=0")
    session_id = ids.new_id()
    try:
        ns = store.namespace("web", idle_ttl=timedelta(minutes=5))
        with pytest.raises(StoreUnavailable, match=r"reached [0-2] of the 3 replica"):
            await ns.create(id=session_id)
        assert await ns.get(session_id) is not None
        assert await ns.count() == 1
        assert (await ns.read(session_id)).events == []  # a read-only script waits for nothing
        primary = redis.Redis(port=sentinels.primary().port)  # there, not anywhere else
        try:
            shard = ids.shard_of(session_id)
            assert primary.exists(f"sessionary:{{web:{shard:02d}}}:s:{session_id}")
        finally:
            primary.close()
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db", "tls"),
    [
        (
            "redis+sentinel://h1,h2:26380/mymaster",
            [("h1", 26379), ("h2", 26380)],
            "mymaster",
            0,
            False,
        ),
        ("rediss+sentinel://u:p%40ss@[::1]:1/svc/3", [("::1", 1)], "svc", 3, True),
    ],
)
async def test_sentinel_urls(
    url: str, sentinels: list[tuple[str, int]], service: str, db: int, tls: bool
) -> None:
    backend = RedisBackend.from_url(url)
    try:
        assert backend.sentinel is not None
        found = [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in backend.sentinel.sentinels
        ]
        assert found == sentinels
        pool = backend.client.connection_pool
        assert pool.service_name == service
        assert pool.connection_kwargs["db"] == db
        assert ("SSL" in pool.connection_class.__name__) is tls
        assert all(
            ("SSL" in s.connection_pool.connection_class.__name__) is tls
            for s in backend.sentinel.sentinels
        )
        if tls:
            assert pool.connection_kwargs["password"] == "p@ss"
    finally:
        await backend.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h1:26379",  # no service
        "redis+sentinel://h1:26379/svc/0/x",
        "redis+sentinel://h1:port/svc",
        "redis+sentinel://h1/svc?wait_replicas=1&wait_timeout_ms=0",
        "redis+sentinel://h1/svc?wait_replicas=1&wait_timeout_ms=5000",  # past socket_timeout
        "redis+cluster://h1:7000?wait_replicas=1",
    ],
)
def test_bad_sentinel_and_replication_options_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisBackend.from_url(url)
