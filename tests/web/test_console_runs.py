"""The console's runs page over HTTP on every backend: an owner's conversations and runs as the
runs API reads them, a run's page, its event stream (the API's, resumable), cancelling it
(CSRF-checked), a key not allowed on runs, and the feature switched off."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from html import unescape
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock
from tests.service import events_in
from tests.web.conftest import client_for
from tests.web.test_console import ORIGIN, WEB_ONLY_KEY, csrf_of, page, sign_in
from tests.web.test_runs import (
    ALICE,
    BASE,
    new_conversation,
    produce,
    runs_of,
    runs_settings,
    start,
)


@pytest_asyncio.fixture
async def app(make_app: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    built = make_app(runs=runs_settings())
    async with built.router.lifespan_context(built):
        yield built


async def api_run(client: httpx.AsyncClient, run: dict[str, Any]) -> dict[str, Any]:
    """The run as `GET /api/v1/conversations/{id}/runs/{run_id}` answers."""
    read = await client.get(f"{BASE}/{run['conversationId']}/runs/{run['runId']}", headers=ALICE)
    assert read.status_code == 200, read.text
    return dict(read.json())


def row_of(html: str, run_id: str) -> str:
    found = re.search(rf'<tr data-run="{run_id}">(.*?)</tr>', html, re.S)
    assert found is not None, f"no row for {run_id}"
    return found.group(1)


def status_in(html: str) -> str:
    found = re.search(r'<span class="status [a-z]+"[^>]*>([a-z]+)</span>', html)
    assert found is not None, "no status shown"
    return found.group(1)


def duration_in(html: str) -> int | None:
    found = re.search(r'data-duration-ms="(-?\d+)"', html)
    return None if found is None else int(found.group(1))


async def test_an_owners_runs_are_the_apis_newest_first(
    app: FastAPI, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    conversation = await new_conversation(client)
    finished = await start(client, conversation)
    clock.advance(1_000)
    async with runs_of(app).producer(finished["runId"]) as producer:
        clock.advance(2_500)
        await producer.emit("chunk", {"text": "hi"})
    clock.advance(1_000)
    waiting = await start(client, conversation)
    elsewhere = await new_conversation(client)

    await sign_in(client)
    html = (await page(client, "/console/runs?owner=alice")).text
    assert "2 conversations of <q>alice</q>" in html
    assert html.index(elsewhere) < html.index(conversation)  # newest first
    assert html.index(waiting["runId"]) < html.index(finished["runId"])
    done = await api_run(client, finished)
    row = row_of(html, finished["runId"])
    assert status_in(row) == done["status"] == "completed"
    assert duration_in(row) == done["finishedAt"] - done["startedAt"] == 2_500
    assert "2.5 s" in row
    assert f'data-ms="{done["startedAt"]}"' in row
    assert f'data-ms="{done["finishedAt"]}"' in row
    queued = await api_run(client, waiting)
    row = row_of(html, waiting["runId"])
    assert status_in(row) == queued["status"] == "queued"
    assert duration_in(row) is None
    assert "(active)" in row
    assert '<label for="owner">' in html
    assert '<label for="id">' in html
    assert '<div class="scroll">' in html

    by_id = (await page(client, f"/console/runs?id={conversation}")).text
    assert row_of(by_id, finished["runId"]) == row_of(html, finished["runId"])
    assert elsewhere not in by_id
    to_run = await page(client, f"/console/runs?id={waiting['runId']}", 303)
    assert to_run.headers["location"] == f"/console/runs/{waiting['runId']}"
    nobody = (await page(client, "/console/runs?owner=nobody")).text
    assert "0 conversations of <q>nobody</q>" in nobody
    for wrong, status in (("conv_" + "A" * 43, 404), ("run_" + "A" * 43, 404), ("nonsense", 400)):
        refused = await page(client, f"/console/runs?id={wrong}", status)
        assert 'class="error" role="alert"' in refused.text


async def test_the_run_page_shows_the_run_and_cancels_only_an_active_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    await produce(app, run["runId"], 2)
    waiting = await start(client, conversation)
    await sign_in(client)

    html = (await page(client, f"/console/runs/{run['runId']}")).text
    assert status_in(html) == (await api_run(client, run))["status"] == "completed"
    assert '"chunks": 2' in unescape(html)  # the result, indented
    assert "/cancel" not in html  # nothing to cancel
    assert '<ol class="events" aria-live="polite"' in html
    assert f'data-events="/console/runs/{run["runId"]}/events"' in html

    active = (await page(client, f"/console/runs/{waiting['runId']}")).text
    assert status_in(active) == "queued"
    assert f'action="/console/runs/{waiting["runId"]}/cancel"' in active
    assert "data-confirm=" in active
    assert csrf_of(active)

    missing = await page(client, "/console/runs/run_" + "A" * 43, 404)
    assert "No such run" in missing.text
    await page(client, "/console/runs/nonsense", 400)


async def test_the_console_streams_the_apis_events_and_resumes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    await produce(app, run["runId"], 3)
    url = f"/console/runs/{run['runId']}/events"
    anonymous = await client.get(url)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    await sign_in(client)

    streamed = await client.get(url)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = events_in(streamed.text)
    api = await client.get(f"{BASE}/{conversation}/runs/{run['runId']}/events", headers=ALICE)
    assert events == events_in(api.text)
    assert [e["event"] for e in events] == ["status", "status", "chunk", "chunk", "chunk", "end"]
    assert events[-1]["data"] == '{"status":"completed","result":{"chunks":3}}'
    for index, event in enumerate(events[:-1]):
        resumed = await client.get(url, headers={"Last-Event-ID": event["id"]})
        assert events_in(resumed.text) == events[index + 1 :]
    past = await client.get(url, headers={"Last-Event-ID": events[-1]["id"]})
    assert past.status_code == 204  # EventSource stops there
    bad = await client.get(url, headers={"Last-Event-ID": "garbage"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_cursor")
    unknown = await client.get("/console/runs/run_" + "A" * 43 + "/events")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "run_not_found")


async def test_cancelling_from_the_console_is_what_the_api_then_reads(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    token = await sign_in(client)
    async with runs_of(app).producer(run["runId"]) as producer:
        await producer.emit("chunk", "before")
        cancelled = await client.post(
            f"/console/runs/{run['runId']}/cancel", data={"csrf": token}, headers=ORIGIN
        )
        assert cancelled.status_code == 303
        assert cancelled.headers["location"].startswith(f"/console/runs/{run['runId']}?")
        await asyncio.wait_for(producer.until_cancelled(), 10)
    assert (await api_run(client, run))["status"] == "cancelled"
    after = (await page(client, cancelled.headers["location"])).text
    assert "Cancelled the run (now cancelled)." in after
    assert status_in(after) == "cancelled"
    assert "/cancel" not in after

    again = await client.post(
        f"/console/runs/{run['runId']}/cancel", data={"csrf": token}, headers=ORIGIN
    )
    assert again.status_code == 303
    said = (await page(client, again.headers["location"])).text
    assert "The run had already ended (cancelled): nothing was cancelled." in said
    unknown = await client.post(
        "/console/runs/run_" + "A" * 43 + "/cancel", data={"csrf": token}, headers=ORIGIN
    )
    assert (
        "No such run: nothing was cancelled."
        in (await page(client, unknown.headers["location"])).text
    )


async def test_a_cancel_without_the_token_or_from_elsewhere_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    token = await sign_in(client)
    url = f"/console/runs/{run['runId']}/cancel"
    for data, headers in (
        ({"reason": "no token"}, ORIGIN),
        ({"csrf": "not-the-token"}, ORIGIN),
        ({"csrf": token}, {"Origin": "https://evil.example"}),
        ({"csrf": token}, {}),
    ):
        refused = await client.post(url, data=data, headers=headers)
        assert (refused.status_code, refused.json()["error"]) == (403, "csrf_rejected")
    assert (await api_run(client, run))["status"] == "queued"


async def test_a_key_not_allowed_on_runs_sees_no_run(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    token = await sign_in(client, WEB_ONLY_KEY)
    for path in ("/console/runs?owner=alice", f"/console/runs/{run['runId']}"):
        refused = await page(client, path, 403)
        assert "not allowed on 'runs'" in unescape(refused.text)
        assert run["runId"] not in refused.text
    stream = await client.get(f"/console/runs/{run['runId']}/events")
    assert stream.status_code == 403
    cancel = await client.post(
        f"/console/runs/{run['runId']}/cancel", data={"csrf": token}, headers=ORIGIN
    )
    assert cancel.status_code == 403
    assert (await api_run(client, run))["status"] == "queued"


async def test_with_runs_switched_off_the_page_says_so(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(runs={"enabled": False})
    async with app.router.lifespan_context(app), client_for(app) as client:
        token = await sign_in(client)
        run_id = "run_" + "A" * 43
        for path in ("/console/runs?owner=alice", f"/console/runs/{run_id}"):
            html = (await page(client, path)).text
            assert "The runs feature is off" in html
            assert 'aria-current="page"' in html
        stream = await client.get(f"/console/runs/{run_id}/events")
        assert (stream.status_code, stream.json()["error"]) == (404, "runs_disabled")
        cancel = await client.post(
            f"/console/runs/{run_id}/cancel", data={"csrf": token}, headers=ORIGIN
        )
        assert "The runs feature is off" in cancel.text
