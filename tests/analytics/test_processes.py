"""Several OS processes at once, on the backends processes can share (SQLite and Redis): three
reapers in two processes close every idle session exactly once; three processes ingesting
events of the same devices open one session per device."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from typing import Any

from sessionary import ManualClock, connect
from sessionary.analytics import Sessionizer, TrackEvent
from sessionary.sessionize import Hit, Rules

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


def _ingest_in_process(
    url: str, now: int, worker: int, devices: int, rounds: int, barrier: Any, results: Any
) -> None:
    """Sends `rounds` events for each of `devices` devices, in batches, several at once."""

    def hit(r: int, d: int) -> Hit:
        return Hit(f"w{worker}r{r}d{d}", "screen_view", now + r * 1000 + worker, now, (f"d{d}",))

    async def work() -> int:
        store = await connect(url, clock=ManualClock(now))
        try:
            sz = store.sessionization
            barrier.wait()
            joined = 0
            for r in range(rounds):
                batches = [
                    [hit(r, d) for d in range(start, min(start + 25, devices))]
                    for start in range(0, devices, 25)
                ]
                outcomes = await asyncio.gather(
                    *(
                        sz.sessionize("mp", Rules(), batch, now, f"w{worker}r{r}b{b}x")
                        for b, batch in enumerate(batches)
                    )
                )
                joined += sum(o.joined for o in outcomes)
            return joined
        finally:
            await store.close()

    results.put(asyncio.run(work()))


async def test_ingests_in_several_processes_open_one_session_per_device(shared_url: str) -> None:
    url = shared_url
    clock = ManualClock()
    store = await connect(url, clock=clock)  # creates the schema before the race
    workers, devices, rounds = 3, 100, 4
    barrier = SPAWN.Barrier(workers)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_ingest_in_process,
            args=(url, clock.now_ms(), w, devices, rounds, barrier, results),
            daemon=True,
        )
        for w in range(workers)
    ]
    try:
        for process in processes:
            process.start()
        joined = [await asyncio.to_thread(results.get, True, 120) for _ in processes]
        for process in processes:
            await asyncio.to_thread(process.join, 30)
        assert [p.exitcode for p in processes] == [0] * workers
        assert sum(joined) == workers * devices * rounds

        sz = store.sessionization
        entries = await sz.outbox("mp", 100_000)
        device_of: dict[str, str] = {}
        for entry in entries:
            for placement in entry.placements:
                assert placement.status == "joined"
                sid, device = placement.session_id, placement.device
                assert sid is not None
                assert device is not None
                assert device_of.setdefault(sid, device) == device
        starts = Counter(device_of[sid] for e in entries for sid, _ in e.started)
        assert starts == Counter({f"d{d}": 1 for d in range(devices)})
        assert [sid for e in entries for sid, _ in e.ended] == []
        assert len(device_of) == devices
        counts: dict[str, int] = {}
        for entry in entries:
            for row in entry.sessions:
                counts[row.id] = max(counts.get(row.id, 0), row.event_count)
        assert set(counts.values()) == {workers * rounds}
        assert await sz.open_sessions("mp") == devices
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        await store.close()
