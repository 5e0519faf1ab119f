"""The runs API over HTTP, on every backend: auth and ownership on every route, the
active-session and task-status bodies, starting under each policy, the SSE stream (replay,
resume, live, heartbeats, a client going away), cancel and stop, the store going down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from sessionary import ManualClock, connect
from sessionary.http.handlers import install_error_handlers
from sessionary.logs import Cursor, LogEvent
from sessionary.runs import Runs, RunsSettings
from sessionary.runs.http import ApiKeyAuthenticator, runs_router
from sessionary.web.settings import SettingsError
from tests.servers import RedisServer, free_port
from tests.service import events_in, parse_sse, serving
from tests.web.conftest import client_for

ALICE_KEY = "alice-key-0123456789"
BOB_KEY = "bob-key-0123456789ab"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}
USERS = [{"key": ALICE_KEY, "subject": "alice"}, {"key": BOB_KEY, "subject": "bob"}]
BASE = "/api/v1/conversations"


def runs_settings(**overrides: Any) -> dict[str, Any]:
    return {"users": USERS, **overrides}


@pytest_asyncio.fixture
async def app(make_app: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    built = make_app(runs=runs_settings())
    async with built.router.lifespan_context(built):
        yield built


def runs_of(app: FastAPI) -> Runs:
    runs = app.state.features.runs
    assert isinstance(runs, Runs)
    return runs


async def new_conversation(client: httpx.AsyncClient, headers: dict[str, str] = ALICE) -> str:
    made = await client.post(BASE, headers=headers)
    assert made.status_code == 201, made.text
    return str(made.json()["conversationId"])


async def start(client: httpx.AsyncClient, conversation: str, **body: Any) -> dict[str, Any]:
    started = await client.post(f"{BASE}/{conversation}/runs", headers=ALICE, json=body or None)
    assert started.status_code == 201, started.text
    return dict(started.json())


# -- auth and ownership ---------------------------------------------------------------------


async def test_every_route_checks_credentials_and_ownership(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    other = await new_conversation(client)
    routes = [
        ("GET", f"{BASE}/{conversation}/active-session"),
        ("GET", f"{BASE}/{conversation}/task-status"),
        ("POST", f"{BASE}/{conversation}/runs"),
        ("GET", f"{BASE}/{conversation}/runs/{run['runId']}"),
        ("GET", f"{BASE}/{conversation}/runs/{run['runId']}/events"),
        ("POST", f"{BASE}/{conversation}/runs/{run['runId']}/cancel"),
        ("POST", f"{BASE}/{conversation}/stop"),
    ]
    for method, url in routes:
        anonymous = await client.request(method, url)
        assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized"), url
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = await client.request(method, url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, url
        foreign = await client.request(method, url, headers=BOB)
        assert (foreign.status_code, foreign.json()["error"]) == (403, "forbidden"), url
        unknown = await client.request(
            method, url.replace(conversation, "conv_" + "A" * 43), headers=ALICE
        )
        assert (unknown.status_code, unknown.json()["error"]) == (
            404,
            "conversation_not_found",
        ), url
    # a run is only found under its own conversation
    elsewhere = await client.get(f"{BASE}/{other}/runs/{run['runId']}", headers=ALICE)
    assert (elsewhere.status_code, elsewhere.json()["error"]) == (404, "run_not_found")
    malformed = await client.get(f"{BASE}/{conversation}/runs/not-a-run", headers=ALICE)
    assert (malformed.status_code, malformed.json()["error"]) == (400, "invalid_session_id")
    assert malformed.json()["message"].startswith("a run id ")  # named for what it is
    bad = await client.get(f"{BASE}/not-a-conversation/active-session", headers=ALICE)
    assert (bad.status_code, bad.json()["message"]) == (
        400,
        "a conversation id has 48 characters, not 18",
    )
    # nothing above touched the run
    assert (await runs_of(app).get(run["runId"])).status == "queued"


async def test_another_users_stop_is_403_and_the_run_unharmed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    async with runs_of(app).producer(run["runId"]) as producer:
        await producer.emit("chunk", "before")
        stopped = await client.post(f"{BASE}/{conversation}/stop", headers=BOB)
        assert (stopped.status_code, stopped.json()["error"]) == (403, "forbidden")
        cancelled = await client.post(
            f"{BASE}/{conversation}/runs/{run['runId']}/cancel", headers=BOB
        )
        assert cancelled.status_code == 403
        assert not producer.cancelled
        await producer.emit("chunk", "after")
    final = await runs_of(app).get(run["runId"])
    assert final.status == "completed"


# -- active-session and task-status ---------------------------------------------------------


async def test_no_run_gives_the_404_bodies(client: httpx.AsyncClient) -> None:
    conversation = await new_conversation(client)
    active = await client.get(f"{BASE}/{conversation}/active-session", headers=ALICE)
    assert active.status_code == 404
    assert active.json() == {  # the original product's body, and the error body's message
        "error": "No active session found",
        "message": "No active session found",
        "code": "no_active_session",
        "conversationId": conversation,
    }
    status = await client.get(f"{BASE}/{conversation}/task-status", headers=ALICE)
    assert status.status_code == 404
    assert status.json() == {
        "error": "No background task found",
        "message": "No background task found",
        "code": "no_background_task",
        "conversationId": conversation,
    }


async def test_a_running_run_is_active_with_real_times(
    app: FastAPI, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    conversation = await new_conversation(client)
    created_at = clock.now_ms()
    run = await start(client, conversation)
    assert (run["status"], run["createdAt"], run["startedAt"]) == ("queued", created_at, None)
    queued = (await client.get(f"{BASE}/{conversation}/active-session", headers=ALICE)).json()
    assert (queued["status"], queued["startedAt"]) == ("active", created_at)

    clock.advance(1_500)
    async with runs_of(app).producer(run["runId"]) as producer:
        started_at = clock.now_ms()
        clock.advance(250)
        last = await producer.emit("chunk", {"text": "hi"})
        clock.advance(5_000)  # quiet since: lastActivity stays at the chunk
        active = await client.get(f"{BASE}/{conversation}/active-session", headers=ALICE)
        assert active.status_code == 200
        assert active.json() == {
            "sessionId": run["runId"],
            "status": "active",
            "cursor": str(last),
            "conversationId": conversation,
            "startedAt": started_at,
            "lastActivity": started_at + 250,
        }
        body = active.json()
        assert body["startedAt"] <= body["lastActivity"] <= clock.now_ms()
        status = await client.get(f"{BASE}/{conversation}/task-status", headers=ALICE)
        assert status.json() == {
            "isActive": True,
            "sessionId": run["runId"],
            "estimatedCompletion": started_at + 30_000,  # no history yet: the default guess
            "conversationId": conversation,
            "status": "running",
        }
        clock.advance(1_000)
    finished_at = clock.now_ms()
    done = (await client.get(f"{BASE}/{conversation}/active-session", headers=ALICE)).json()
    assert (done["status"], done["lastActivity"]) == ("completed", finished_at)
    status = (await client.get(f"{BASE}/{conversation}/task-status", headers=ALICE)).json()
    assert (status["isActive"], status["status"], status["estimatedCompletion"]) == (
        False,
        "completed",
        finished_at,
    )
    # the next run's estimate comes from this one's duration
    second = await start(client, conversation)
    async with runs_of(app).producer(second["runId"]):
        begun = clock.now_ms()
        estimate = (await client.get(f"{BASE}/{conversation}/task-status", headers=ALICE)).json()
    assert estimate["estimatedCompletion"] == begun + (finished_at - started_at)


async def test_the_latest_run_is_by_recency_not_by_string(
    app: FastAPI, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    conversation = await new_conversation(client)
    started = []
    for _ in range(10):
        clock.advance(1_000)
        run = await start(client, conversation)
        started.append(run["runId"])
        async with runs_of(app).producer(run["runId"]):
            pass
    active = (await client.get(f"{BASE}/{conversation}/active-session", headers=ALICE)).json()
    assert active["sessionId"] == started[-1]
    assert active["status"] == "completed"


# -- starting, cancelling, stopping ---------------------------------------------------------


async def test_start_follows_the_multitask_policy(app: FastAPI, client: httpx.AsyncClient) -> None:
    conversation = await new_conversation(client)
    first = await start(client, conversation)
    refused = await client.post(f"{BASE}/{conversation}/runs", headers=ALICE, json={})
    assert refused.status_code == 409
    assert refused.json() | {"message": ""} == {
        "error": "run_active",
        "message": "",
        "activeRunId": first["runId"],
    }
    queued = await start(client, conversation, multitask="enqueue")
    assert queued["status"] == "queued"
    interrupting = await start(client, conversation, multitask="interrupt", input={"q": 1})
    assert interrupting["status"] == "queued"
    assert (await runs_of(app).get(first["runId"])).status == "cancelled"
    read = await client.get(f"{BASE}/{conversation}/runs/{interrupting['runId']}", headers=ALICE)
    assert read.json()["runId"] == interrupting["runId"]
    for bad in ({"multitask": "shove"}, {"multitask": "reject", "extra": 1}, [1, 2]):
        wrong = await client.post(f"{BASE}/{conversation}/runs", headers=ALICE, json=bad)
        assert (wrong.status_code, wrong.json()["error"]) == (422, "validation_error"), bad


async def test_cancel_and_stop(app: FastAPI, client: httpx.AsyncClient) -> None:
    conversation = await new_conversation(client)
    nothing = await client.post(f"{BASE}/{conversation}/stop", headers=ALICE)
    assert (nothing.status_code, nothing.json()["error"]) == (404, "run_not_found")

    run = await start(client, conversation)
    cancel_url = f"{BASE}/{conversation}/runs/{run['runId']}/cancel"
    cancelled = await client.post(cancel_url, headers=ALICE)
    assert cancelled.status_code == 202
    assert cancelled.json() == {"runId": run["runId"], "status": "cancelled"}
    again = await client.post(cancel_url, headers=ALICE)
    assert again.status_code == 409
    assert again.json() | {"message": ""} == {
        "error": "run_finished",
        "message": "",
        "runId": run["runId"],
        "status": "cancelled",
    }

    second = await start(client, conversation)
    async with runs_of(app).producer(second["runId"]) as producer:
        stopped = await client.post(f"{BASE}/{conversation}/stop", headers=ALICE)
        assert stopped.status_code == 202
        assert stopped.json() == {"runId": second["runId"], "status": "cancelled"}
        await asyncio.wait_for(producer.until_cancelled(), 10)
    stream = await client.get(f"{BASE}/{conversation}/runs/{second['runId']}/events", headers=ALICE)
    ends = [e for e in events_in(stream.text) if e["event"] == "end"]
    assert len(ends) == 1
    assert '"cancelled"' in ends[0]["data"]


# -- the event stream -----------------------------------------------------------------------


async def produce(app: FastAPI, run_id: str, chunks: int) -> None:
    async with runs_of(app).producer(run_id) as producer:
        for n in range(chunks):
            await producer.emit("chunk", {"n": n})
        await producer.complete({"chunks": chunks})


async def test_the_stream_replays_resumes_and_closes_after_end(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    await produce(app, run["runId"], 5)
    url = f"{BASE}/{conversation}/runs/{run['runId']}/events"

    whole = await client.get(url, headers=ALICE)
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("text/event-stream")
    assert whole.headers["cache-control"] == "no-store"
    assert parse_sse(whole.text)[0]["retry"] == "3000"
    events = events_in(whole.text)
    assert [e["event"] for e in events] == ["status", "status", *["chunk"] * 5, "end"]
    assert [e["data"] for e in events[2:7]] == [f'{{"n":{n}}}' for n in range(5)]
    assert events[-1]["data"] == '{"status":"completed","result":{"chunks":5}}'
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=lambda c: int(c.split("-")[0]))
    assert len(set(ids)) == len(ids)

    for index, event in enumerate(events):
        by_header = await client.get(url, headers={**ALICE, "Last-Event-ID": event["id"]})
        assert events_in(by_header.text) == events[index + 1 :]
        by_query = await client.get(url, headers=ALICE, params={"after": event["id"]})
        assert events_in(by_query.text) == events[index + 1 :]


async def test_a_bad_cursor_is_a_400_and_replays_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    other = await start(client, conversation, multitask="enqueue")
    await produce(app, run["runId"], 2)
    foreign_cursor = (await runs_of(app).get(other["runId"])).cursor
    url = f"{BASE}/{conversation}/runs/{run['runId']}/events"
    last = (await runs_of(app).runs.read(run["runId"])).last
    assert last is not None
    assert foreign_cursor is not None
    future = str(Cursor.of(runs_of(app).runs.name, run["runId"], last.seq + 5))
    for cursor in ("garbage", "12", "1-00000000", str(foreign_cursor), future):
        refused = await client.get(url, headers={**ALICE, "Last-Event-ID": cursor})
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_cursor"), cursor
        assert "text/event-stream" not in refused.headers["content-type"]


async def test_a_cursor_trimmed_away_gets_a_reset_first(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(runs=runs_settings(log_max_length=5))
    async with app.router.lifespan_context(app), client_for(app) as client:
        conversation = await new_conversation(client)
        run = await start(client, conversation)
        url = f"{BASE}/{conversation}/runs/{run['runId']}/events"
        early = run["cursor"]  # of its first event, "queued"
        await produce(app, run["runId"], 20)
        resumed = events_in((await client.get(url, headers={**ALICE, "Last-Event-ID": early})).text)
        kept = (await runs_of(app).runs.read(run["runId"])).events
        assert len(kept) == 5
        assert resumed[0]["event"] == "reset"
        assert "id" not in resumed[0]  # a reset is not a position to resume from
        assert resumed[0]["data"] == (
            f'{{"status":"completed","first":"{kept[0].cursor}","last":"{kept[-1].cursor}"}}'
        )
        assert [e["id"] for e in resumed[1:]] == [str(e.cursor) for e in kept]


async def test_a_live_stream_gets_every_event_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    conversation = await new_conversation(client)
    run = await start(client, conversation)
    url = f"{BASE}/{conversation}/runs/{run['runId']}/events"
    readers = [asyncio.create_task(client.get(url, headers=ALICE)) for _ in range(3)]
    await produce(app, run["runId"], 50)
    bodies = await asyncio.wait_for(asyncio.gather(*readers), 30)
    streams = [events_in(body.text) for body in bodies]
    assert streams[0] == streams[1] == streams[2]
    assert [e["data"] for e in streams[0] if e["event"] == "chunk"] == [
        f'{{"n":{n}}}' for n in range(50)
    ]


# -- over a real connection: heartbeats, a client going away ---------------------------------


def on_a_port(app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning"
    )


async def test_heartbeats_and_a_client_going_away(store_url: str, clock: ManualClock) -> None:
    store = await connect(store_url, clock=clock)
    runs = Runs(store, RunsSettings(users=USERS))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(
        runs_router(lambda: runs, ApiKeyAuthenticator(runs.settings.users), heartbeat_s=0.05)
    )
    try:
        conversation = await runs.create_conversation("alice")
        run = await runs.start(conversation.id, "alice")
        url = f"{BASE}/{conversation.id}/runs/{run.id}/events"
        async with serving(on_a_port(app)) as base, runs.producer(run.id) as producer:
            async with (
                httpx.AsyncClient(base_url=base) as http,
                http.stream("GET", url, headers=ALICE) as response,
            ):
                assert response.status_code == 200
                await producer.emit("chunk", "one")
                seen = ""
                async with asyncio.timeout(10):
                    async for text in response.aiter_text():
                        seen += text
                        if "one" in seen and seen.count(": ping") >= 2:
                            break  # a heartbeat comment between events, twice
            # the client went away: the run goes on
            await producer.emit("chunk", "two")
            assert not producer.cancelled
        final = await runs.get(run.id)
        assert final.status == "completed"
        rest = [
            e.data
            async for e in runs.events(run.id)
            if isinstance(e, LogEvent) and e.type == "chunk"
        ]
        assert rest == ["one", "two"]
    finally:
        await store.close()


# -- the in-process worker and a store that is down ------------------------------------------


async def test_runs_started_over_http_are_produced_by_the_configured_handler(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(runs=runs_settings(handler="sessionary.runs.demo:echo"))
    async with app.router.lifespan_context(app), client_for(app) as client:
        conversation = await new_conversation(client)
        run = await start(client, conversation, input={"text": "to be or not", "delay_ms": 0})
        stream = await client.get(
            f"{BASE}/{conversation}/runs/{run['runId']}/events", headers=ALICE
        )
        events = events_in(stream.text)
        assert [e["data"] for e in events if e["event"] == "chunk"] == [
            f'{{"text":"{w}"}}' for w in ("to", "be", "or", "not")
        ]
        assert events[-1]["data"] == '{"status":"completed","result":{"words":4}}'

        # a run still going when the service stops ends as an error, told to its readers
        long = await start(client, conversation, input={"text": "x " * 100, "delay_ms": 60_000})
        worker = app.state.features.worker
        async with asyncio.timeout(10):
            async for event in runs_of(app).events(long["runId"]):
                if isinstance(event, LogEvent) and event.type == "chunk":
                    break  # it is running
        await worker.close()
        stopped = await runs_of(app).get(long["runId"])
        assert (stopped.status, stopped.error) == ("error", "the worker was stopped mid-run")


def test_a_handler_that_does_not_import_is_a_settings_error(
    make_app: Callable[..., FastAPI],
) -> None:
    with pytest.raises(SettingsError, match=r"runs\.handler"):
        make_app(runs=runs_settings(handler="sessionary.nowhere:handler"))
    with pytest.raises(SettingsError, match="no function"):
        make_app(runs=runs_settings(handler="sessionary.runs.demo:nothing"))


async def test_a_store_that_is_down_is_a_503_with_retry_after(
    private_redis: RedisServer, clock: ManualClock
) -> None:
    from sessionary.web.app import create_app
    from sessionary.web.settings import Settings

    app = create_app(
        Settings(
            store=private_redis.url + "?socket_connect_timeout=0.5",
            reaper={"enabled": False},
            runs=runs_settings(),
        ),
        clock=clock,
    )
    async with app.router.lifespan_context(app), client_for(app) as client:
        conversation = await new_conversation(client)
        private_redis.stop()
        for method, url in (
            ("POST", BASE),
            ("GET", f"{BASE}/{conversation}/active-session"),
            ("GET", f"{BASE}/{conversation}/task-status"),
            ("POST", f"{BASE}/{conversation}/runs"),
        ):
            down = await client.request(method, url, headers=ALICE)
            assert down.status_code == 503, url
            assert down.headers["retry-after"] == "30"
            assert down.json()["error"] == "store_unavailable"
        private_redis.start()
        back = await client.get(f"{BASE}/{conversation}/task-status", headers=ALICE)
        assert back.status_code == 404  # the store is empty again: a fresh server
