"""Fail fast: once a call timed out against the store, the calls that follow within the
store's window answer `StoreUnavailable` at once; after the window one call probes, and the
store's recovery is seen without a restart. On a private redis-server paused with SIGSTOP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from sessionary import Charge, Store, StoreUnavailable, connect
from sessionary.outage import DEFAULT_FAIL_FAST, SLOW_FAILURE_S
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.servers import RedisServer

HOUR = timedelta(hours=1)
TIMEOUT_S = 0.5
#: "at once": well under the timeout a call would otherwise wait, with room for a loaded CI
AT_ONCE = TIMEOUT_S / 4
WINDOW = timedelta(milliseconds=800)
ADMIN = "an-admin-key-long-enough"


class Skew:
    """The monotonic clock, moved forward by hand: the window passes without sleeping."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead


@pytest_asyncio.fixture
async def store(private_redis: RedisServer) -> AsyncIterator[Store]:
    url = (
        f"{private_redis.url}?socket_timeout={TIMEOUT_S}&socket_connect_timeout={TIMEOUT_S}"
        f"&fail_fast_ms={WINDOW // timedelta(milliseconds=1)}"
    )
    store = await connect(url)
    yield store
    await store.close()


async def timed(call: Awaitable[Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await call
    except StoreUnavailable as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


async def test_after_a_timeout_calls_fail_fast_until_a_probe_finds_the_store_back(
    store: Store, paused: Callable[[bool], None], caplog: pytest.LogCaptureFixture
) -> None:
    skew = Skew()
    store.breaker.clock = skew
    assert store.breaker.outage is not None
    store.breaker.outage.clock = skew
    assert store.breaker.window == WINDOW.total_seconds()
    web = store.namespace("web", idle_ttl=HOUR)
    session = await web.create(data={"a": 1})
    quota = store.counters("quota")
    with caplog.at_level(logging.INFO, logger="sessionary.store"):
        paused(True)
        took, failed = await timed(web.get(session.id))  # the first call waits its timeout
        assert failed is not None
        assert TIMEOUT_S * 0.8 <= took < TIMEOUT_S + 1.5, took
        for call in (
            web.get(session.id),
            web.touch(session.id),
            web.update(session.id, data={"b": 2}),
            web.count(),
            quota.charge(Charge("k", limit=5, window=HOUR)),
            store.ping(),
        ):
            took, failed = await timed(call)  # the following ones answer at once
            assert failed is not None
            assert "failing fast" in str(failed)
            assert took < AT_ONCE, took

        skew.ahead += WINDOW.total_seconds()  # the window is over: one call probes...
        probe = asyncio.ensure_future(timed(web.get(session.id)))
        await asyncio.sleep(0)
        took, failed = await timed(web.count())  # ...while the others still fail fast
        assert failed is not None
        assert took < AT_ONCE
        took, failed = await probe
        assert failed is not None
        assert took >= TIMEOUT_S * 0.8
        took, failed = await timed(web.get(session.id))
        assert failed is not None
        assert took < AT_ONCE

        paused(False)
        skew.ahead += WINDOW.total_seconds()  # the next call probes and finds it back
        took, failed = await timed(web.get(session.id))
        assert failed is None
        assert took < 0.5
        assert not store.breaker.open
        assert (await web.touch(session.id)) is not None
        skew.ahead += 10  # quiet long enough: the outage is over
        assert await web.count() == 1
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said  # once each, not per call


async def test_the_window_is_a_url_option_of_every_store_and_on_by_default(
    tmp_path: Path,
) -> None:
    assert timedelta(0) < DEFAULT_FAIL_FAST <= timedelta(seconds=5)
    assert SLOW_FAILURE_S < TIMEOUT_S
    path = tmp_path / "store.db"
    for url, window in (
        (f"sqlite:///{path}?fail_fast_ms=250", 0.25),
        (f"sqlite:///{path}?synchronous=FULL&fail_fast_ms=0", 0.0),
        (f"sqlite:///{path}", DEFAULT_FAIL_FAST.total_seconds()),
        ("memory://?fail_fast_ms=1500", 1.5),
    ):
        store = await connect(url)
        try:
            assert store.breaker.window == window
            await store.namespace("web", idle_ttl=HOUR).create()
        finally:
            await store.close()
    with pytest.raises(ValueError, match="fail_fast_ms"):
        await connect("memory://?fail_fast_ms=soon")


async def test_fail_fast_ms_zero_turns_it_off(
    private_redis: RedisServer, paused: Callable[[bool], None]
) -> None:
    store = await connect(f"{private_redis.url}?socket_timeout={TIMEOUT_S}&fail_fast_ms=0")
    try:
        web = store.namespace("web", idle_ttl=HOUR)
        await web.count()
        paused(True)
        for _ in range(2):
            took, failed = await timed(web.count())
            assert failed is not None
            assert took >= TIMEOUT_S * 0.8
    finally:
        paused(False)
        await store.close()


async def test_a_request_after_a_timed_out_one_answers_503_at_once(
    private_redis: RedisServer, paused: Callable[[bool], None], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{private_redis.url}?socket_timeout={TIMEOUT_S}&socket_connect_timeout={TIMEOUT_S}"
    settings = Settings(store=url, api_keys=[ADMIN], reaper={"enabled": False})
    app = create_app(settings)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            created = await client.post("/v1/namespaces/web/sessions", json={}, headers=auth)
            assert created.status_code == 201, created.text
            path = f"/v1/namespaces/web/sessions/{created.json()['id']}"
            paused(True)
            for bound in (TIMEOUT_S + 1.5, AT_ONCE):  # the first waits its timeout, then at once
                started = time.monotonic()
                answer = await client.get(path, headers=auth)
                took = time.monotonic() - started
                assert answer.status_code == 503
                assert took < bound, took
                assert answer.json()["error"] == "store_unavailable"
                assert int(answer.headers["Retry-After"]) > 0
            paused(False)
            ready = await client.get("/readyz")  # within the window: still failing fast
            assert ready.status_code == 503
            assert "Retry-After" in ready.headers
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned  # one outage, said once, however many requests it failed
