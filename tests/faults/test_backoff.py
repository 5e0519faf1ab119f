"""Background jobs while the store is down: they back off (doubling, capped, jittered) and say
so once when it fails and once when it is back, not once per try. The schedule is injected:
nothing sleeps for real. The store is a private redis-server, stopped and started again."""

from __future__ import annotations

import asyncio
import io
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from sessionary import Store, StoreUnavailable, connect
from sessionary.analytics.service import Sessionizer
from sessionary.analytics.sqlite_sink import SqliteSink
from sessionary.cli import ops
from sessionary.outage import Backoff
from sessionary.reaper import run_forever
from sessionary.sessionize import Rules
from sessionary.web.settings import Settings
from tests.servers import RedisServer, eventually

HOUR = timedelta(hours=1)


@pytest_asyncio.fixture
async def store(private_redis: RedisServer) -> AsyncIterator[Store]:
    store = await connect(f"{private_redis.url}?socket_connect_timeout=0.5")
    yield store
    await store.close()


def said(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger]


def outage_between(
    server: RedisServer,
    delays: list[float],
    *,
    stop: int,
    start: int,
    end: int,
    store: Store | None = None,
) -> Callable[[float], Awaitable[None]]:
    """A `sleep` for a job's loop that sleeps not at all: it notes each delay asked for in
    `delays`, stops `server` at the `stop`-th, starts it again at the `start`-th (and, given
    the job's `store`, waits until that store answers again: its breaker may still fail
    fast for a moment) and ends the loop (CancelledError) at the `end`-th."""

    async def answers() -> bool:
        assert store is not None
        try:
            await store.ping()
        except StoreUnavailable:
            return False
        return True

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == stop:
            server.stop()
        elif len(delays) == start:
            server.start()
            if store is not None:
                await eventually(answers, within=10, what="the store never answered again")
        elif len(delays) == end:
            raise asyncio.CancelledError

    return sleep


@given(
    first=st.floats(0.01, 100),
    cap=st.floats(0.01, 1000),
    draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=80),
)
def test_backoff_doubles_up_to_its_cap_with_jitter(
    first: float, cap: float, draws: list[float]
) -> None:
    rolls = iter([*draws, 0.5])
    backoff = Backoff(first, cap, rand=lambda: next(rolls))
    for tries in range(len(draws)):
        ceiling = min(max(cap, first), first * 2.0**tries)
        assert ceiling / 2 <= backoff.next() <= ceiling
    backoff.reset()
    assert backoff.next() <= first


async def test_the_reaper_backs_off_while_the_store_is_down_and_says_so_twice(
    store: Store, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    web = store.namespace("web", idle_ttl=HOUR)
    await web.create()
    delays: list[float] = []
    sleep = outage_between(private_redis, delays, stop=1, start=7, end=9, store=store)

    backoff = Backoff(2, 30, rand=lambda: 1.0)  # no jitter: the schedule is exact
    with (
        caplog.at_level(logging.INFO, logger="sessionary.reaper"),
        pytest.raises(asyncio.CancelledError),
    ):
        await run_forever([web], every=timedelta(seconds=2), sleep=sleep, backoff=backoff)
    assert delays == [2, 2, 4, 8, 16, 30, 30, 2, 2]
    lines = said(caplog, "sessionary.reaper")
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert "unavailable" in lines[0][1]
    assert "back" in lines[1][1]


async def test_the_analytics_jobs_back_off_and_say_so_once_each(
    store: Store, private_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = await SqliteSink.open(str(tmp_path / "sink.db"))
    sessionizer = Sessionizer(store, {"shop": Rules()}, sink=sink)
    periods = {"reaper": 10.0, "vacuum": 100.0, "drainer": 1.0}
    delays: dict[str, list[float]] = defaultdict(list)
    down = 6  # tries each job makes while the store is down

    tried, back = asyncio.Event(), asyncio.Event()  # every job tried `down` times; then worked

    async def sleep(seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        delays[task.get_name().removeprefix("sessionary-analytics-")].append(seconds)
        if min(len(delays[job]) for job in periods) >= down:
            tried.set()
        if all(every in delays[job] for job, every in periods.items()):  # after a success
            back.set()
        await asyncio.sleep(0)

    private_redis.stop()
    with caplog.at_level(logging.INFO, logger="sessionary.analytics"):
        jobs = asyncio.create_task(
            sessionizer.run_forever(
                reap_every=timedelta(seconds=10),
                drain_every=timedelta(seconds=1),
                vacuum_every=timedelta(seconds=100),
                sleep=sleep,
            )
        )
        try:
            async with asyncio.timeout(20):
                await tried.wait()
                private_redis.start()
                await back.wait()
        finally:
            jobs.cancel()
            with pytest.raises(asyncio.CancelledError):
                await jobs
            await sink.close()
    for job, every in periods.items():
        tries = delays[job]
        failing = tries[: tries.index(every)]  # a failure's delay is below `every * 2**n`
        assert len(failing) >= down, (job, tries)
        for n, delay in enumerate(failing):  # doubling from the period, jittered, capped
            ceiling = min(max(every, 60.0), every * 2.0 ** min(n, 64))  # 2**n overflows past 1023
            assert ceiling / 2 <= delay <= ceiling, (job, tries)
        lines = [line for line in said(caplog, "sessionary.analytics") if f" {job}:" in line[1]]
        assert [level for level, _ in lines] == ["WARNING", "INFO"], (job, lines)


async def test_sessionary_reap_every_rides_out_an_outage(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`sessionary reap --every` used to exit on the first StoreUnavailable; it backs off and
    goes on, like the service's reaper."""
    settings = Settings(store=f"{private_redis.url}?socket_connect_timeout=0.5")
    delays: list[float] = []
    sleep = outage_between(private_redis, delays, stop=1, start=4, end=6)

    quiet = Console(file=io.StringIO())
    with (
        caplog.at_level(logging.INFO, logger="sessionary.cli"),
        pytest.raises(asyncio.CancelledError),
    ):
        await ops._reap(settings, timedelta(seconds=2), False, quiet, sleep=sleep)
    assert delays[0] == delays[-1] == 2  # the period while the store works
    assert all(1 <= d < 2 for d in delays[1:2])  # then backing off, jittered, from it
    assert all(2 <= d < 4 for d in delays[2:3])
    lines = said(caplog, "sessionary.cli")
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
