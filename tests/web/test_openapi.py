"""The OpenAPI document says what a client gets, and /docs works without the internet."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from tests.web.conftest import ADMIN, client_for

ERROR = "#/components/schemas/ErrorBody"


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


async def test_docs_load_only_local_assets_that_answer(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()
    async with client_for(app) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert "http://" not in page.text
        assert "https://" not in page.text  # no CDN: blank on a machine without the internet
        assets = re.findall(r"""(?:href|src)=['"]([^'"]+)['"]""", page.text)
        assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
        for asset in assets:
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
            assert len(answer.content) > 1000, asset


async def test_every_operation_declares_its_errors_and_security(
    make_app: Callable[..., FastAPI],
) -> None:
    document = make_app().openapi()
    open_routes = {"/healthz", "/readyz", "/metrics"}
    for method, path, operation in operations(document):
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        if path in open_routes:
            continue
        assert errors, (method, path)
        for status, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR}, (method, path, status)
        if not path.startswith("/api/v1/playground"):  # anonymous, by its cookie
            assert operation.get("security"), (method, path)
    schemes = document["components"]["securitySchemes"]
    assert {"adminKey", "projectKey", "userKey"} <= schemes.keys()
    error = document["components"]["schemas"]["ErrorBody"]
    assert {"error", "message"} <= set(error["required"])
    assert {"retry_after", "details", "current_version", "max_sessions"} <= error[
        "properties"
    ].keys()


async def test_formats_streams_bodies_and_versions(make_app: Callable[..., FastAPI]) -> None:
    paths = make_app().openapi()["paths"]
    session = paths["/v1/namespaces/{namespace}/sessions/{session_id}"]
    session_id = next(p for p in session["get"]["parameters"] if p["name"] == "session_id")
    assert re.fullmatch(session_id["schema"]["pattern"].strip("^$"), "A" * 42 + "E")
    assert "ETag" in session["get"]["responses"]["200"]["headers"]
    assert any(p["name"] == "If-Match" for p in session["patch"]["parameters"])
    assert "412" in session["patch"]["responses"]
    events = paths["/api/v1/conversations/{conversation_id}/runs/{run_id}/events"]["get"]
    assert list(events["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {p["name"] for p in events["parameters"]} >= {"after", "Last-Event-ID"}
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    track = paths["/api/v1/track"]["post"]["requestBody"]["content"]["application/json"]
    one, batch = track["schema"]["oneOf"]
    assert one["type"] == "object"
    assert batch["type"] == "array"


async def test_a_method_not_served_lists_every_method_of_the_path(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()
    async with app.router.lifespan_context(app), client_for(app) as client:
        answer: httpx.Response = await client.put("/v1/namespaces/web/sessions/" + "A" * 43)
    assert answer.status_code == 405
    assert set(answer.headers["allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}


async def test_the_runs_routes_declare_the_session_cookie_where_they_accept_it(
    make_app: Callable[..., FastAPI],
) -> None:
    def security(app: FastAPI) -> list[dict[str, list[str]]]:
        paths = app.openapi()["paths"]
        return list(paths["/api/v1/conversations"]["post"]["security"])

    assert security(make_app()) == [{"userKey": []}]
    with_cookie = make_app(runs={"session_namespace": "web", "session_cookie": "sid"})
    assert security(with_cookie) == [{"userKey": []}, {"sessionCookie": []}]  # either
    scheme = with_cookie.openapi()["components"]["securitySchemes"]["sessionCookie"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "cookie", "sid")


async def test_numbers_are_taken_as_the_document_states_them(
    make_app: Callable[..., FastAPI],
) -> None:
    """An integer may come as 3.0 (JSON Schema's `integer`), and a ttl past the stated
    maximum is a 422 (it was a 500: past what a timedelta holds)."""
    app = make_app()
    async with app.router.lifespan_context(app), client_for(app) as client:
        created = await client.post(
            "/v1/namespaces/web/sessions", json={"absolute_ttl_ms": 60000.0}, headers=ADMIN
        )
        assert created.status_code == 201, created.text
        assert created.json()["absolute_ttl_ms"] == 60000
        for ttl in (2**80, 1.5, True, "60000"):
            refused = await client.post(
                f"/v1/namespaces/web/sessions/{created.json()['id']}/rotate",
                json={"idle_ttl_ms": ttl, "absolute_ttl_ms": 60000},
                headers=ADMIN,
            )
            assert refused.status_code == 422, (ttl, refused.text)


async def test_the_stats_route_documents_its_body_and_interval(
    make_app: Callable[..., FastAPI],
) -> None:
    document = make_app().openapi()
    stats = document["paths"]["/api/v1/projects/{project_id}/stats"]["get"]
    body = stats["responses"]["200"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert set(schema["required"]) == {
        "project_id", "sessions", "bounce_rate", "average_duration_ms", "events_per_session",
        "top_entry_paths", "top_exit_paths", "interval", "sessions_over_time", "open_sessions",
    }  # fmt: skip
    assert schema["properties"]["interval"]["enum"] == ["hour", "day"]
    interval = next(p for p in stats["parameters"] if p["name"] == "interval")
    assert (interval["schema"]["enum"], interval["schema"]["default"]) == (["hour", "day"], "day")
    assert "too_many_buckets" in stats["responses"]["400"]["description"]
