"""The analytics API over HTTP, on every backend: /track with its project key and per-event
errors, anonymous visitors by IP and User-Agent behind trusted proxies, sessions and stats
behind the admin key, a store that is down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock
from sessionary.analytics import Sessionizer
from tests.analytics.test_sinks import entry, session
from tests.servers import RedisServer
from tests.web.conftest import ADMIN, PROJECT_KEY, client_for

SHOP = {"Authorization": f"Bearer {PROJECT_KEY}"}
T = 30 * 60_000


@pytest_asyncio.fixture
async def app(make_app: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    built = make_app()
    async with built.router.lifespan_context(built):
        yield built


def sessionizer(app: FastAPI) -> Sessionizer:
    found = app.state.features.analytics
    assert isinstance(found, Sessionizer)
    return found


async def settle(app: FastAPI, clock: ManualClock) -> None:
    """Let every session go idle, close them and drain to the sink."""
    clock.advance(10 * T)
    await sessionizer(app).reap()
    await sessionizer(app).drain()


async def test_track_one_event_and_a_batch(
    client: httpx.AsyncClient, app: FastAPI, clock: ManualClock
) -> None:
    now = clock.now_ms()
    one = await client.post(
        "/api/v1/track", headers=SHOP, json={"name": "screen_view", "device_id": "d1"}
    )
    assert one.status_code == 202, one.text
    assert one.json() == {"accepted": 1, "duplicates": 0, "late": 0}
    batch = [
        {"name": "screen_view", "device_id": "d2", "timestamp": now + k, "event_id": f"b{k}"}
        for k in range(3)
    ]
    many = await client.post("/api/v1/track", headers=SHOP, json=batch)
    assert many.status_code == 202
    again = await client.post("/api/v1/track", headers=SHOP, json=batch)
    assert again.json() == {"accepted": 3, "duplicates": 3, "late": 0}
    await settle(app, clock)
    metrics = (await client.get("/metrics")).text
    assert 'sessionary_analytics_events_total{outcome="joined",project="shop"} 4.0' in metrics
    assert 'sessionary_analytics_events_total{outcome="duplicate",project="shop"} 3.0' in metrics
    assert 'sessionary_analytics_sessions_total{event="started",project="shop"} 2.0' in metrics
    assert 'sessionary_analytics_sessions_total{event="ended",project="shop"} 2.0' in metrics
    assert 'sessionary_analytics_active_sessions{project="shop"} 0.0' in metrics
    listed = await client.get("/api/v1/projects/shop/sessions", headers=ADMIN)
    assert listed.status_code == 200
    rows = listed.json()["sessions"]
    assert sorted(r["device_id"] for r in rows) == ["d1", "d2"]
    d2 = next(r for r in rows if r["device_id"] == "d2")
    assert (d2["event_count"], d2["duration_ms"], d2["closed"]) == (3, 2, True)
    assert d2["started_at"] == now


async def test_bad_events_are_reported_by_index_and_the_good_ones_kept(
    client: httpx.AsyncClient, app: FastAPI, clock: ManualClock
) -> None:
    batch = [
        {"name": "screen_view", "device_id": "d1"},
        {"name": "session_start", "device_id": "d1"},
        {"name": "click", "device_id": "d1", "revenue": "lots"},
        "not an object",
        {"name": "click", "device_id": "d1"},
    ]
    answer = await client.post("/api/v1/track", headers=SHOP, json=batch)
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "invalid_events"
    assert body["accepted"] == 2
    assert [e["index"] for e in body["errors"]] == [1, 2, 3]
    assert "emitted by sessionary" in body["errors"][0]["reason"]
    await settle(app, clock)
    (row,) = (await client.get("/api/v1/projects/shop/sessions", headers=ADMIN)).json()["sessions"]
    assert row["event_count"] == 2
    single = await client.post("/api/v1/track", headers=SHOP, json={"name": "session_end"})
    assert single.status_code == 400
    assert single.json()["accepted"] == 0


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{nope", 400, "invalid_json"),
        (b"[" + b",".join([b'{"name":"x","device_id":"d"}'] * 1001) + b"]", 400, "batch_too_large"),
    ],
)
async def test_malformed_bodies(
    client: httpx.AsyncClient, content: bytes, status: int, code: str
) -> None:
    answer = await client.post("/api/v1/track", headers=SHOP, content=content)
    assert (answer.status_code, answer.json()["error"]) == (status, code)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": "Basic x"}]
)
async def test_track_needs_a_project_key(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    answer = await client.post("/api/v1/track", headers=headers, json={"name": "x"})
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"


async def test_anonymous_visitors_by_ip_and_user_agent(
    make_app: Callable[..., FastAPI], clock: ManualClock, tmp_path: Any
) -> None:
    app = make_app(
        analytics={
            "sink": f"sqlite:///{tmp_path / 'a.db'}",
            "jobs": False,
            "projects": {"shop": {"key": PROJECT_KEY}},
            "trusted_proxies": ["10.0.0.0/8"],
        }
    )
    async with app.router.lifespan_context(app):
        view = {"name": "screen_view"}
        async with (
            client_for(app, ip="10.0.0.1") as proxy,
            client_for(app, ip="192.0.2.50") as direct,
        ):
            for forwarded in ("198.51.100.1", "198.51.100.1", "198.51.100.2"):
                headers = {**SHOP, "X-Forwarded-For": forwarded, "User-Agent": "Firefox"}
                assert (
                    await proxy.post("/api/v1/track", headers=headers, json=view)
                ).status_code == 202
            # the body cannot claim another IP: the request's decides
            claimed = {**view, "ip": "198.51.100.1", "user_agent": "Firefox"}
            await direct.post(
                "/api/v1/track", headers={**SHOP, "User-Agent": "Firefox"}, json=claimed
            )
            # a server-side event with a profile only is not hashed into the server's device
            await direct.post("/api/v1/track", headers=SHOP, json={"name": "x", "profile_id": "u"})
            await settle(app, clock)
            rows = (await direct.get("/api/v1/projects/shop/sessions", headers=ADMIN)).json()
        counts = sorted(r["event_count"] for r in rows["sessions"])
        assert counts == [1, 1, 2]
        assert all(r["device_id"].startswith("anon-") for r in rows["sessions"])


async def test_sessions_and_stats_need_the_admin_key(
    client: httpx.AsyncClient, app: FastAPI, clock: ManualClock
) -> None:
    now = clock.now_ms()
    events = [
        {"name": "screen_view", "device_id": "a", "path": "/", "timestamp": now},
        {"name": "screen_view", "device_id": "a", "path": "/x", "timestamp": now + 60_000},
        {"name": "screen_view", "device_id": "b", "path": "/", "timestamp": now},
        {"name": "screen_view", "device_id": "c", "path": "/pricing", "timestamp": now + 1},
    ]
    await client.post("/api/v1/track", headers=SHOP, json=events)
    await settle(app, clock)
    for path in ("/api/v1/projects/shop/sessions", "/api/v1/projects/shop/stats"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=SHOP)).status_code == 401
        missing = await client.get(path.replace("shop", "nope"), headers=ADMIN)
        assert (missing.status_code, missing.json()["error"]) == (404, "project_not_found")
    stats = (await client.get("/api/v1/projects/shop/stats", headers=ADMIN)).json()
    assert stats["sessions"] == 3
    assert stats["bounce_rate"] == pytest.approx(2 / 3)
    assert stats["average_duration_ms"] == pytest.approx(20_000)
    assert stats["events_per_session"] == pytest.approx(4 / 3)
    assert stats["top_entry_paths"][0] == {"path": "/", "sessions": 2}
    window = {"from": now + 1, "to": now + 2}
    only_c = await client.get("/api/v1/projects/shop/sessions", headers=ADMIN, params=window)
    assert [r["device_id"] for r in only_c.json()["sessions"]] == ["c"]
    paged = await client.get("/api/v1/projects/shop/sessions", headers=ADMIN, params={"limit": 2})
    first = paged.json()
    assert len(first["sessions"]) == 2
    assert first["next"]
    rest = await client.get(
        "/api/v1/projects/shop/sessions",
        headers=ADMIN,
        params={"limit": 2, "after": first["next"]},
    )
    ids = [r["id"] for r in first["sessions"] + rest.json()["sessions"]]
    assert len(set(ids)) == 3
    bad = await client.get("/api/v1/projects/shop/sessions", headers=ADMIN, params={"limit": 0})
    assert bad.status_code == 422


async def test_stats_over_time_exit_paths_and_open_sessions(
    client: httpx.AsyncClient, app: FastAPI, clock: ManualClock
) -> None:
    now = clock.now_ms()
    assert now == 1_700_000_000_000  # 2023-11-14T22:13:20Z: the hours below are of that day
    hour = int(datetime(2023, 11, 14, 22, tzinfo=UTC).timestamp() * 1000)
    day = int(datetime(2023, 11, 14, tzinfo=UTC).timestamp() * 1000)
    events = [
        {"name": "screen_view", "device_id": "a", "path": "/", "timestamp": now},
        {"name": "screen_view", "device_id": "a", "path": "/x", "timestamp": now + 60_000},
        {"name": "screen_view", "device_id": "b", "path": "/", "timestamp": now},  # bounce
        {"name": "screen_view", "device_id": "c", "path": "/pricing", "timestamp": now + 1},
    ]
    await client.post("/api/v1/track", headers=SHOP, json=events)
    await settle(app, clock)
    # open in the store, not yet in the sink: counted by open_sessions only
    live = {"name": "screen_view", "device_id": "live", "path": "/"}
    assert (await client.post("/api/v1/track", headers=SHOP, json=live)).status_code == 202
    url = "/api/v1/projects/shop/stats"
    stats = (await client.get(url, headers=ADMIN)).json()
    assert stats["sessions"] == 3
    assert stats["top_exit_paths"] == [
        {"path": "/", "sessions": 1}, {"path": "/pricing", "sessions": 1},
        {"path": "/x", "sessions": 1},
    ]  # fmt: skip
    assert stats["interval"] == "day"  # the default
    assert stats["sessions_over_time"] == [{"start": day, "sessions": 3, "bounces": 2}]
    assert stats["open_sessions"] == 1
    window: dict[str, int | str] = {
        "from": hour - 3_600_000,
        "to": hour + 2 * 3_600_000,
        "interval": "hour",
    }
    hourly = (await client.get(url, headers=ADMIN, params=window)).json()
    assert hourly["interval"] == "hour"
    assert hourly["sessions_over_time"] == [
        {"start": hour - 3_600_000, "sessions": 0, "bounces": 0},
        {"start": hour, "sessions": 3, "bounces": 2},
        {"start": hour + 3_600_000, "sessions": 0, "bounces": 0},
    ]
    assert hourly["open_sessions"] == 1  # live: not bounded by from and to
    before = (await client.get(url, headers=ADMIN, params={"to": now})).json()
    assert (before["sessions"], before["sessions_over_time"], before["open_sessions"]) == (0, [], 1)


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"interval": "week"}, 422, "validation_error"),
        ({"interval": ""}, 422, "validation_error"),
        ({"from": 0, "to": 1002 * 3_600_000, "interval": "hour"}, 400, "too_many_buckets"),
        ({"interval": "hour"}, 400, "too_many_buckets"),
    ],
)
async def test_stats_refuses_a_bad_interval_and_too_many_buckets(
    client: httpx.AsyncClient, app: FastAPI, params: dict[str, Any], status: int, code: str
) -> None:
    # two sessions 1,000 hours apart: 1,001 hour buckets between them
    sink = sessionizer(app).sink
    assert sink is not None
    rows = [session("a", 0, project_id="shop"), session("b", 1000 * 3_600_000, project_id="shop")]
    await sink.write([entry(*rows)])
    answer = await client.get("/api/v1/projects/shop/stats", headers=ADMIN, params=params)
    assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
    if code == "too_many_buckets":
        assert "coarser interval or a shorter range" in answer.json()["message"]


async def test_totals_over_a_range_too_wide_for_its_buckets_still_answer(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    sink = sessionizer(app).sink
    assert sink is not None
    rows = [session("a", 0, project_id="shop"), session("b", 2 * 86_400_000, project_id="shop")]
    await sink.write([entry(*rows)])
    params = {"from": 0, "to": 2**63 - 1}  # all time, per day: the sessions' own three days
    stats = (await client.get("/api/v1/projects/shop/stats", headers=ADMIN, params=params)).json()
    assert stats["sessions"] == 2
    assert [bucket["sessions"] for bucket in stats["sessions_over_time"]] == [1, 0, 1]


async def test_a_store_that_is_down_answers_503(
    make_app: Callable[..., FastAPI], private_redis: RedisServer
) -> None:
    app = make_app(store=private_redis.url + "?socket_connect_timeout=0.5")
    async with app.router.lifespan_context(app), client_for(app) as client:
        private_redis.stop()
        answer = await client.post(
            "/api/v1/track", headers=SHOP, json={"name": "x", "device_id": "d"}
        )
        assert answer.status_code == 503
        assert answer.json()["error"] == "store_unavailable"
        assert "Retry-After" in answer.headers
        private_redis.start()
        again = await client.post(
            "/api/v1/track", headers=SHOP, json={"name": "x", "device_id": "d"}
        )
        assert again.status_code == 202
