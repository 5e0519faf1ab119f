"""The admin API on every backend: auth, the session operations, and JSON errors."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from sessionary import ManualClock, ids
from tests.web.conftest import ADMIN

WEB = "/v1/namespaces/web"


async def create(service: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await service.post(f"{WEB}/sessions", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_no_key_wrong_key_and_a_key_of_another_namespace(
    service: httpx.AsyncClient,
) -> None:
    missing = await service.post(f"{WEB}/sessions", json={})
    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await service.post(f"{WEB}/sessions", json={}, headers={"Authorization": "Bearer no"})
    assert (wrong.status_code, wrong.json()["error"]) == (401, "unauthorized")
    basic = await service.post(f"{WEB}/sessions", json={}, headers={"Authorization": "Basic eA=="})
    assert basic.status_code == 401
    scoped = {"Authorization": "Bearer web-only-key-0123456789"}
    assert (await service.post(f"{WEB}/sessions", json={}, headers=scoped)).status_code == 201
    elsewhere = await service.post("/v1/namespaces/playground/sessions", json={}, headers=scoped)
    assert (elsewhere.status_code, elsewhere.json()["error"]) == (403, "forbidden")


async def test_the_session_lifecycle(service: httpx.AsyncClient, clock: ManualClock) -> None:
    made = await create(service, subject="u1", data={"cart": [1, {"n": 2}]}, metadata={"ua": "x"})
    sid = made["id"]
    assert made["version"] == 1
    assert made["created_at"] == clock.now_ms()
    assert made["expires_at"] == clock.now_ms() + 30 * 60 * 1000
    read = await service.get(f"{WEB}/sessions/{sid}", headers=ADMIN)
    assert read.status_code == 200
    assert read.json() == made
    assert read.headers["etag"] == '"1"'
    clock.advance(60_000)
    touched = await service.post(f"{WEB}/sessions/{sid}/touch", headers=ADMIN)
    assert touched.json()["last_seen_at"] == clock.now_ms()
    patched = await service.patch(
        f"{WEB}/sessions/{sid}", json={"data": {"cart": []}}, headers={**ADMIN, "If-Match": '"1"'}
    )
    assert (patched.status_code, patched.json()["version"]) == (200, 2)
    assert patched.json()["metadata"] == {"ua": "x"}  # left out: kept
    stale = await service.patch(
        f"{WEB}/sessions/{sid}", json={"data": {"lost": 1}}, headers={**ADMIN, "If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert stale.json() | {"message": ""} == {
        "error": "version_conflict",
        "message": "",
        "expected_version": 1,
        "current_version": 2,
    }
    cleared = await service.patch(f"{WEB}/sessions/{sid}", json={"subject": None}, headers=ADMIN)
    assert cleared.json()["subject"] is None
    rotated = await service.post(
        f"{WEB}/sessions/{sid}/rotate", json={"subject": "u2"}, headers=ADMIN
    )
    new_id = rotated.json()["id"]
    assert new_id != sid
    assert rotated.json()["subject"] == "u2"
    gone = await service.get(f"{WEB}/sessions/{sid}", headers=ADMIN)
    assert (gone.status_code, gone.json()["error"]) == (404, "session_not_found")
    assert (await service.delete(f"{WEB}/sessions/{new_id}", headers=ADMIN)).status_code == 204
    again = await service.delete(f"{WEB}/sessions/{new_id}", headers=ADMIN)
    assert again.status_code == 404


async def test_subjects_list_and_revoke(service: httpx.AsyncClient, clock: ManualClock) -> None:
    for n in range(3):
        await create(service, subject="alice", data={"n": n})
        clock.advance(1)
    bob = await create(service, subject="bob")
    listed = await service.get(f"{WEB}/subjects/alice/sessions", headers=ADMIN)
    assert [s["data"]["n"] for s in listed.json()["sessions"]] == [2, 1, 0]
    revoked = await service.delete(f"{WEB}/subjects/alice/sessions", headers=ADMIN)
    assert revoked.json() == {"revoked": 3}
    assert (await service.get(f"{WEB}/subjects/alice/sessions", headers=ADMIN)).json() == {
        "sessions": []
    }
    assert (await service.get(f"{WEB}/sessions/{bob['id']}", headers=ADMIN)).status_code == 200


async def test_revoke_subject_keeps_the_sessions_named_by_keep(
    service: httpx.AsyncClient,
) -> None:
    alice = [(await create(service, subject="alice"))["id"] for _ in range(4)]
    path = f"{WEB}/subjects/alice/sessions"
    bad = await service.delete(path, params={"keep": [alice[0], "not-an-id"]}, headers=ADMIN)
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_session_id")
    assert len((await service.get(path, headers=ADMIN)).json()["sessions"]) == 4  # untouched
    kept = await service.delete(path, params={"keep": alice[:2]}, headers=ADMIN)
    assert kept.json() == {"revoked": 2}
    listed = (await service.get(path, headers=ADMIN)).json()["sessions"]
    assert sorted(s["id"] for s in listed) == sorted(alice[:2])


async def test_consume_answers_429_past_the_limit(service: httpx.AsyncClient) -> None:
    sid = (await create(service))["id"]
    path = f"{WEB}/sessions/{sid}/counters/searches/consume"
    results = await asyncio.gather(
        *(service.post(path, json={"limit": 5}, headers=ADMIN) for _ in range(12))
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 5 + [429] * 7
    refused = next(r for r in results if r.status_code == 429).json()
    assert (refused["error"], refused["used"], refused["remaining"]) == ("quota_exceeded", 5, 0)
    refund = await service.post(path, json={"amount": -2, "limit": 5}, headers=ADMIN)
    assert refund.json() == {"allowed": True, "used": 3, "limit": 5, "remaining": 2}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("get", f"{WEB}/sessions/not-an-id", {}, 400, "invalid_session_id"),
        ("get", f"{WEB}/sessions/{ids.new_id()}", {}, 404, "session_not_found"),
        ("get", f"/v1/namespaces/nope/sessions/{ids.new_id()}", {}, 404, "unknown_namespace"),
        ("post", f"{WEB}/sessions", {"content": b"{not json"}, 400, "malformed_request"),
        ("post", f"{WEB}/sessions", {"json": {"data": "text"}}, 422, "validation_error"),
        ("post", f"{WEB}/sessions", {"json": {"extra": 1}}, 422, "validation_error"),
        ("post", f"{WEB}/sessions", {"json": {"subject": ""}}, 422, "validation_error"),
        ("post", f"{WEB}/sessions", {"json": {"metadata": {"k": 1}}}, 422, "validation_error"),
        ("post", f"{WEB}/sessions", {"content": b'{"data": {"x": NaN}}'}, 422, "validation_error"),
        (
            "post",
            f"{WEB}/sessions",
            {"json": {"data": {"big": "x" * 1_100_000}}},
            413,
            "payload_too_large",
        ),
        ("post", f"{WEB}/sessions", {"content": b"x" * 3_000_000}, 413, "payload_too_large"),
        ("delete", f"{WEB}/sessions", {}, 405, "method_not_allowed"),
        ("get", "/v2/anything", {}, 404, "not_found"),
    ],
)
async def test_bad_requests_get_json_errors_never_500(
    service: httpx.AsyncClient,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    headers = {**ADMIN, "content-type": "application/json"}
    response = await service.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str)


async def test_bad_if_match_is_400(service: httpx.AsyncClient) -> None:
    sid = (await create(service))["id"]
    response = await service.patch(
        f"{WEB}/sessions/{sid}", json={"data": {}}, headers={**ADMIN, "If-Match": "soon"}
    )
    assert (response.status_code, response.json()["error"]) == (400, "bad_if_match")


async def test_openapi_describes_the_api(service: httpx.AsyncClient) -> None:
    spec = (await service.get("/openapi.json")).json()
    assert f"{WEB.replace('web', '{namespace}')}/sessions/{{session_id}}" in spec["paths"]
    assert "/api/v1/playground/session" in spec["paths"]
    assert (await service.get("/docs")).status_code == 200


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (f"{WEB}/sessions/{ids.new_id()}", "DELETE, GET, PATCH"),
        (f"{WEB}/subjects/alice/sessions", "DELETE, GET"),
        ("/api/v1/playground/session/indexed-repo", "DELETE, PUT"),
    ],
)
async def test_a_405_names_every_method_of_every_route_at_its_path(
    service: httpx.AsyncClient, path: str, allowed: str
) -> None:
    """Starlette names the methods of the first route whose path matched; several share one."""
    response = await service.request("OPTIONS", path, headers=ADMIN)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"] == "method_not_allowed"
