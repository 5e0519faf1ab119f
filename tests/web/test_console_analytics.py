"""The console's analytics page over HTTP, on every backend: its numbers are /stats' for the
same project, range and interval (compared field by field, chart data included), its
live open sessions /stats' `open_sessions`, and a bad range is a 400 page naming the fix."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock
from tests.analytics.test_sinks import entry, session
from tests.web.conftest import ADMIN, client_for
from tests.web.test_analytics import SHOP, settle
from tests.web.test_console import page, sign_in

DAY_MS = 86_400_000


@pytest_asyncio.fixture
async def app(make_app: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    built = make_app()
    async with built.router.lifespan_context(built):
        yield built


@pytest_asyncio.fixture
async def service(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


def utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def day_start(ms: int) -> int:
    return ms - ms % DAY_MS


def shown(text: str) -> dict[str, Any]:
    """What the page shows: the tiles' values and the chart's data."""
    tiles = {
        name: json.loads(value)
        for name, value in re.findall(r'data-stat="(\w+)"[^>]*data-value="([^"]*)"', text)
    }
    chart = re.search(r'<script type="application/json" id="sessions-data">(.*?)</script>', text)
    assert chart is not None
    tiles["sessions_over_time"] = json.loads(html.unescape(chart.group(1)))
    for key in ("top_entry_paths", "top_exit_paths"):
        table = re.search(rf'<table id="{key}">(.*?)</table>', text, re.DOTALL)
        rows = (
            []
            if table is None
            else re.findall(r"<code>(.*?)</code></td><td class=\"num\">(\d+)</td>", table.group(1))
        )
        tiles[key] = [{"path": html.unescape(p), "sessions": int(n)} for p, n in rows]
    return tiles


async def traffic(service: httpx.AsyncClient, app: FastAPI, clock: ManualClock) -> int:
    """Sessions over two days (some bounces, entry and exit paths), one left open; now."""
    now = clock.now_ms()
    events = [
        {"name": "screen_view", "device_id": "a", "path": "/", "timestamp": now - DAY_MS},
        {"name": "screen_view", "device_id": "a", "path": "/x", "timestamp": now - DAY_MS + 5},
        {"name": "screen_view", "device_id": "b", "path": "/", "timestamp": now},
        {"name": "screen_view", "device_id": "c", "path": "/p", "timestamp": now + 1},
        {"name": "screen_view", "device_id": "c", "path": "/p", "timestamp": now + 60_000},
        {"name": "screen_view", "device_id": "c", "path": "/x", "timestamp": now + 90_000},
    ]
    assert (await service.post("/api/v1/track", headers=SHOP, json=events)).status_code == 202
    await settle(app, clock)
    live = {"name": "screen_view", "device_id": "open", "path": "/"}
    assert (await service.post("/api/v1/track", headers=SHOP, json=live)).status_code == 202
    return now


@pytest.mark.parametrize("interval", ["day", "hour"])
async def test_every_number_is_the_stats_apis(
    service: httpx.AsyncClient, app: FastAPI, clock: ManualClock, interval: str
) -> None:
    now = await traffic(service, app, clock)
    await sign_in(service)
    first, last = utc_day(now - 2 * DAY_MS), utc_day(clock.now_ms())
    text = (
        await page(
            service,
            f"/console/analytics?project=shop&from={first}&to={last}&interval={interval}",
        )
    ).text
    start, end = day_start(now - 2 * DAY_MS), day_start(clock.now_ms()) + DAY_MS
    params: dict[str, Any] = {"from": start, "to": end, "interval": interval}
    api = (await service.get("/api/v1/projects/shop/stats", headers=ADMIN, params=params)).json()
    assert api["sessions"] == 3
    assert api["open_sessions"] == 1
    got = shown(text)
    for key in ("sessions", "bounce_rate", "average_duration_ms", "events_per_session"):
        assert got[key] == api[key], key
    assert got["open_sessions"] == api["open_sessions"]
    assert got["sessions_over_time"] == api["sessions_over_time"]
    assert got["top_entry_paths"] == api["top_entry_paths"]
    assert got["top_exit_paths"] == api["top_exit_paths"]
    live = await service.get("/console/analytics/open?project=shop")
    assert live.json() == {"open_sessions": api["open_sessions"]}


async def test_the_default_range_is_the_last_week(
    service: httpx.AsyncClient, app: FastAPI, clock: ManualClock
) -> None:
    await traffic(service, app, clock)
    await sign_in(service)
    text = (await page(service, "/console/analytics")).text
    today = clock.now_ms()
    assert f'value="{utc_day(today)}"' in text
    assert f'value="{utc_day(today - 6 * DAY_MS)}"' in text
    got = shown(text)
    assert len(got["sessions_over_time"]) == 7
    assert sum(bucket["sessions"] for bucket in got["sessions_over_time"]) == got["sessions"] == 3


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=yesterday", "is not a date (YYYY-MM-DD)"),
        ("from=2023-11-14&to=2023-11-01", "ends before it starts"),
        ("interval=week", "the interval is one of"),
        ("project=nope", "no project"),
        ("from=2020-01-01&to=2023-11-14&interval=hour", "coarser interval or a shorter range"),
    ],
)
async def test_a_bad_range_is_a_400_page_naming_the_fix(
    service: httpx.AsyncClient, app: FastAPI, query: str, message: str
) -> None:
    # sessions 1,000 hours apart: more hours between them than a chart is drawn with
    sink = app.state.features.analytics.sink
    start = int(datetime(2021, 1, 1, tzinfo=UTC).timestamp() * 1000)
    rows = [session("a", start, project_id="shop")]
    await sink.write([entry(*rows, session("b", start + 1000 * 3_600_000, project_id="shop"))])
    await sign_in(service)
    answer = await page(service, f"/console/analytics?{query}", 400)
    assert message in html.unescape(answer.text)


async def test_a_key_not_allowed_on_analytics_sees_no_analytics(
    service: httpx.AsyncClient,
) -> None:
    await sign_in(service, "web-only-key-0123456789")
    await page(service, "/console/analytics", 403)
    denied = await service.get("/console/analytics/open?project=shop")
    assert denied.status_code == 403
