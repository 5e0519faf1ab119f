"""The console over HTTP on every backend: signing in and out (the admin session: its cookie,
rotation, expiry), the guard (redirects, 401, a restricted key, CSRF) and the sessions page,
whose numbers are the admin API's. The browser drives it in tests/browser/test_console.py."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sessionary import ManualClock
from tests.web.conftest import ADMIN, API_KEY

ORIGIN = {"Origin": "https://testserver"}
WEB_ONLY_KEY = "web-only-key-0123456789"
COOKIE = "__Host-sessionary_console"


async def sign_in(service: httpx.AsyncClient, key: str = API_KEY) -> str:
    """Sign in with `key`; the CSRF token of the session it opened."""
    response = await service.post(
        "/console/sign-in", data={"key": key, "next": "/console/sessions"}, headers=ORIGIN
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/sessions"
    return csrf_of((await page(service, "/console/sessions")).text)


async def page(service: httpx.AsyncClient, path: str, status: int = 200) -> httpx.Response:
    response = await service.get(path, headers={"Accept": "text/html"})
    assert response.status_code == status, response.text
    return response


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


async def create(service: httpx.AsyncClient, namespace: str, **body: Any) -> dict[str, Any]:
    response = await service.post(f"/v1/namespaces/{namespace}/sessions", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_a_page_sends_whoever_is_not_signed_in_to_the_sign_in_page(
    service: httpx.AsyncClient,
) -> None:
    redirected = await page(service, "/console/sessions?namespace=web", 303)
    assert redirected.headers["location"] == (
        "/console/sign-in?next=%2Fconsole%2Fsessions%3Fnamespace%3Dweb"
    )
    script = await service.get("/console/sessions/counts", headers={"Accept": "application/json"})
    assert (script.status_code, script.json()["error"]) == (401, "unauthorized")
    form = await page(service, "/console/sign-in")
    assert 'type="password"' in form.text
    assert '<label for="key">' in form.text
    assert form.headers["content-security-policy"].startswith("default-src 'self'")
    assert form.headers["cache-control"] == "no-store"
    assert "set-cookie" not in form.headers  # no session before a sign-in


async def test_signing_in_opens_a_session_with_a_strict_http_only_cookie(
    service: httpx.AsyncClient,
) -> None:
    response = await service.post(
        "/console/sign-in", data={"key": API_KEY, "next": "/console/runs"}, headers=ORIGIN
    )
    assert (response.status_code, response.headers["location"]) == (303, "/console/runs")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert attribute in cookie
    subject = "/v1/namespaces/console/subjects/anyone/sessions"
    listed = await service.get(subject, headers=ADMIN)
    assert (listed.status_code, listed.json()["error"]) == (404, "unknown_namespace")
    names = (await service.get("/v1/namespaces", headers=ADMIN)).json()["namespaces"]
    assert "console" not in [entry["name"] for entry in names]  # not the admin API's


async def test_a_wrong_key_or_a_foreign_page_signs_nobody_in(service: httpx.AsyncClient) -> None:
    wrong = await service.post(
        "/console/sign-in", data={"key": "not-the-key-0123456789"}, headers=ORIGIN
    )
    assert wrong.status_code == 401
    assert "not an admin API key" in wrong.text
    assert "set-cookie" not in wrong.headers
    foreign = await service.post(
        "/console/sign-in", data={"key": API_KEY}, headers={"Origin": "https://evil.example"}
    )
    assert (foreign.status_code, foreign.json()["error"]) == (403, "csrf_rejected")
    assert "set-cookie" not in foreign.headers
    nothing = await service.post("/console/sign-in", data={"key": API_KEY})
    assert (nothing.status_code, nothing.json()["error"]) == (403, "csrf_rejected")
    as_json = await service.post("/console/sign-in", json={"key": API_KEY}, headers=ORIGIN)
    assert (as_json.status_code, as_json.json()["error"]) == (415, "unsupported_media_type")
    await page(service, "/console/sessions", 303)


async def test_signing_in_again_rotates_the_session_and_signing_out_ends_it(
    service: httpx.AsyncClient,
) -> None:
    await sign_in(service)
    first = service.cookies[COOKIE]
    await sign_in(service)
    second = service.cookies[COOKIE]
    assert second != first
    # the old id is dead: presented alone, it is nobody's
    async with httpx.AsyncClient(transport=service._transport, base_url=service.base_url) as old:
        old.cookies.set(COOKIE, first)
        await page(old, "/console/sessions", 303)
    token = csrf_of((await page(service, "/console/sessions")).text)
    out = await service.post("/console/sign-out", data={"csrf": token}, headers=ORIGIN)
    assert (out.status_code, out.headers["location"]) == (303, "/console/sign-in")
    assert "Max-Age=0" in out.headers["set-cookie"]
    async with httpx.AsyncClient(transport=service._transport, base_url=service.base_url) as old:
        old.cookies.set(COOKIE, second)
        await page(old, "/console/sessions", 303)


async def test_the_admin_session_expires_when_idle_and_at_its_absolute_limit(
    service: httpx.AsyncClient, clock: ManualClock
) -> None:
    await sign_in(service)
    clock.advance(timedelta(minutes=29))
    await page(service, "/console/sessions")  # activity slides the idle expiry
    clock.advance(timedelta(minutes=29))
    await page(service, "/console/sessions")
    clock.advance(timedelta(minutes=31))
    await page(service, "/console/sessions", 303)
    await sign_in(service)
    for _ in range(24):  # active all along (11 h 36 min), but 12 h after sign-in it ends
        clock.advance(timedelta(minutes=29))
        await page(service, "/console/sessions")
    clock.advance(timedelta(minutes=29))
    await page(service, "/console/sessions", 303)


async def test_the_namespaces_and_their_counts_are_the_admin_apis(
    service: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await create(service, "web", subject="ann")
    await sign_in(service)
    html = (await page(service, "/console/sessions")).text
    api = (await service.get("/v1/namespaces", headers=ADMIN)).json()["namespaces"]
    web = next(entry for entry in api if entry["name"] == "web")
    assert web["sessions"] == 3
    for entry in api:
        cell = re.search(rf'data-field="{re.escape(entry["name"])}">(\d+)<', html)
        assert cell is not None, entry["name"]
        assert int(cell.group(1)) == entry["sessions"]
    counts = await service.get("/console/sessions/counts")
    assert counts.json() == {entry["name"]: entry["sessions"] for entry in api}


async def test_a_key_restricted_to_some_namespaces_sees_only_those(
    service: httpx.AsyncClient,
) -> None:
    await sign_in(service, WEB_ONLY_KEY)
    html = (await page(service, "/console/sessions")).text
    assert 'data-field="web"' in html
    assert 'data-field="playground"' not in html
    assert (await service.get("/console/sessions/counts")).json().keys() == {"web"}
    restricted = {"Authorization": f"Bearer {WEB_ONLY_KEY}"}
    listed = await service.get("/v1/namespaces", headers=restricted)
    assert [entry["name"] for entry in listed.json()["namespaces"]] == ["web"]


async def test_finding_and_revoking_a_subjects_sessions(service: httpx.AsyncClient) -> None:
    kept = await create(service, "web", subject="ann")
    gone = await create(service, "web", subject="ann")
    other = await create(service, "web", subject="bob")
    token = await sign_in(service)
    html = (await page(service, "/console/sessions?namespace=web&subject=ann")).text
    assert "2 live sessions of <q>ann</q> in web" in html
    assert kept["id"][:12] in html
    assert gone["id"][:12] in html
    assert other["id"][:12] not in html
    revoked = await service.post(
        "/console/sessions/revoke",
        data={"csrf": token, "namespace": "web", "subject": "ann", "session_id": gone["id"]},
        headers=ORIGIN,
    )
    assert revoked.status_code == 303
    after = await page(service, revoked.headers["location"])
    assert "Revoked 1 session." in after.text
    read = await service.get(f"/v1/namespaces/web/sessions/{gone['id']}", headers=ADMIN)
    assert read.status_code == 404
    api = await service.get("/v1/namespaces/web/subjects/ann/sessions", headers=ADMIN)
    assert [s["id"] for s in api.json()["sessions"]] == [kept["id"]]
    assert "1 live session of <q>ann</q> in web" in after.text
    everything = await service.post(
        "/console/sessions/revoke-all",
        data={"csrf": token, "namespace": "web", "subject": "ann"},
        headers=ORIGIN,
    )
    assert "Revoked 1 session." in (await page(service, everything.headers["location"])).text
    bob = await service.get(f"/v1/namespaces/web/sessions/{other['id']}", headers=ADMIN)
    assert bob.status_code == 200


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        (ORIGIN, "not-the-token"),
        ({"Origin": "https://evil.example"}, None),
        ({}, None),
        ({"Sec-Fetch-Site": "cross-site"}, None),
    ],
)
async def test_a_form_without_the_token_or_from_elsewhere_changes_nothing(
    service: httpx.AsyncClient, headers: dict[str, str], token: str | None
) -> None:
    made = await create(service, "web", subject="ann")
    real = await sign_in(service)
    refused = await service.post(
        "/console/sessions/revoke",
        data={"csrf": token or real, "namespace": "web", "session_id": made["id"]},
        headers=headers,
    )
    assert (refused.status_code, refused.json()["error"]) == (403, "csrf_rejected")
    read = await service.get(f"/v1/namespaces/web/sessions/{made['id']}", headers=ADMIN)
    assert read.status_code == 200


async def test_revoking_in_a_namespace_the_key_may_not_touch_changes_nothing(
    service: httpx.AsyncClient,
) -> None:
    made = await create(service, "playground")
    token = await sign_in(service, WEB_ONLY_KEY)
    refused = await service.post(
        "/console/sessions/revoke",
        data={"csrf": token, "namespace": "playground", "session_id": made["id"]},
        headers=ORIGIN,
    )
    assert "No such namespace" in (await page(service, refused.headers["location"])).text
    read = await service.get(f"/v1/namespaces/playground/sessions/{made['id']}", headers=ADMIN)
    assert read.status_code == 200
    malformed = await service.post(
        "/console/sessions/revoke",
        data={"csrf": token, "namespace": "web", "session_id": "nonsense"},
        headers=ORIGIN,
    )
    assert "No such live session." in (await page(service, malformed.headers["location"])).text


async def test_the_assets_are_served_from_the_package(service: httpx.AsyncClient) -> None:
    for path in ("/console/static/console.js", "/console/static/console.css"):
        response = await service.get(path)
        assert response.status_code == 200
        assert "max-age" in response.headers["cache-control"]
        assert "set-cookie" not in response.headers


async def test_ten_wrong_keys_from_one_address_refuse_its_sign_ins_for_the_window(
    service: httpx.AsyncClient, clock: ManualClock
) -> None:
    for _ in range(10):
        wrong = await service.post(
            "/console/sign-in", data={"key": "not-the-key-0123456789"}, headers=ORIGIN
        )
        assert wrong.status_code == 401
    refused = await service.post("/console/sign-in", data={"key": API_KEY}, headers=ORIGIN)
    assert refused.status_code == 429  # even the right key: the address is refused meanwhile
    assert "Too many wrong keys" in refused.text
    assert int(refused.headers["retry-after"]) == 15 * 60
    assert "set-cookie" not in refused.headers
    clock.advance(timedelta(minutes=15))
    await sign_in(service)


async def test_a_link_from_elsewhere_cannot_put_words_on_a_page(
    service: httpx.AsyncClient,
) -> None:
    made = await create(service, "web", subject="ann")
    token = await sign_in(service)
    forged = "Your key expired: paste it at https://evil.example"
    for query in (f"done={forged}", f"done={forged}&sig=0123456789abcdef0123456789abcdef"):
        shown = await page(service, f"/console/sessions?namespace=web&subject=ann&{query}")
        assert "evil.example" not in shown.text
    revoked = await service.post(
        "/console/sessions/revoke",
        data={"csrf": token, "namespace": "web", "subject": "ann", "session_id": made["id"]},
        headers=ORIGIN,
    )
    location = revoked.headers["location"]
    assert "sig=" in location
    assert "Revoked 1 session." in (await page(service, location)).text
    altered = location.replace("Revoked+1", "Revoked+9")
    assert "Revoked 9" not in (await page(service, altered)).text
