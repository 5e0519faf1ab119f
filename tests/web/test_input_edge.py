"""The service at its edge, on every backend: hostile input is a 4xx JSON error with a stable
code that changes nothing, what was accepted is always answered again, and the key is checked
before anything else of a request."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock
from sessionary.analytics import Sessionizer
from sessionary.analytics.events import BadEvent, TrackEvent
from sessionary.codec import INT64_MAX, MAX_DEPTH
from sessionary.counters import MAX_COUNT
from tests.servers import ClickHouseServer
from tests.web.conftest import ADMIN, PROJECT_KEY, client_for

WEB = "/v1/namespaces/web"
SHOP = {"Authorization": f"Bearer {PROJECT_KEY}"}
RUNNER_KEY = "runner-key-0123456789"
RUNNER = {"Authorization": f"Bearer {RUNNER_KEY}"}
CONVERSATIONS = "/api/v1/conversations"
PG_URL = os.environ.get("ANALYTICS_PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")
JSON = {"content-type": "application/json"}


def nested(depth: int) -> dict[str, Any]:
    """Session data nesting `depth` levels (the object itself is the first)."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"deep": value}


@pytest_asyncio.fixture
async def app(make_app: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    built = make_app(runs={"users": [{"key": RUNNER_KEY, "subject": "runner"}]})
    async with built.router.lifespan_context(built):
        yield built


async def created(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    made = await client.post(f"{WEB}/sessions", json=body, headers=ADMIN)
    assert made.status_code == 201, made.text
    return dict(made.json())


async def subject_sessions(client: httpx.AsyncClient, subject: str) -> list[dict[str, Any]]:
    listed = await client.get(f"{WEB}/subjects/{subject}/sessions", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    return list(listed.json()["sessions"])


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert (response.status_code, response.json()["error"]) == (status, code), response.text
    return dict(response.json())


# -- depth: what is stored is answered; what is too deep is refused before it is stored -------


async def test_data_at_the_stated_depth_answers_on_every_route(client: httpx.AsyncClient) -> None:
    """On main, data 254 deep was stored, then create, get and touch answered 500 and rotate
    rotated but answered 500: the client lost its new id."""
    data = nested(MAX_DEPTH)
    made = await created(client, subject="deep", data=data)
    sid = made["id"]
    assert made["data"] == data
    for response in (
        await client.get(f"{WEB}/sessions/{sid}", headers=ADMIN),
        await client.post(f"{WEB}/sessions/{sid}/touch", headers=ADMIN),
        await client.patch(f"{WEB}/sessions/{sid}", json={"data": data}, headers=ADMIN),
    ):
        assert (response.status_code, response.json()["data"]) == (200, data), response.text
    rotated = await client.post(f"{WEB}/sessions/{sid}/rotate", headers=ADMIN)
    assert rotated.status_code == 200, rotated.text
    new_id = rotated.json()["id"]
    assert [s["id"] for s in await subject_sessions(client, "deep")] == [new_id]
    again = await client.get(f"{WEB}/sessions/{new_id}", headers=ADMIN)
    assert (again.status_code, again.json()["data"]) == (200, data)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 254, 255, 900])
async def test_deeper_data_is_refused_and_nothing_is_stored_or_changed(
    client: httpx.AsyncClient, depth: int
) -> None:
    made = await created(client, subject="deep", data={"ok": 1})
    create = await client.post(
        f"{WEB}/sessions", json={"subject": "deep", "data": nested(depth)}, headers=ADMIN
    )
    assert refused(create, 422, "payload_too_deep")["max_depth"] == MAX_DEPTH
    patch = await client.patch(
        f"{WEB}/sessions/{made['id']}", json={"data": nested(depth)}, headers=ADMIN
    )
    refused(patch, 422, "payload_too_deep")
    [kept] = await subject_sessions(client, "deep")
    assert (kept["id"], kept["data"], kept["version"]) == (made["id"], {"ok": 1}, 1)
    conversation = (await client.post(CONVERSATIONS, headers=RUNNER)).json()["conversationId"]
    run = await client.post(
        f"{CONVERSATIONS}/{conversation}/runs", json={"input": nested(depth)}, headers=RUNNER
    )
    refused(run, 422, "payload_too_deep")
    none = await client.get(f"{CONVERSATIONS}/{conversation}/active-session", headers=RUNNER)
    assert none.status_code == 404


# -- lone surrogates ---------------------------------------------------------------------------

# JSON texts with a "\udfff" escape: the stdlib decoder FastAPI uses lets it through
SURROGATE_BODIES = [
    b'{"data": {"text": "\\udfff"}}',
    b'{"data": {"\\udfff": 1}}',
    b'{"metadata": {"k": "\\udfff"}}',
    b'{"metadata": {"\\udfff": "v"}}',
    b'{"subject": "user\\udfff"}',
]


@pytest.mark.parametrize("body", SURROGATE_BODIES, ids=lambda b: b.decode())
async def test_lone_surrogates_are_refused_on_create_and_patch(
    client: httpx.AsyncClient, body: bytes
) -> None:
    made = await created(client, subject="u", data={"ok": 1})
    create = await client.post(f"{WEB}/sessions", content=body, headers={**ADMIN, **JSON})
    refused(create, 422, "validation_error")
    patch = await client.patch(
        f"{WEB}/sessions/{made['id']}", content=body, headers={**ADMIN, **JSON}
    )
    refused(patch, 422, "validation_error")
    [kept] = await subject_sessions(client, "u")
    assert (kept["data"], kept["version"]) == ({"ok": 1}, 1)


async def test_lone_surrogates_are_refused_everywhere_else(client: httpx.AsyncClient) -> None:
    made = await created(client, subject="u")
    rotate = await client.post(
        f"{WEB}/sessions/{made['id']}/rotate",
        content=b'{"subject": "\\udfff"}',
        headers={**ADMIN, **JSON},
    )
    refused(rotate, 422, "validation_error")
    assert [s["id"] for s in await subject_sessions(client, "u")] == [made["id"]]
    conversation = (await client.post(CONVERSATIONS, headers=RUNNER)).json()["conversationId"]
    run = await client.post(
        f"{CONVERSATIONS}/{conversation}/runs",
        content=b'{"input": {"text": "\\udfff"}}',
        headers={**RUNNER, **JSON},
    )
    refused(run, 422, "validation_error")
    for field in ("device_id", "path", "referrer", "utm_source"):
        event = {"name": "view", "device_id": "d", field: "ok \udfff"}
        # the stdlib escapes the surrogate, as a client in another language could send it
        tracked = await client.post("/api/v1/track", content=json.dumps(event), headers=SHOP)
        assert tracked.status_code == 400, tracked.text
        assert tracked.json()["error"] in ("invalid_json", "invalid_events")
    playground = await client.get("/api/v1/playground/session")
    cookie = playground.headers["set-cookie"].split(";")[0]
    repo = await client.put(
        "/api/v1/playground/session/indexed-repo",
        content=b'{"github_url": "https://github.com/a/b", "name": "\\udfff"}',
        headers={"cookie": cookie, **JSON},
    )
    refused(repo, 422, "validation_error")


async def test_tracked_events_with_lone_surrogates_are_refused_by_the_parser(
    app: FastAPI,
) -> None:
    """/track decodes with orjson, which refuses them; events parsed in Python are checked
    too (a third party calling `TrackEvent.parse` on the stdlib's decoding)."""
    for field in ("device_id", "profile_id", "path", "url", "utm_campaign", "user_agent"):
        with pytest.raises(BadEvent, match=field):
            TrackEvent.parse({"name": "view", "device_id": "d", field: "x\udfff"})
    with pytest.raises(BadEvent, match="properties"):
        TrackEvent.parse({"name": "view", "device_id": "d", "properties": {"k": "\udfff"}})
    with pytest.raises(BadEvent, match="deeper"):
        TrackEvent.parse({"name": "view", "device_id": "d", "properties": nested(MAX_DEPTH + 1)})
    assert isinstance(app.state.features.analytics, Sessionizer)


# -- integers: 64 bits, counters exact, no bool and no string for an int ---------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 2**63}, "amount"),
        ({"amount": 2**64}, "amount"),
        ({"amount": -(2**63) - 1}, "amount"),
        ({"amount": MAX_COUNT + 1}, "amount"),
        ({"amount": False}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "3"}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": 1, "limit": 2**63}, "limit"),
        ({"amount": 1, "limit": MAX_COUNT + 1}, "limit"),
        ({"amount": 1, "limit": True}, "limit"),
        ({"amount": 1, "limit": "5"}, "limit"),
    ],
)
async def test_counter_numbers_out_of_range_or_not_integers_are_refused_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    made = await created(client)
    consumed = await client.post(
        f"{WEB}/sessions/{made['id']}/counters/c/consume", json=body, headers=ADMIN
    )
    problem = refused(consumed, 422, "validation_error")
    assert problem["message"].startswith(f"{field}:"), problem
    after = await client.get(f"{WEB}/sessions/{made['id']}", headers=ADMIN)
    assert after.json()["counters"] == {}


async def test_a_counter_is_exact_to_the_most_and_stops_there(client: httpx.AsyncClient) -> None:
    made = await created(client)
    url = f"{WEB}/sessions/{made['id']}/counters/c/consume"
    for amount, used in ((MAX_COUNT - 1, MAX_COUNT - 1), (1, MAX_COUNT)):
        charged = await client.post(url, json={"amount": amount}, headers=ADMIN)
        assert (charged.status_code, charged.json()["used"]) == (200, used), charged.text
    over = await client.post(url, json={"amount": MAX_COUNT}, headers=ADMIN)
    assert refused(over, 429, "quota_exceeded")["used"] == MAX_COUNT


async def test_times_and_paging_numbers_past_64_bits_are_refused(
    client: httpx.AsyncClient,
) -> None:
    for query in (
        f"from={2**63}",
        f"to={2**64}",
        "from=-1",
        f"limit={2**63}",
        "limit=true",
        "from=1e3",
    ):
        for route in ("sessions", "stats"):
            if route == "stats" and query.startswith("limit"):
                continue
            answer = await client.get(f"/api/v1/projects/shop/{route}?{query}", headers=ADMIN)
            problem = refused(answer, 422, "validation_error")
            assert problem["message"].split(":")[0] == query.split("=")[0], problem
    tracked = await client.post(
        "/api/v1/track",
        json=[
            {"name": "view", "device_id": "d", "timestamp": 2**63},
            {"name": "view", "device_id": "d", "timestamp": True},
            {"name": "view", "device_id": "d", "timestamp": INT64_MAX},
        ],
        headers=SHOP,
    )
    problem = refused(tracked, 422, "invalid_events")
    assert [e["index"] for e in problem["errors"]] == [0, 1]
    assert all("timestamp" in e["reason"] for e in problem["errors"])
    assert problem["accepted"] == 1  # a time in the future counts as now
    playground = await client.get("/api/v1/playground/session")
    cookie = {"cookie": playground.headers["set-cookie"].split(";")[0]}
    for file_count in (2**63, 2**64, -1, True, "3"):
        repo = await client.put(
            "/api/v1/playground/session/indexed-repo",
            json={"github_url": "https://github.com/a/b", "name": "n", "file_count": file_count},
            headers=cookie,
        )
        assert refused(repo, 422, "validation_error")["message"].startswith("file_count:")
    view = await client.get("/api/v1/playground/session", headers=cookie)
    assert view.json()["indexed_repo"] is None


# -- paging cursors ----------------------------------------------------------------------------

BAD_CURSORS = [
    "abc",
    "",
    "0",
    "%00",
    "W10",  # []
    "WzEsMl0",  # [1,2]
    "WyJhIiwiYiJd",  # ["a","b"]
    "Wzk5OTk5OTk5OTk5OTk5OTk5OTk5LCJzIl0",  # [99999999999999999999,"s"]
    "Wy05MjIzMzcyMDM2ODU0Nzc1ODA5LCJzIl0",  # [-9223372036854775809,"s"]
]


async def test_malformed_paging_cursors_are_a_400(client: httpx.AsyncClient) -> None:
    for cursor in BAD_CURSORS:
        page = await client.get(f"/api/v1/projects/shop/sessions?after={cursor}", headers=ADMIN)
        refused(page, 400, "invalid_cursor")


@pytest.mark.parametrize("kind", ["postgres", "clickhouse"])
async def test_huge_numbers_never_reach_a_sql_sink(
    make_app: Callable[..., FastAPI], clock: ManualClock, kind: str, request: pytest.FixtureRequest
) -> None:
    """The same answers with the PostgreSQL sink (bigint columns) and the ClickHouse sink
    (Int64, a month partition of the time) as with SQLite."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    if kind == "clickhouse":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        url = server.url.rsplit("/", 1)[0] + f"/{schema}"
    else:
        url = f"{PG_URL}?schema={schema}"
    app = make_app(
        analytics={
            "sink": url,
            "jobs": False,
            "projects": {"shop": {"key": PROJECT_KEY}},
        }
    )
    try:
        async with app.router.lifespan_context(app), client_for(app) as client:
            tracked = await client.post(
                "/api/v1/track",
                json=[
                    {"name": "v", "device_id": "d", "timestamp": INT64_MAX, "revenue": 10**12},
                    {"name": "v", "device_id": "d", "timestamp": 2**63},
                ],
                headers=SHOP,
            )
            assert refused(tracked, 422, "invalid_events")["accepted"] == 1
            clock.advance(10**9)
            sessionizer = app.state.features.analytics
            await sessionizer.reap()
            assert await sessionizer.drain() > 0
            for query in (f"from={2**63}", f"to={2**64}"):
                answer = await client.get(f"/api/v1/projects/shop/sessions?{query}", headers=ADMIN)
                refused(answer, 422, "validation_error")
            for cursor in BAD_CURSORS:
                answer = await client.get(
                    f"/api/v1/projects/shop/sessions?after={cursor}", headers=ADMIN
                )
                refused(answer, 400, "invalid_cursor")
            edges = await client.get(
                f"/api/v1/projects/shop/sessions?from=0&to={INT64_MAX}", headers=ADMIN
            )
            assert [s["event_count"] for s in edges.json()["sessions"]] == [1]
            stats = await client.get(
                f"/api/v1/projects/shop/stats?from=0&to={INT64_MAX}", headers=ADMIN
            )
            assert stats.json()["sessions"] == 1
    finally:
        if kind == "clickhouse":
            server.query(f"DROP DATABASE IF EXISTS {schema}")
        else:
            conn = await asyncpg.connect(PG_URL)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()


# -- the key first -----------------------------------------------------------------------------

MALFORMED = [b"{not json", b'{"amount": "x", "extra": 1}', b"[]"]


@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: b.decode())
async def test_the_admin_key_is_checked_before_the_body(
    client: httpx.AsyncClient, body: bytes
) -> None:
    made = await created(client)
    sid = made["id"]
    for method, path in (
        ("POST", f"{WEB}/sessions"),
        ("PATCH", f"{WEB}/sessions/{sid}"),
        ("POST", f"{WEB}/sessions/{sid}/rotate"),
        ("POST", f"{WEB}/sessions/{sid}/counters/c/consume"),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong-key"}):
            answer = await client.request(method, path, content=body, headers={**headers, **JSON})
            assert answer.headers["www-authenticate"] == "Bearer"
            refused(answer, 401, "unauthorized")
        scoped = {"Authorization": "Bearer web-only-key-0123456789"}
        elsewhere = path.replace("/namespaces/web/", "/namespaces/playground/")
        answer = await client.request(method, elsewhere, content=body, headers={**scoped, **JSON})
        refused(answer, 403, "forbidden")
    conversation = (await client.post(CONVERSATIONS, headers=RUNNER)).json()["conversationId"]
    started = await client.post(f"{CONVERSATIONS}/{conversation}/runs", content=body, headers=JSON)
    refused(started, 401, "unauthorized")
    for query in (f"from={2**64}", "limit=x", "after=abc"):
        answer = await client.get(f"/api/v1/projects/shop/sessions?{query}")
        refused(answer, 401, "unauthorized")
    stats = await client.get("/api/v1/projects/shop/stats?from=x")
    refused(stats, 401, "unauthorized")
    tracked = await client.post("/api/v1/track", content=body, headers=JSON)
    refused(tracked, 401, "unauthorized")
    kept = await client.get(f"{WEB}/sessions/{sid}", headers=ADMIN)
    assert kept.json() == made
