"""`GET /v1/health` (and the console) while the store is down: the service's own redis-server
killed (connections refused) or stopped with SIGSTOP (it answers nothing: every call waits out
its timeout). The page still answers 200, quickly (its readiness ping is bounded), says the
store is not ready, and lists the parts that see it down (the jobs' periods are real, short:
the test waits for their failures with a bound); the console, whose sessions are in that
store, answers 503 meanwhile."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock
from sessionary.web.app import create_app
from sessionary.web.health import READINESS_TIMEOUT_S
from sessionary.web.settings import Settings
from tests.servers import RedisServer, eventually
from tests.web.conftest import ADMIN, API_KEY, client_for
from tests.web.test_console import sign_in

#: what /v1/health may take beyond its readiness ping's bound (a loaded 2-core machine)
SLACK_S = 1.5


@pytest_asyncio.fixture
async def client(
    private_redis: RedisServer, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        store=f"{private_redis.url}?socket_timeout=0.5&socket_connect_timeout=0.5",
        api_keys=[API_KEY],
        reaper={"every": "50ms"},
        namespaces={"web": {"idle_ttl": "30m"}},
        analytics={"enabled": False},
    )
    app: FastAPI = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), client_for(app) as opened:
        yield opened


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    """/v1/health, checked to answer 200 within its bound."""
    started = time.monotonic()
    response = await client.get("/v1/health", headers=ADMIN)
    assert time.monotonic() - started < READINESS_TIMEOUT_S + SLACK_S
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def reaper_ran(client: httpx.AsyncClient) -> None:
    """Wait (bounded) until the store is ready and the reaper swept it once."""

    async def ran() -> bool:
        body = await health(client)
        [job] = [job for job in body["jobs"] if job["name"] == "reaper"]
        return bool(body["ready"]) and job["ok"] is True

    await eventually(ran, within=15, what="the reaper never swept the store")


async def see_the_store_down(client: httpx.AsyncClient, clock: ManualClock) -> dict[str, Any]:
    """Wait (bounded) until the reaper has failed since the store went down; its answer."""

    async def reaper_down() -> bool:
        body = await health(client)
        outages = {outage["name"]: outage for outage in body["outages"]}
        return bool(outages["reaper"]["down"])

    await eventually(reaper_down, within=15, what="the reaper never saw the store down")
    body = await health(client)
    assert body["ready"] is False
    assert body["readiness_error"]
    assert body["store"].startswith("redis://127.0.0.1:")
    reaper = {outage["name"]: outage for outage in body["outages"]}["reaper"]
    assert reaper["since"] == clock.now_ms()  # dated by the store's clock
    assert reaper["failures"] >= 1
    assert "unavailable" in reaper["last_error"]
    [job] = [job for job in body["jobs"] if job["name"] == "reaper"]
    assert job["ok"] is False
    assert job["failures"] >= 1
    assert job["runs"] > job["failures"]  # it ran well before the store went down
    assert job["last_error"].startswith("StoreUnavailable: ")
    return body


async def test_health_answers_while_the_store_is_killed(
    client: httpx.AsyncClient, private_redis: RedisServer, clock: ManualClock
) -> None:
    await reaper_ran(client)
    private_redis.stop()
    body = await see_the_store_down(client, clock)
    store = {outage["name"]: outage for outage in body["outages"]}["store"]
    assert store["down"] is True  # the readiness ping failed through the store's breaker
    assert store["since"] == clock.now_ms()
    assert "refused" in body["readiness_error"] or "unavailable" in body["readiness_error"]


async def test_health_answers_in_time_while_the_store_answers_nothing(
    client: httpx.AsyncClient, paused: Callable[[bool], None], clock: ManualClock
) -> None:
    await reaper_ran(client)
    paused(True)
    await see_the_store_down(client, clock)
    paused(False)

    async def ready() -> bool:
        return bool((await health(client))["ready"])

    await eventually(ready, within=15, what="the store was never ready again")


async def test_the_console_answers_503_while_the_store_is_down_and_comes_back(
    client: httpx.AsyncClient, private_redis: RedisServer
) -> None:
    await sign_in(client)
    private_redis.stop()
    down = await client.get("/console/health", headers={"Accept": "text/html"})
    assert (down.status_code, down.json()["error"]) == (503, "store_unavailable")
    assert "retry-after" in down.headers
    assert (await health(client))["ready"] is False  # the key's route still answers
    private_redis.start()  # empty: this server keeps nothing across a kill

    async def back() -> bool:
        again = await client.get("/console/health", headers={"Accept": "text/html"})
        return again.status_code == 303  # the session went with the data: sign in again

    await eventually(back, within=15, what="the console never came back")
    await sign_in(client)
    again = await client.get("/console/health", headers={"Accept": "text/html"})
    assert again.status_code == 200
