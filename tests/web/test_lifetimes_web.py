"""Per-session lifetimes over HTTP: the middleware's "remember me" login and its cookie, and the
admin API showing and setting a session's own lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock, Namespace, connect
from sessionary.web import CurrentSession, SessionMiddleware
from tests.web.conftest import ADMIN, client_for
from tests.web.test_middleware import cookie_of

WEB = "/v1/namespaces/web"
DAY_MS = 86_400_000
HALF_DAY = timedelta(hours=12)


@pytest_asyncio.fixture
async def web(
    store_url: str, clock: ManualClock
) -> AsyncIterator[tuple[Namespace, httpx.AsyncClient]]:
    store = await connect(store_url, clock=clock)
    app = FastAPI()
    namespace = store.namespace("web", idle_ttl=timedelta(minutes=30), absolute_ttl=HALF_DAY)
    app.add_middleware(SessionMiddleware, namespace=namespace)

    @app.post("/login/{user}")
    async def login(user: str, remember: bool, session: CurrentSession) -> dict[str, Any]:
        if remember:
            session.set_lifetime(idle_ttl=timedelta(days=14), absolute_ttl=timedelta(days=30))
        await session.rotate(subject=user)
        return {}

    @app.post("/forget")
    async def forget(session: CurrentSession) -> dict[str, Any]:
        session.set_lifetime()
        return {}

    async with client_for(app) as client:
        yield namespace, client
    await store.close()


async def test_a_remembered_login_gets_a_cookie_as_long_as_its_lifetime(
    web: tuple[Namespace, httpx.AsyncClient],
) -> None:
    namespace, client = web
    assert "Max-Age=43200" in cookie_of(await client.post("/login/ann?remember=false"))
    client.cookies.clear()
    remembered = await client.post("/login/bob?remember=true")
    assert "Max-Age=2592000" in cookie_of(remembered)  # 30 days, not the policy's 12 hours
    (session,) = await namespace.list_subject("bob")
    assert (session.own_lifetime, session.idle_ttl) == (True, timedelta(days=14))
    forgotten = await client.post("/forget")
    assert "Max-Age=43200" in cookie_of(forgotten)  # back to the namespace's
    (session,) = await namespace.list_subject("bob")
    assert not session.own_lifetime


async def test_the_admin_api_shows_and_sets_a_sessions_lifetime(
    service: httpx.AsyncClient, clock: ManualClock
) -> None:
    plain = (await service.post(f"{WEB}/sessions", json={}, headers=ADMIN)).json()
    assert (plain["idle_ttl_ms"], plain["absolute_ttl_ms"], plain["own_lifetime"]) == (
        30 * 60 * 1000,
        12 * 3600 * 1000,
        False,
    )
    made = await service.post(
        f"{WEB}/sessions",
        json={"subject": "u", "idle_ttl_ms": DAY_MS, "absolute_ttl_ms": 7 * DAY_MS},
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["idle_ttl_ms"], body["absolute_ttl_ms"], body["own_lifetime"]) == (
        DAY_MS,
        7 * DAY_MS,
        True,
    )
    assert body["expires_at"] == clock.now_ms() + DAY_MS
    listed = await service.get(f"{WEB}/subjects/u/sessions", headers=ADMIN)
    assert listed.json()["sessions"] == [body]
    kept = await service.post(f"{WEB}/sessions/{body['id']}/rotate", json={}, headers=ADMIN)
    assert kept.json()["own_lifetime"]
    back = await service.post(
        f"{WEB}/sessions/{kept.json()['id']}/rotate",
        json={"idle_ttl_ms": None, "absolute_ttl_ms": None},
        headers=ADMIN,
    )
    assert (back.json()["own_lifetime"], back.json()["idle_ttl_ms"]) == (False, 30 * 60 * 1000)
    bad = await service.post(f"{WEB}/sessions", json={"idle_ttl_ms": 0}, headers=ADMIN)
    assert bad.status_code == 422
