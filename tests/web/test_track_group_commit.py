"""/track's group commit (sessionary.analytics.coalesce): concurrent requests of a project
share an ingest step, each answered with its own results once its events are stored; a failed
step fails each of its requests (503), and the next step works; a caller that goes away does
not disturb the others. On the real SQLite and Redis stores."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessionary import ManualClock, connect
from sessionary.analytics import Sessionizer
from sessionary.analytics.coalesce import GroupCommit
from sessionary.analytics.events import TrackEvent
from sessionary.analytics.service import MAX_STEP, Told
from tests.servers import RedisServer
from tests.web.conftest import PROJECT_KEY, client_for

SHOP = {"Authorization": f"Bearer {PROJECT_KEY}"}
BACKENDS = pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
#: for the tests that bring a store of their own (`make_app` wants one)
ONCE = pytest.mark.parametrize("store_url", ["memory"], indirect=True)


def steps_of(metrics: str) -> int:
    """How many ingest steps the service ran for the project (one latency sample each)."""
    found = re.search(
        r'sessionary_analytics_ingest_duration_seconds_count\{project="shop"\} (\S+)', metrics
    )
    return 0 if found is None else int(float(found.group(1)))


def event(device: str, **more: Any) -> dict[str, Any]:
    return {"name": "screen_view", "device_id": device, **more}


async def post(client: httpx.AsyncClient, body: object) -> httpx.Response:
    return await client.post("/api/v1/track", headers=SHOP, json=body)


@BACKENDS
async def test_concurrent_requests_share_steps_and_each_gets_its_own_answer(
    make_app: Callable[..., FastAPI], clock: ManualClock
) -> None:
    app = make_app()
    async with app.router.lifespan_context(app), client_for(app) as client:
        now = clock.now_ms()
        seen = await post(client, [event("r", event_id="e1", timestamp=now)])
        assert seen.json() == {"accepted": 1, "duplicates": 0, "late": 0}
        before = steps_of((await client.get("/metrics")).text)
        singles = [post(client, event(f"d{n}", path=f"/{n}")) for n in range(40)]
        others = [
            post(client, [event("r", event_id="e1", timestamp=now), event("r")]),  # 1 duplicate
            post(client, [event("old", timestamp=now), event("old", timestamp=now - 60 * 60_000)]),
            post(client, [event("x"), {"name": ""}]),  # one good, one refused: 422
        ]
        answers = await asyncio.gather(*singles, *others)
        for answer in answers[:40]:
            assert answer.status_code == 202
            assert answer.json() == {"accepted": 1, "duplicates": 0, "late": 0}
        duplicate, late, invalid = answers[40:]
        assert duplicate.json() == {"accepted": 2, "duplicates": 1, "late": 0}
        assert late.json() == {"accepted": 2, "duplicates": 0, "late": 1}
        assert invalid.status_code == 422
        assert [error["index"] for error in invalid.json()["errors"]] == [1]
        assert (invalid.json()["accepted"], invalid.json()["duplicates"]) == (1, 0)
        metrics = (await client.get("/metrics")).text
        steps = steps_of(metrics) - before  # the 43 requests, whatever they carry, share steps
        assert 1 <= steps <= 43 // 2, steps
        joined = 'sessionary_analytics_events_total{outcome="joined",project="shop"} '
        assert joined + "44.0" in metrics  # 1 + 40 + 1 + 1 + 1: every event stored once


@BACKENDS
async def test_requests_with_ids_and_timestamps_sharing_steps_get_their_own_exact_counts(
    make_app: Callable[..., FastAPI], clock: ManualClock
) -> None:
    """Duplicates (of an earlier step's event, of another event of the request, of another
    request's event) and late events, each told to the request that sent them."""
    app = make_app()
    async with app.router.lifespan_context(app), client_for(app) as client:
        now, hour = clock.now_ms(), 60 * 60_000
        await post(client, [event("r", event_id="e1", timestamp=now)])
        before = steps_of((await client.get("/metrics")).text)
        fresh, again, mixed, pairs = [], [], [], []
        for n in range(10):
            fresh.append(post(client, event(f"a{n}", event_id=f"a{n}", timestamp=now)))
            again.append(
                post(
                    client,
                    [
                        event(f"b{n}", event_id=f"b{n}", timestamp=now),
                        event("r", event_id="e1", timestamp=now),  # seen in an earlier step
                    ],
                )
            )
            mixed.append(
                post(
                    client,
                    [
                        event(f"c{n}", event_id=f"c{n}.1", timestamp=now),
                        event(f"c{n}", event_id=f"c{n}.2", timestamp=now - hour),  # late
                        event(f"c{n}", event_id=f"c{n}.1", timestamp=now),  # duplicate
                        event(f"c{n}", timestamp=now - 2 * hour),  # late
                        event(f"c{n}", timestamp=now + 1000),
                    ],
                )
            )
            # two requests sending one id: whichever the step places second is the duplicate
            pairs += [
                post(client, event(f"p{n}", event_id=f"p{n}", timestamp=now)),
                post(client, event(f"p{n}", event_id=f"p{n}", timestamp=now)),
            ]
        answers = [answer.json() for answer in await asyncio.gather(*fresh, *again, *mixed, *pairs)]
        assert answers[:10] == [{"accepted": 1, "duplicates": 0, "late": 0}] * 10
        assert answers[10:20] == [{"accepted": 2, "duplicates": 1, "late": 0}] * 10
        assert answers[20:30] == [{"accepted": 5, "duplicates": 1, "late": 2}] * 10
        for first, second in zip(answers[30::2], answers[31::2], strict=True):
            assert {first["duplicates"], second["duplicates"]} == {0, 1}
            assert first["late"] == second["late"] == 0
        steps = steps_of((await client.get("/metrics")).text) - before
        assert 1 <= steps <= 50 // 2, steps  # the 50 requests shared steps


@ONCE
async def test_a_failed_step_fails_each_of_its_requests_503_and_the_next_step_works(
    make_app: Callable[..., FastAPI], private_redis: RedisServer
) -> None:
    app = make_app(store=private_redis.url + "?socket_connect_timeout=0.5")
    async with app.router.lifespan_context(app), client_for(app) as client:
        private_redis.stop()
        answers = await asyncio.gather(*(post(client, event(f"d{n}")) for n in range(20)))
        for answer in answers:
            assert answer.status_code == 503
            assert answer.json()["error"] == "store_unavailable"
            assert "Retry-After" in answer.headers
        private_redis.start()
        answers = await asyncio.gather(*(post(client, event(f"d{n}")) for n in range(20)))
        assert [answer.status_code for answer in answers] == [202] * 20


@ONCE
async def test_a_failed_sqlite_step_fails_each_of_its_requests_503_and_the_next_works(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    path = tmp_path / "locked.db"
    app = make_app(store=f"sqlite:///{path}?busy_timeout_ms=200&fail_fast_ms=0")
    async with app.router.lifespan_context(app), client_for(app) as client:
        other = sqlite3.connect(path, isolation_level=None)  # another process's writer
        try:
            other.execute("BEGIN IMMEDIATE")
            answers = await asyncio.gather(*(post(client, event(f"d{n}")) for n in range(20)))
            for answer in answers:
                assert answer.status_code == 503
                assert "Retry-After" in answer.headers
            other.execute("ROLLBACK")
        finally:
            other.close()
        answers = await asyncio.gather(*(post(client, event(f"d{n}")) for n in range(20)))
        assert [answer.status_code for answer in answers] == [202] * 20


@BACKENDS
async def test_a_cancelled_caller_leaves_the_others_their_steps(
    store_url: str, clock: ManualClock
) -> None:
    store = await connect(store_url, clock=clock)
    sessionizer = Sessionizer(store)
    first_step = asyncio.Event()
    go_on = asyncio.Event()

    async def step(project: str, batches: list[list[TrackEvent]]) -> list[Told]:
        if not first_step.is_set():  # the first step waits: the next callers queue up
            first_step.set()
            await go_on.wait()
        return await sessionizer.ingest_together(project, batches)

    together: GroupCommit[str, list[TrackEvent], Told] = GroupCommit(step, limit=MAX_STEP, size=len)
    try:

        def send(device: str) -> asyncio.Task[Told]:
            events = [TrackEvent.parse(event(device))]
            return asyncio.create_task(together.submit("shop", events))

        first = send("a")
        await first_step.wait()
        queued = [send(f"q{n}") for n in range(5)]
        await asyncio.sleep(0)  # they run to their wait
        queued[2].cancel()  # gone before its step: its event is not stored
        first.cancel()  # gone while its step runs: the step goes on for the others
        go_on.set()
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert isinstance(results.pop(2), asyncio.CancelledError)
        assert results == [Told(0, 0)] * 4
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await sessionizer.backend.open_sessions("shop") == 5  # a, and four queued
    finally:
        await store.close()


async def test_group_commit_steps_natural_batches_within_the_limit() -> None:
    taken: list[list[int]] = []
    began = asyncio.Event()
    gate = asyncio.Event()

    async def step(key: str, items: list[int]) -> list[int]:
        taken.append(items)
        began.set()
        if len(taken) == 1:
            await gate.wait()
        if 13 in items:
            raise RuntimeError("the store is down")
        return [item * 10 for item in items]

    together: GroupCommit[str, int, int] = GroupCommit(step, limit=10, size=lambda n: n)
    first = asyncio.create_task(together.submit("k", 1))
    await began.wait()  # the first item of an idle key goes at once, alone
    assert taken == [[1]]
    rest = [asyncio.create_task(together.submit("k", n)) for n in (2, 3, 4, 5, 13, 6)]
    other_key = asyncio.create_task(together.submit("j", 7))  # its own steps, not held
    assert await other_key == 70
    gate.set()
    assert await first == 10
    results = await asyncio.gather(*rest, return_exceptions=True)
    # 2+3+4 fit in one step of 10; 5 starts the next; 13 (over the limit) goes alone and fails
    # with its step; 6 goes on after it
    assert taken == [[1], [7], [2, 3, 4], [5], [13], [6]]
    assert results[:4] == [20, 30, 40, 50]
    assert isinstance(results[4], RuntimeError)
    assert results[5] == 60
