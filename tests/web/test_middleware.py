"""SessionMiddleware on every backend: store calls per request, cookies, fixation, rotation,
logout, merging writers, header transport, and what happens when the store is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sessionary import ManualClock, Store, connect, ids
from sessionary.backends import open_backend
from sessionary.http.metrics import Metrics
from sessionary.web import CurrentSession, SessionMiddleware
from tests.counting import CountingBackend
from tests.servers import RedisServer
from tests.web.conftest import client_for


def build_app(**options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, **options)

    @app.get("/noop")
    async def noop() -> dict[str, Any]:
        return {}

    @app.get("/read")
    async def read(session: CurrentSession) -> dict[str, Any]:
        return {"cart": session.get("cart"), "new": session.is_new, "subject": session.subject}

    @app.post("/add/{item}")
    async def add(item: str, session: CurrentSession) -> dict[str, Any]:
        session.setdefault("cart", []).append(item)  # a nested change
        return {"cart": session["cart"]}

    @app.post("/set/{key}/{value}")
    async def put(key: str, value: str, session: CurrentSession) -> dict[str, Any]:
        session[key] = value
        return {}

    @app.post("/login/{user}")
    async def login(user: str, session: CurrentSession) -> dict[str, Any]:
        await session.rotate(subject=user)
        return {"id": session.id}

    @app.post("/logout")
    async def logout(session: CurrentSession) -> dict[str, Any]:
        await session.delete()
        return {}

    return app


@pytest_asyncio.fixture
async def counted(
    store_url: str, clock: ManualClock
) -> AsyncIterator[tuple[Store, CountingBackend]]:
    backend = CountingBackend(await open_backend(store_url))
    store = Store(backend, clock=clock)  # type: ignore[arg-type]
    yield store, backend
    await store.close()


@pytest_asyncio.fixture
async def web(counted: tuple[Store, CountingBackend]) -> AsyncIterator[httpx.AsyncClient]:
    store, _ = counted
    async with client_for(build_app(store=store, namespace="web")) as client:
        yield client


def cookie_of(response: httpx.Response) -> str:
    return response.headers.get("set-cookie", "")


async def test_no_cookie_costs_no_store_call(
    web: httpx.AsyncClient, counted: tuple[Store, CountingBackend]
) -> None:
    _, backend = counted
    assert (await web.get("/noop")).status_code == 200
    reading = await web.get("/read")
    assert reading.json() == {"cart": None, "new": True, "subject": None}
    assert backend.calls == []
    assert "set-cookie" not in reading.headers


async def test_first_write_issues_the_cookie_then_reads_cost_one_round_trip(
    web: httpx.AsyncClient, counted: tuple[Store, CountingBackend]
) -> None:
    _, backend = counted
    first = await web.post("/add/book")
    assert backend.calls == ["create"]
    cookie = cookie_of(first)
    assert cookie.startswith("__Host-session=")
    for attribute in ("Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=43200"):
        assert attribute in cookie
    backend.calls.clear()
    reading = await web.get("/read")
    assert reading.json() == {"cart": ["book"], "new": False, "subject": None}
    assert backend.calls == ["touch"]
    assert "set-cookie" not in reading.headers
    assert reading.headers["vary"] == "Cookie"
    backend.calls.clear()
    await web.post("/add/pen")  # nested: appended to a list inside the data
    assert backend.calls == ["touch", "update"]
    backend.calls.clear()
    await web.post("/set/cart/x")
    await web.post("/set/cart/x")  # the same value again: nothing to write
    assert backend.calls == ["touch", "update", "touch"]
    assert (await web.get("/read")).json()["cart"] == "x"


async def test_forged_and_malformed_cookies_are_never_adopted(
    web: httpx.AsyncClient, counted: tuple[Store, CountingBackend]
) -> None:
    _, backend = counted
    forged = ids.new_id()
    web.cookies.set("__Host-session", forged)
    reading = await web.get("/read")
    assert reading.json()["new"] is True
    assert backend.calls == ["touch"]
    assert "Max-Age=0" in cookie_of(reading)  # the dead id is cleared
    web.cookies.set("__Host-session", forged)
    written = await web.post("/add/book")
    assert forged not in cookie_of(written)  # a fresh id, not the planted one
    web.cookies.clear()
    backend.calls.clear()
    web.cookies.set("__Host-session", "../../etc/passwd")
    assert (await web.get("/read")).json()["new"] is True
    assert backend.calls == []  # malformed: refused before any I/O


async def test_login_rotates_and_logout_clears(
    web: httpx.AsyncClient, counted: tuple[Store, CountingBackend]
) -> None:
    store, _ = counted
    await web.post("/add/book")
    before = web.cookies["__Host-session"]
    login = await web.post("/login/alice")
    after = web.cookies["__Host-session"]
    assert after != before
    assert login.json()["id"] == after
    namespace = store.namespace(
        "web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
    )
    assert await namespace.get(before) is None
    assert (await web.get("/read")).json() == {"cart": ["book"], "new": False, "subject": "alice"}
    assert [s.id for s in await namespace.list_subject("alice")] == [after]
    logout = await web.post("/logout")
    assert "Max-Age=0" in cookie_of(logout)
    assert await namespace.get(after) is None
    assert (await web.get("/read")).json()["new"] is True


async def test_login_on_a_fresh_visitor_stores_the_subject(web: httpx.AsyncClient) -> None:
    await web.post("/login/bob")
    assert (await web.get("/read")).json()["subject"] == "bob"


async def test_concurrent_writers_merge_key_by_key(
    web: httpx.AsyncClient, counted: tuple[Store, CountingBackend]
) -> None:
    await web.post("/set/start/1")
    results = await asyncio.gather(*(web.post(f"/set/k{n}/{n}") for n in range(8)))
    assert all(r.status_code == 200 for r in results)
    store, _ = counted
    namespace = store.namespace(
        "web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
    )
    session = await namespace.get(web.cookies["__Host-session"])
    assert session is not None
    assert session.data == {"start": "1", **{f"k{n}": str(n) for n in range(8)}}


async def test_concurrent_increments_on_one_session_are_acknowledged_or_refused_never_lost(
    counted: tuple[Store, CountingBackend],
) -> None:
    store, _ = counted
    app = build_app(store=store)
    all_loaded = asyncio.Barrier(8)

    @app.post("/increment")
    async def increment(session: CurrentSession) -> dict[str, Any]:
        session["n"] = session.get("n", 0) + 1
        await all_loaded.wait()
        return {"n": session["n"]}

    async with client_for(app) as client:
        await client.post("/set/start/1")
        results = await asyncio.gather(*(client.post("/increment") for _ in range(8)))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] + [409] * 7  # each read n absent; one write wins
        refused = next(r for r in results if r.status_code == 409)
        assert refused.json()["error"] == "session_conflict"
        namespace = store.namespace(
            "web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
        )
        session = await namespace.get(client.cookies["__Host-session"])
        assert session is not None
        assert session.data == {"start": "1", "n": 1}


async def test_a_nested_change_survives_a_merge_with_another_writer(
    counted: tuple[Store, CountingBackend],
) -> None:
    store, _ = counted
    app = build_app(store=store)
    both_loaded = asyncio.Barrier(2)

    @app.post("/nested-append")
    async def nested_append(session: CurrentSession) -> dict[str, Any]:
        session["cart"].append("pen")  # changes a list inside the data, in place
        await both_loaded.wait()
        return {}

    @app.post("/other-key")
    async def other_key(session: CurrentSession) -> dict[str, Any]:
        session["note"] = "hi"
        await both_loaded.wait()
        return {}

    async with client_for(app) as client:
        await client.post("/add/book")
        await asyncio.gather(client.post("/nested-append"), client.post("/other-key"))
        namespace = store.namespace(
            "web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
        )
        session = await namespace.get(client.cookies["__Host-session"])
        assert session is not None
        assert session.data == {"cart": ["book", "pen"], "note": "hi"}
        assert session.version == 3


async def test_request_session_works_as_with_starlettes_middleware(
    counted: tuple[Store, CountingBackend],
) -> None:
    store, _ = counted
    app = build_app(store=store)

    @app.post("/starlette-style")
    async def starlette_style(request: Request) -> dict[str, Any]:
        request.session["from"] = "request.session"
        return {"same": request.session is request.state.session}

    async with client_for(app) as client:
        assert (await client.post("/starlette-style")).json() == {"same": True}
        assert (await client.get("/read")).json()["new"] is False


async def test_idle_expiry_ends_the_session(web: httpx.AsyncClient, clock: ManualClock) -> None:
    await web.post("/add/book")
    clock.advance(timedelta(minutes=29))
    assert (await web.get("/read")).json()["new"] is False  # the touch slid it
    clock.advance(timedelta(minutes=30))
    assert (await web.get("/read")).json()["new"] is True


async def test_header_transport(counted: tuple[Store, CountingBackend]) -> None:
    store, _ = counted
    app = build_app(store=store, namespace="api", transport="header")
    async with client_for(app) as client:
        made = await client.post("/add/book")
        session_id = made.headers["x-session-id"]
        assert "set-cookie" not in made.headers
        reading = await client.get("/read", headers={"X-Session-Id": session_id})
        assert reading.json()["cart"] == ["book"]
        assert "vary" not in reading.headers
        out = await client.post("/logout", headers={"X-Session-Id": session_id})
        assert out.headers["x-session-id"] == ""


async def test_plain_http_for_development(counted: tuple[Store, CountingBackend]) -> None:
    store, _ = counted
    app = build_app(store=store, https_only=False, cookie_name="sid")
    async with client_for(app) as client:
        cookie = cookie_of(await client.post("/add/book"))
        assert cookie.startswith("sid=")
        assert "Secure" not in cookie


async def test_a_store_url_is_opened_on_first_use_and_closed_at_shutdown(
    tmp_path: Path,
) -> None:
    app = build_app(store=f"sqlite:///{tmp_path / 'lazy.db'}")
    async with app.router.lifespan_context(app), client_for(app) as client:
        await client.post("/add/book")
        assert (await client.get("/read")).json()["cart"] == ["book"]


# -- the store is down -------------------------------------------------------------------------


async def test_fail_closed_answers_503(private_redis: RedisServer) -> None:
    store = await connect(private_redis.url + "?socket_connect_timeout=0.5")
    try:
        async with client_for(build_app(store=store)) as client:
            await client.post("/add/book")
            private_redis.stop()
            down = await client.get("/read")
            assert down.status_code == 503
            assert down.json()["error"] == "store_unavailable"
            assert down.headers["retry-after"] == "30"
            private_redis.start()  # empty: the old session is gone, not an error
            back = await client.get("/read")
            assert (back.status_code, back.json()["new"]) == (200, True)
    finally:
        await store.close()


async def test_fail_open_goes_on_without_a_session_and_says_so_once(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = await connect(private_redis.url + "?socket_connect_timeout=0.5")
    namespace = store.namespace("web", idle_ttl=timedelta(minutes=5), on_unavailable="fail_open")
    metrics = Metrics()
    try:
        async with client_for(build_app(namespace=namespace, metrics=metrics)) as client:
            await client.post("/add/book")
            private_redis.stop()
            with caplog.at_level(logging.WARNING, logger="sessionary.middleware"):
                for _ in range(5):
                    reading = await client.get("/read")
                    assert (reading.status_code, reading.json()["new"]) == (200, True)
            warnings = [
                r
                for r in caplog.records
                if r.name == "sessionary.middleware" and "unavailable" in r.getMessage()
            ]
            assert len(warnings) == 1
            text = metrics.render().decode()
            assert 'sessionary_fail_open_total{where="middleware"} 5.0' in text
    finally:
        await store.close()


def test_websockets_read_the_session_and_close_1013_when_failing_closed(
    private_redis: RedisServer,
) -> None:
    app = build_app(store=private_redis.url + "?socket_connect_timeout=0.5", https_only=False)

    @app.websocket("/ws")
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"cart": websocket.scope["session"].get("cart")})
        await websocket.close()

    with TestClient(app) as client:  # the app, and the store it opens, run in its own loop
        client.post("/add/book")
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json() == {"cart": ["book"]}
        private_redis.stop()
        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws"):
            pass
        assert closed.value.code == 1013
