"""Reapers in several OS processes at once, on the backends processes can share (SQLite and
Redis): three reapers in two processes close every idle session exactly once, and the
sessions extended meanwhile stay open."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sessionary import ManualClock, connect
from sessionary.analytics import Sessionizer, TrackEvent

SPAWN = multiprocessing.get_context("spawn")
PROJECT = "reaped"
DEVICES = 300


def _reapers(url: str, now: int, count: int, barrier: Any, results: Any) -> None:
    """`count` reapers in this process, each closing 7 sessions at a time until none is left."""

    async def reap() -> list[int]:
        store = await connect(url, clock=ManualClock(now))
        s = Sessionizer(store)
        try:
            barrier.wait()

            async def one() -> int:
                closed = 0
                while found := await s.backend.close_idle(PROJECT, s.rules(PROJECT), now, 7):
                    closed += found
                return closed

            return list(await asyncio.gather(*(one() for _ in range(count))))
        finally:
            await store.close()

    results.put(asyncio.run(reap()))


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("redis_url"))


async def test_three_reapers_in_two_processes_end_each_session_once(
    shared_url: str, clock: ManualClock
) -> None:
    store = await connect(shared_url, clock=clock)
    try:
        s = Sessionizer(store)
        now = clock.now_ms()
        events = [
            TrackEvent.parse({"name": "screen_view", "device_id": f"d{i}", "timestamp": now})
            for i in range(DEVICES)
        ]
        for start in range(0, DEVICES, 100):
            await s.ingest(PROJECT, events[start : start + 100])
        clock.advance(s.rules(PROJECT).timeout_ms + s.rules(PROJECT).reap_lag_ms + 1)
        barrier, results = SPAWN.Barrier(3), SPAWN.Queue()
        processes = [
            SPAWN.Process(target=_reapers, args=(shared_url, clock.now_ms(), n, barrier, results))
            for n in (2, 1)
        ]
        for process in processes:
            process.start()
        await asyncio.to_thread(barrier.wait)  # all start at once
        closed = [await asyncio.to_thread(results.get, True, 60) for _ in processes]
        for process in processes:
            process.join(30)
        assert sum(sum(per) for per in closed) == DEVICES
        assert all(len(per) > 0 for per in closed)
        ended: Counter[str] = Counter()
        started: Counter[str] = Counter()
        while entries := await s.backend.outbox(PROJECT, 1000):
            for entry in entries:
                ended.update(sid for sid, _ in entry.ended)
                started.update(sid for sid, _ in entry.started)
            await s.backend.ack(PROJECT, [entry.id for entry in entries])
        assert len(ended) == DEVICES
        assert set(ended.values()) == {1}
        assert set(started) == set(ended)
        assert await s.backend.open_sessions(PROJECT) == 0
    finally:
        await store.close()
