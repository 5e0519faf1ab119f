"""/healthz, /readyz, /metrics, and the background reaper."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from sessionary import ManualClock, Session, StoreUnavailable, connect
from sessionary.counters import Charge
from sessionary.reaper import run_forever
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.servers import RedisServer
from tests.web.conftest import ADMIN, client_for


async def test_health_and_readiness(service: httpx.AsyncClient) -> None:
    assert (await service.get("/healthz")).json() == {"status": "ok"}
    assert (await service.get("/readyz")).json() == {"status": "ready"}


async def test_metrics_count_requests_sessions_and_refusals(service: httpx.AsyncClient) -> None:
    made = await service.post("/v1/namespaces/web/sessions", json={}, headers=ADMIN)
    await service.delete(f"/v1/namespaces/web/sessions/{made.json()['id']}", headers=ADMIN)
    await service.get("/api/v1/playground/session")
    text = (await service.get("/metrics")).text
    assert 'sessionary_session_events_total{event="created",namespace="web"} 1.0' in text
    assert 'sessionary_session_events_total{event="deleted",namespace="web"} 1.0' in text
    assert (
        'sessionary_http_requests_total{method="POST",route="/v1/namespaces/{namespace}/sessions"'
        ',status="201"} 1.0'
    ) in text
    assert "sessionary_http_request_duration_seconds_bucket" in text
    # a route of a router mounted under a prefix is labelled with its whole template
    assert 'route="/api/v1/playground/session"' in text
    assert 'route="/session"' not in text


async def test_readyz_follows_the_store(private_redis: RedisServer) -> None:
    settings = Settings(
        store=private_redis.url + "?socket_connect_timeout=0.5", reaper={"enabled": False}
    )
    app = create_app(settings, clock=ManualClock())
    async with app.router.lifespan_context(app), client_for(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        private_redis.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.headers["retry-after"] == "30"
        assert down.json()["error"] == "store_unavailable"
        assert (await client.get("/healthz")).status_code == 200  # the process is still up
        metrics = (await client.get("/metrics")).text
        assert 'sessionary_store_errors_total{where="readyz"} 1.0' in metrics
        private_redis.start()
        lately = await client.get("/readyz")  # it failed a moment ago: not ready yet
        assert (lately.status_code, lately.json()["error"]) == (503, "store_unavailable")
        outage = (await app.state.sessionary.get()).breaker.outage
        outage.clock = lambda: time.monotonic() + outage.settle  # quiet for long enough
        assert (await client.get("/readyz")).status_code == 200


async def test_the_service_runs_a_reaper_while_it_lives(tmp_path: Path) -> None:
    settings = Settings(store=f"sqlite:///{tmp_path / 'reaped.db'}", reaper={"every": "1h"})
    app = create_app(settings, clock=ManualClock())

    def reapers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "sessionary-reaper"]

    async with app.router.lifespan_context(app):
        assert len(reapers()) == 1
    assert reapers() == []


async def test_the_reaper_loop_sweeps_each_interval_and_outlives_outages() -> None:
    clock = ManualClock()
    store = await connect("memory://", clock=clock)
    web = store.namespace("web", idle_ttl=timedelta(minutes=1))
    quota = store.counters("q")
    passes: list[float] = []
    real_reap = web.reap

    async def reap_failing_first(limit: int = 1000) -> list[Session]:
        if not passes:
            raise StoreUnavailable("down for the first pass")
        return await real_reap(limit)

    web.reap = reap_failing_first  # type: ignore[method-assign]

    async def next_pass(seconds: float) -> None:
        passes.append(seconds)
        if len(passes) == 2:  # after a failed pass and an idle one, time moves on
            clock.advance(timedelta(minutes=1))
        if len(passes) == 4:
            raise asyncio.CancelledError

    for _ in range(3):
        await web.create()
    await quota.charge(Charge("k", limit=5, window=timedelta(seconds=30)))
    with pytest.raises(asyncio.CancelledError):
        await run_forever([web], [quota], every=timedelta(seconds=5), sleep=next_pass)
    assert 2.5 <= passes[0] <= 5.0  # after the failure: a backoff from the period, jittered
    assert passes[1:] == [5.0, 5.0, 5.0]
    assert await web.count() == 0
    assert await quota.sweep() == 0  # the loop swept it already
