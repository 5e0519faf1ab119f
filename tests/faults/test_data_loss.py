"""Redis loses its data (FLUSHALL, a restart without persistence; a failover to an empty
replica looks the same to a client): nothing a process remembered of the store may keep it
from working afterwards.

Each process here is a `Store` of its own on a private redis-server, which the test flushes or
kills and restarts empty; no process is restarted, and the jobs find their work by themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis
from fastapi import Depends, FastAPI

from sessionary import ManualClock, Store, connect
from sessionary.analytics import Rules, Sessionizer, TrackEvent
from sessionary.analytics.sink import Sink
from sessionary.counters import Charge
from sessionary.playground import Playground, PlaygroundSettings
from sessionary.store import SECRET_RECHECK
from tests.servers import RedisServer
from tests.web.conftest import client_for

T = 30 * 60_000  # the default session timeout
LAG = 5 * 60_000  # the default reap lag


def event(**fields: Any) -> TrackEvent:
    return TrackEvent.parse({"name": "screen_view", **fields})


@pytest_asyncio.fixture
async def stores(
    private_redis: RedisServer, clock: ManualClock
) -> AsyncIterator[tuple[Store, Store]]:
    """Two processes on one Redis."""
    one = await connect(private_redis.url, clock=clock)
    two = await connect(private_redis.url, clock=clock)
    yield one, two
    await one.close()
    await two.close()


async def _devices(sink: Sink, project: str) -> dict[str, bool]:
    """device -> whether its session is closed, as the sink has it."""
    rows = (await sink.sessions(project, limit=1000)).sessions
    return {row.device_id: row.closed for row in rows}


@pytest.mark.parametrize("loss", [RedisServer.flushall, RedisServer.restart_empty])
async def test_analytics_jobs_find_every_project_again_after_the_store_lost_its_data(
    private_redis: RedisServer,
    stores: tuple[Store, Store],
    clock: ManualClock,
    sink: Sink,
    loss: Any,
) -> None:
    one, two = stores
    # "shop" is configured; "adhoc" is only ever seen through ingest (default rules)
    ingest = Sessionizer(one, {"shop": Rules()})
    jobs = Sessionizer(two, {"shop": Rules()}, sink=sink)  # another process runs the jobs
    now = clock.now_ms()
    for project in ("shop", "adhoc"):
        await ingest.ingest(project, [event(device_id="before", timestamp=now)])
    assert await jobs.drain() == 2
    assert await _devices(sink, "shop") == {"before": False}

    await asyncio.to_thread(loss, private_redis)  # the loop runs meanwhile, as a service's does

    now = clock.now_ms()
    for project in ("shop", "adhoc"):
        await ingest.ingest(project, [event(device_id="after", timestamp=now)])
    assert await jobs.drain() == 2  # both projects found again, no restart, no new config
    clock.advance(T + LAG + 1000)
    assert await jobs.reap() == 2  # the sessions opened after the loss are closed when due
    assert await jobs.drain() == 2
    for project in ("shop", "adhoc"):
        devices = await _devices(sink, project)
        assert devices["after"] is True
    assert await jobs.reap() == 0


async def test_a_surviving_outbox_of_a_configured_project_is_drained_without_a_new_event(
    private_redis: RedisServer, stores: tuple[Store, Store], clock: ManualClock, sink: Sink
) -> None:
    """Partial loss: the set naming the projects is gone (evicted, or lost in a failover),
    the project's own keys are not: the jobs know the configured projects from the settings,
    drain what the outbox holds and close what is due."""
    one, two = stores
    ingest = Sessionizer(one, {"shop": Rules()})
    jobs = Sessionizer(two, {"shop": Rules()}, sink=sink)
    await ingest.ingest("shop", [event(device_id=f"d{i}") for i in range(3)])
    client = redis.Redis(port=private_redis.port)
    try:
        assert client.delete("sessionary:an:projects") == 1
    finally:
        client.close()
    assert await jobs.drain() == 1
    assert set(await _devices(sink, "shop")) == {"d0", "d1", "d2"}
    clock.advance(T + LAG + 1000)
    assert await jobs.reap() == 3
    assert await jobs.drain() == 1
    assert all((await _devices(sink, "shop")).values())


async def test_every_process_keeps_the_days_salt_after_the_store_lost_it(
    private_redis: RedisServer, stores: tuple[Store, Store], clock: ManualClock
) -> None:
    """The anonymous device ids of a visitor stay what they were: the processes that knew
    the day's salts write them back, and a process started later reads them."""
    one, two = stores
    a, b = Sessionizer(one), Sessionizer(two)
    visitor = ("shop", "192.0.2.1", "UA")
    before = await a.devices.candidates(*visitor, clock.now_ms())
    assert await b.devices.candidates(*visitor, clock.now_ms()) == before
    await asyncio.to_thread(private_redis.restart_empty)
    clock.advance(SECRET_RECHECK)
    assert await b.devices.candidates(*visitor, clock.now_ms()) == before
    later = await connect(private_redis.url, clock=clock)
    try:
        assert await Sessionizer(later).devices.candidates(*visitor, clock.now_ms()) == before
    finally:
        await later.close()


async def test_scripts_are_loaded_again_after_a_restart_without_persistence(
    private_redis: RedisServer, stores: tuple[Store, Store], clock: ManualClock
) -> None:
    """Every Lua script is called by SHA: after a restart the server knows none, and each
    call loads its script again (single calls, and the per-shard pipelines of claim and
    revoke) instead of failing."""
    store, _ = stores
    ns = store.namespace("web", idle_ttl=timedelta(minutes=1))
    quota = store.counters("quota")
    for _ in range(2):
        session = await ns.create(subject="ann", data={"n": 1})
        await ns.touch(session.id)
        await ns.update(session.id, data={"n": 2})
        await ns.consume(session.id, "calls", 1, limit=5)
        await ns.append(session.id, "note", {"k": 1})
        await ns.read(session.id)
        rotated = await ns.rotate(session.id)
        await quota.charge(Charge("k", limit=3, window=timedelta(minutes=1)))
        await ns.create(subject="ann")
        assert await ns.revoke_subject("ann") == 2
        await ns.create()
        clock.advance(timedelta(minutes=2))
        assert len(await ns.reap()) == 1
        assert await ns.delete(rotated.id) is False
        await asyncio.to_thread(private_redis.restart_empty)


# -- the keyed hash of client IPs: one key for every process ------------------------------------


async def _searches_until_refused(clients: list[httpx.AsyncClient], most: int) -> int:
    """Searches of one client IP, through each process in turn, until one is refused."""
    for allowed in range(most):
        answer = await clients[allowed % len(clients)].get("/api/search", params={"q": "x"})
        if answer.status_code == 429:
            assert answer.json()["scope"] == "ip"
            return allowed
        assert answer.status_code == 200
    raise AssertionError(f"{most} searches of one IP, none refused")


async def test_every_process_hashes_client_ips_with_one_key_after_the_store_lost_it(
    private_redis: RedisServer, stores: tuple[Store, Store], clock: ManualClock
) -> None:
    """Two processes knew the key; the store loses it. Whichever asks the store first after
    its recheck writes the key it knew back, so a process started afterwards takes the same
    one: one IP gets its quota once, not once per key. A process that starts before anyone
    wrote it back makes a new key; the others take it within `SECRET_RECHECK`."""
    limit = 6
    settings = PlaygroundSettings(ip_limit=limit, session_limit=1000, sessions_per_ip=1000)
    opened: list[Store] = []
    clients: list[httpx.AsyncClient] = []

    async def process(store: Store | None = None) -> httpx.AsyncClient:
        if store is None:
            store = await connect(private_redis.url, clock=clock)
            opened.append(store)
        playground = Playground(store, settings)
        app = FastAPI()
        playground.install(app)

        @app.get("/api/search", dependencies=[Depends(playground.search_quota)])
        async def search() -> dict[str, str]:
            return {}

        client = client_for(app)
        clients.append(client)
        return client

    try:
        one, two = stores
        a, b = await process(one), await process(two)
        assert await _searches_until_refused([a, b], limit + 1) == limit

        await asyncio.to_thread(private_redis.flushall)
        clock.advance(SECRET_RECHECK)
        assert (await a.get("/api/search")).status_code == 200  # a writes its key back
        c = await process()  # a process started after the loss
        assert await _searches_until_refused([b, c, a], limit + 1) == limit - 1

        await asyncio.to_thread(private_redis.flushall)
        d = await process()  # first after the loss: a new key (a, b, c still know the old)
        assert (await d.get("/api/search")).status_code == 200
        clock.advance(SECRET_RECHECK)  # everybody reads the store again: d's key
        assert await _searches_until_refused([a, b, c, d], limit + 1) == limit - 1
    finally:
        for client in clients:
            await client.aclose()
        for store in opened:
            await store.close()
