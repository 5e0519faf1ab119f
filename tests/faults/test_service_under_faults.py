"""The whole service under load while its Redis is flushed, killed and restarted: what the
clients saw (status, body, headers) and what was kept (sink rows, sessions, quota counters).

One `create_app` with its background jobs running (analytics drain and reap every 50 ms, the
session reaper), on a private redis-server that the test flushes, kills -9 and restarts
without persistence, mid-load. The service is never restarted. Time for the sessionization
rules comes from a `ManualClock`; the jobs' periods are real (the test waits for them with a
bound).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.servers import RedisServer, eventually
from tests.web.conftest import API_KEY, client_for

PROJECT_KEY = "shop-project-key-0123456789"
SHOP = {"Authorization": f"Bearer {PROJECT_KEY}"}
ADMIN = {"Authorization": f"Bearer {API_KEY}"}
T = 30 * 60_000  # the default session timeout
LAG = 5 * 60_000  # the default reap lag
DEVICES = 12
JOBS_LATE = "the background jobs did not get there in time"  # they run on real periods


@pytest_asyncio.fixture
async def app(
    private_redis: RedisServer, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    settings = Settings(
        store=f"{private_redis.url}?socket_timeout=1&socket_connect_timeout=0.5",
        api_keys=[API_KEY],
        reaper={"every": "50ms"},
        namespaces={"web": {"idle_ttl": "30m"}},
        analytics={
            "sink": f"sqlite:///{tmp_path / 'analytics.db'}",
            "projects": {"shop": {"key": PROJECT_KEY}},
            "reap_every": "50ms",
            "drain_every": "50ms",
        },
    )
    built = create_app(settings, clock=clock)
    async with built.router.lifespan_context(built):
        yield built


def sink_events(tmp_path: Path) -> Counter[str]:
    """device -> tracked events the sink holds (not its session_start/end markers)."""
    with sqlite3.connect(tmp_path / "analytics.db") as db:
        rows = db.execute(
            "SELECT device_id FROM analytics_events "
            "WHERE project_id = 'shop' AND name = 'screen_view'"
        )
        return Counter(device for (device,) in rows)


def sink_sessions(tmp_path: Path) -> dict[str, bool]:
    """device -> whether all its sessions are closed, as the sink has them."""
    with sqlite3.connect(tmp_path / "analytics.db") as db:
        rows = db.execute(
            "SELECT device_id, min(closed) FROM analytics_sessions WHERE project_id = 'shop' "
            "GROUP BY device_id"
        )
        return {device: bool(closed) for device, closed in rows}


async def track(client: httpx.AsyncClient, device: str, n: int) -> httpx.Response:
    return await client.post(
        "/api/v1/track",
        headers=SHOP,
        json={"name": "screen_view", "device_id": device, "event_id": f"{device}-{n}"},
    )


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "store_unavailable"
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.parametrize("loss", [RedisServer.flushall, RedisServer.restart_empty])
async def test_ingest_rides_out_a_redis_that_loses_its_data_mid_load(
    app: FastAPI,
    private_redis: RedisServer,
    clock: ManualClock,
    tmp_path: Path,
    loss: Callable[[RedisServer], None],
) -> None:
    """Every request is answered 202 or 503 with Retry-After (never another 5xx); every event
    acknowledged after the loss reaches the sink once; the sessions opened after the loss
    are closed when due; no restart, no new configuration."""
    after: Counter[str] = Counter()
    seen: Counter[int] = Counter()
    lost = asyncio.Event()

    async def device(client: httpx.AsyncClient, name: str) -> None:
        for n in range(40):
            # a device of its own after the loss: its sessions are all the service's since
            after_loss = lost.is_set()
            who = f"{name}-after" if after_loss else name
            response = await track(client, who, n)
            seen[response.status_code] += 1
            if response.status_code == 202:
                assert response.json()["accepted"] == 1
                if after_loss:
                    after[who] += 1
            else:
                assert_unavailable(response)
            await asyncio.sleep(0.005)

    async def lose_midway() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(loss, private_redis)
        lost.set()

    async with client_for(app) as client:
        await asyncio.gather(lose_midway(), *(device(client, f"d{i}") for i in range(DEVICES)))
        assert lost.is_set()
        assert set(seen) <= {202, 503}, seen
        assert sum(after.values()) > 0, "no event was acknowledged after the loss"
        # what was acknowledged after the loss is all in the sink, exactly once each
        await eventually(
            lambda: all(sink_events(tmp_path)[d] >= after[d] for d in after), 10, JOBS_LATE
        )
        held = sink_events(tmp_path)
        assert all(held[d] == after[d] for d in after), (held, after)  # never twice
        assert all(held[d] <= 40 for d in held), held
        # the jobs found the project again by themselves: the sessions are closed when due
        clock.advance(T + LAG + 1000)
        await eventually(lambda: all(sink_sessions(tmp_path).get(d) for d in after), 10, JOBS_LATE)
        # and the service goes on: a new event opens a new session, delivered too
        response = await track(client, "late", 0)
        assert response.status_code == 202
        await eventually(lambda: sink_events(tmp_path)["late"] == 1, 10, JOBS_LATE)


async def test_sessions_and_quotas_across_a_redis_killed_and_restarted(
    app: FastAPI, private_redis: RedisServer
) -> None:
    """Admin API writes while Redis dies and comes back empty: each answer is a success or a
    503 with Retry-After; once it is back, every session created since answers, counters
    charge exactly, and no process was restarted."""
    web = "/v1/namespaces/web/sessions"
    async with client_for(app) as client:
        created = (await client.post(web, headers=ADMIN, json={})).json()["id"]
        await asyncio.to_thread(private_redis.stop)
        down: list[httpx.Response] = [
            await client.post(web, headers=ADMIN, json={}),
            await client.get(f"{web}/{created}", headers=ADMIN),
            await client.get("/readyz"),
        ]
        for response in down:
            assert_unavailable(response)
        await asyncio.to_thread(private_redis.start)

        async def recovered() -> bool:
            response = await client.post(web, headers=ADMIN, json={})
            return response.status_code == 201

        await eventually(recovered, 10, "the service did not see Redis come back", every=0.1)
        session = (await client.post(web, headers=ADMIN, json={})).json()["id"]
        charges: list[Any] = await asyncio.gather(
            *(
                client.post(
                    f"{web}/{session}/counters/searches/consume",
                    headers=ADMIN,
                    json={"amount": 1, "limit": 25},
                )
                for _ in range(40)
            )
        )
        statuses = Counter(r.status_code for r in charges)
        assert statuses == {200: 25, 429: 15}, statuses  # exact, across the restart
        got = await client.get(f"{web}/{session}", headers=ADMIN)
        assert got.status_code == 200
        # the session created before the restart is gone with Redis's data: a 404, not a 500
        assert (await client.get(f"{web}/{created}", headers=ADMIN)).status_code == 404
