"""Traces of the web layer: the session middleware's load and save, one span each with what
happened to the session, and the service's HTTP routes, one server span each by route
template; never an id or a subject in an attribute, on every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Header
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sessionary import Store
from sessionary.web import CurrentSession, SessionMiddleware
from tests.tracing import assert_nothing_secret, named, recording
from tests.web.conftest import ADMIN, client_for

SUBJECT = "subject-4c1d2e"
SESSIONS = "/v1/namespaces/{namespace}/sessions"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def session_app(store: Store) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, store=store, namespace="web")

    @app.get("/read")
    async def read(session: CurrentSession) -> dict[str, Any]:
        return {"cart": session.get("cart")}

    @app.post("/add/{item}")
    async def add(item: str, session: CurrentSession) -> dict[str, Any]:
        session.setdefault("cart", []).append(item)
        return {}

    @app.post("/login")  # the subject in a header: FastAPI's own spans record the path
    async def login(session: CurrentSession, x_user: str = Header()) -> dict[str, Any]:
        await session.rotate(subject=x_user)
        return {}

    return app


async def test_the_middleware_traces_each_load_and_save(
    store: Store, spans: InMemorySpanExporter
) -> None:
    async with client_for(session_app(store)) as client:
        await client.post("/add/apple")  # no cookie: nothing to load; created at the save
        first = client.cookies["__Host-session"]
        created = spans.get_finished_spans()
        spans.clear()
        await client.post("/login", headers={"X-User": SUBJECT})  # loaded, rotated
        second = client.cookies["__Host-session"]
        logged_in = spans.get_finished_spans()
        spans.clear()
        await client.get("/read")  # loaded, saved unchanged
        read = spans.get_finished_spans()
        spans.clear()
        client.cookies.set("__Host-session", first)  # dead since the rotation
        await client.get("/read")
        stale = spans.get_finished_spans()

    assert not named(created, "sessionary.session.load")
    (save,) = named(created, "sessionary.session.save")
    assert attributes(save) == {
        "sessionary.namespace": "web",
        "sessionary.session.new": True,
        "sessionary.session.changed": True,
        "sessionary.session.rotated": False,
        "sessionary.session.response": "issue",
        "sessionary.outcome": "ok",
    }
    (create,) = named(created, "sessionary.create")  # the store's call, within the save
    assert create.parent is not None
    assert create.parent.span_id == save.context.span_id

    (load,) = named(logged_in, "sessionary.session.load")
    assert attributes(load) == {
        "sessionary.namespace": "web",
        "sessionary.session.new": False,
        "sessionary.outcome": "ok",
    }
    (save,) = named(logged_in, "sessionary.session.save")
    assert attributes(save)["sessionary.session.rotated"] is True
    assert attributes(save)["sessionary.session.response"] == "issue"
    assert attributes(save)["sessionary.session.new"] is False

    (save,) = named(read, "sessionary.session.save")
    assert attributes(save)["sessionary.session.changed"] is False
    assert attributes(save)["sessionary.session.response"] == "nothing"

    (load,) = named(stale, "sessionary.session.load")
    assert attributes(load)["sessionary.session.new"] is True
    (save,) = named(stale, "sessionary.session.save")
    assert attributes(save)["sessionary.session.response"] == "clear"

    everything = [*created, *logged_in, *read, *stale]
    assert_nothing_secret(everything, first, second, first[:8], second[:8], SUBJECT)


async def test_each_request_is_a_server_span_by_route_template(
    service: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    made = await service.post(
        "/v1/namespaces/web/sessions", json={"subject": SUBJECT}, headers=ADMIN
    )
    session_id = made.json()["id"]
    spans.clear()
    caller_trace = "0af7651916cd43dd8448eb211c80319c"
    got = await service.get(
        f"/v1/namespaces/web/sessions/{session_id}",
        headers={**ADMIN, "traceparent": f"00-{caller_trace}-b7ad6b7169203331-01"},
    )
    assert got.status_code == 200
    missing = await service.get(f"/v1/namespaces/web/sessions/{session_id}x", headers=ADMIN)
    assert missing.status_code in (400, 404)
    unmatched = await service.get(f"/nowhere/{session_id}")
    assert unmatched.status_code == 404
    made_up = await service.request("BREW", f"/v1/namespaces/web/sessions/{session_id}")
    assert made_up.status_code == 405

    found = spans.get_finished_spans()
    servers = [span for span in found if span.kind is SpanKind.SERVER]
    route = f"{SESSIONS}/{{session_id}}"
    assert [span.name for span in servers] == [
        f"GET {route}",
        f"GET {route}",
        "GET",
        f"_OTHER {route}",
    ]
    ok, refused, nowhere, brewing = servers
    assert attributes(ok) == {
        "http.request.method": "GET",
        "http.route": route,
        "http.response.status_code": 200,
    }
    assert ok.context.trace_id == int(caller_trace, 16)  # the caller's trace goes on
    (get,) = named(found, "sessionary.get")
    assert get.parent is not None
    assert get.parent.span_id == ok.context.span_id
    assert attributes(refused)["http.response.status_code"] == missing.status_code
    assert refused.status.status_code is StatusCode.UNSET  # a client's mistake is no failure
    assert attributes(nowhere) == {"http.request.method": "GET", "http.response.status_code": 404}
    assert attributes(brewing)["http.request.method"] == "_OTHER"
    assert_nothing_secret(found, session_id, session_id[:8], SUBJECT)


async def test_a_route_of_a_router_included_with_a_prefix_is_named_in_full(
    service: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await service.get("/api/v1/playground/session")).status_code == 200
    (server,) = [span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert server.name == "GET /api/v1/playground/session"
    assert attributes(server)["http.route"] == "/api/v1/playground/session"


async def test_the_service_exports_the_spans_left_as_it_stops(
    make_app: Callable[..., FastAPI],
) -> None:
    with recording(batched=True) as spans:
        app = make_app()
        async with app.router.lifespan_context(app), client_for(app) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert not spans.get_finished_spans()  # held by the batch
        assert [span.name for span in spans.get_finished_spans()] == ["GET /healthz"]
