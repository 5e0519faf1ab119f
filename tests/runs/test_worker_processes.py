"""A run produced by a worker in another OS process, on the backends processes can share
(SQLite and Redis): the reader here sees every event live, a cancel here reaches the worker
there, and a worker killed mid-run is failed by the reaper within one lease period."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest_asyncio

from sessionary import ManualClock, Store, connect
from sessionary.logs import LogEvent
from sessionary.runs import RunFinished, Runs, RunsSettings

SETTINGS = RunsSettings(lease_ttl="30s", retention="1h")
SPAWN = multiprocessing.get_context("spawn")


def _worker(url: str, now: int, run_id: str, mode: str, results: Any) -> None:
    """The worker process: `count` emits 100 chunks and completes; `until_cancelled` emits
    until it hears the run was cancelled; `hang` emits one chunk and never returns."""

    async def work() -> int:
        store = await connect(url, clock=ManualClock(now))
        runs = Runs(store, SETTINGS)
        emitted = 0
        try:
            async with runs.producer(run_id, worker="far-away") as producer:
                if mode == "count":
                    for n in range(100):
                        await producer.emit("chunk", n)
                        emitted += 1
                elif mode == "until_cancelled":
                    while not producer.cancelled:
                        try:
                            await producer.emit("chunk", emitted)
                        except RunFinished:
                            break
                        emitted += 1
                        await asyncio.sleep(0.005)
                else:
                    await producer.emit("chunk", "ready")
                    await asyncio.Event().wait()
        finally:
            await store.close()
        return emitted

    results.put(asyncio.run(work()))


@pytest_asyncio.fixture
async def runs(shared_url: str, clock: ManualClock) -> AsyncIterator[Runs]:
    store: Store = await connect(shared_url, clock=clock)
    yield Runs(store, SETTINGS)
    await store.close()


def spawn(url: str, clock: ManualClock, run_id: str, mode: str) -> tuple[Any, Any]:
    results = SPAWN.Queue()
    process = SPAWN.Process(target=_worker, args=(url, clock.now_ms(), run_id, mode, results))
    process.start()
    return process, results


async def chunks_of(runs: Runs, run_id: str) -> list[Any]:
    return [
        e.data async for e in runs.events(run_id) if isinstance(e, LogEvent) and e.type == "chunk"
    ]


async def test_a_reader_here_follows_a_worker_there(
    runs: Runs, shared_url: str, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    reader = asyncio.create_task(chunks_of(runs, run.id))
    process, results = spawn(shared_url, clock, run.id, "count")
    try:
        async with asyncio.timeout(60):
            assert await reader == list(range(100))
        assert await asyncio.to_thread(results.get, timeout=30) == 100
    finally:
        process.join(30)
    final = await runs.get(run.id)
    assert (final.status, final.result) == ("completed", None)


async def test_a_cancel_here_stops_a_worker_there(
    runs: Runs, shared_url: str, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    process, results = spawn(shared_url, clock, run.id, "until_cancelled")
    try:
        async with asyncio.timeout(60):
            async for event in runs.events(run.id):
                if isinstance(event, LogEvent) and event.data == 10:
                    break
        await runs.cancel(run.id, "alice")
        emitted = await asyncio.to_thread(results.get, timeout=30)  # the worker stopped
    finally:
        process.join(30)
    assert process.exitcode == 0
    chunks = await chunks_of(runs, run.id)
    assert chunks == list(range(emitted))  # nothing it emitted was lost, nothing after end
    final = await runs.get(run.id)
    assert final.status == "cancelled"
    ends = [e async for e in runs.events(run.id) if isinstance(e, LogEvent) and e.type == "end"]
    assert len(ends) == 1


async def test_a_killed_worker_errors_within_one_lease(
    runs: Runs, shared_url: str, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    process, _ = spawn(shared_url, clock, run.id, "hang")
    try:
        async with asyncio.timeout(60):
            async for event in runs.events(run.id):
                if isinstance(event, LogEvent) and event.type == "chunk":
                    break  # it is running, lease taken
    finally:
        process.kill()
        process.join(30)
    clock.advance(timedelta(seconds=30) - timedelta(milliseconds=1))
    await runs.reap()
    assert (await runs.get(run.id)).status == "running"
    clock.advance(1)
    await runs.reap()
    failed = await runs.get(run.id)
    assert (failed.status, failed.error) == ("error", "the worker stopped renewing its lease")
    assert await chunks_of(runs, run.id) == ["ready"]
