"""Workers across a store outage, on a private redis-server paused with SIGSTOP (its data
kept): the runs going on ride it out and each ends once with a gap-free log whose chunks are
all there, once; a worker that starts while the store is down backs off, then executes what
was dispatched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest_asyncio

from sessionary import Store, StoreUnavailable, connect
from sessionary.logs import LogEvent
from sessionary.runs import Producer, Runs, RunsSettings
from sessionary.runs.worker import Worker
from tests.servers import RedisServer, eventually

CHUNKS = 20
TIMEOUT_S = 0.3
SETTINGS = RunsSettings(lease_ttl="10s", dispatch="queue")


@pytest_asyncio.fixture
async def store(private_redis: RedisServer) -> AsyncIterator[Store]:
    url = f"{private_redis.url}?socket_timeout={TIMEOUT_S}&socket_connect_timeout={TIMEOUT_S}"
    store = await connect(url)
    yield store
    await store.close()


async def chunks(producer: Producer, given: Any) -> int:
    for n in range(CHUNKS):
        await producer.emit("chunk", n)
        await asyncio.sleep(0.05)
    return CHUNKS


async def log_of(runs: Runs, run_id: str) -> list[LogEvent]:
    return (await runs.runs.read(run_id, after=None, limit=1000)).events


async def test_runs_going_on_ride_out_a_paused_store(
    store: Store, paused: Callable[[bool], None]
) -> None:
    runs = Runs(store, SETTINGS)
    started = [
        await runs.start((await runs.create_conversation(f"u{n}")).id, f"u{n}") for n in range(6)
    ]
    worker = Worker(runs, chunks, name="w1")
    consuming = asyncio.create_task(worker.consume(concurrency=6))
    try:

        async def under_way() -> bool:
            return all([len(await log_of(runs, run.id)) >= 5 for run in started])

        await eventually(under_way, 20, "the runs did not get going")
        paused(True)
        await asyncio.sleep(1.5)  # the outage itself (the store's time, not a wait for it)
        paused(False)

        async def ended() -> bool:
            with contextlib.suppress(StoreUnavailable):  # the test's own reads fail fast too
                return all([(await runs.get(run.id)).status == "completed" for run in started])
            return False

        await eventually(ended, 30, "the runs did not end after the store came back")
    finally:
        await worker.stop(timedelta(seconds=5))
        await consuming
    for run in started:
        events = await log_of(runs, run.id)
        assert [e.cursor.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.data for e in events if e.type == "chunk"] == list(range(CHUNKS))
        assert [e.type for e in events].count("end") == 1
        assert (await runs.get(run.id)).attempt == 1  # ridden out, not retried


async def test_a_worker_started_during_an_outage_executes_the_runs_once_it_is_over(
    store: Store, paused: Callable[[bool], None]
) -> None:
    runs = Runs(store, SETTINGS)
    run = await runs.start((await runs.create_conversation("u")).id, "u")
    paused(True)
    worker = Worker(runs, chunks, name="w1")
    consuming = asyncio.create_task(worker.consume())
    try:
        await asyncio.sleep(1.0)  # claims fail meanwhile, and back off
        assert not consuming.done()
        paused(False)

        async def completed() -> bool:
            with contextlib.suppress(StoreUnavailable):
                return (await runs.get(run.id)).status == "completed"
            return False

        await eventually(completed, 30, "the run was not executed after the outage")
    finally:
        await worker.stop(timedelta(seconds=5))
        await consuming
    assert [e.data for e in await log_of(runs, run.id) if e.type == "chunk"] == list(range(CHUNKS))
