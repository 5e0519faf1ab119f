"""Sessions per subject (`max_sessions_per_subject`) where the service and the middleware open
a namespace: the admin API's 409 `too_many_sessions` with nothing written, its OpenAPI
document, the settings' checks, and a login through the middleware refused (the session as
it was) or evicting the subject's least recently active session."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from sessionary import ManualClock, Namespace, Store, TooManySessions, connect
from sessionary.contract import OnMaxSessions
from sessionary.web import CurrentSession, SessionMiddleware
from sessionary.web.app import create_app
from sessionary.web.settings import Settings, SettingsError, load_settings
from tests.web.conftest import ADMIN, client_for
from tests.web.test_middleware import cookie_of

WEB = "/v1/namespaces/web"
LIMIT = 2
REFUSED = {"error": "too_many_sessions", "max_sessions": LIMIT}


def limited_service(make_app: Callable[..., FastAPI], on_max: OnMaxSessions) -> FastAPI:
    return make_app(
        namespaces={"web": {"max_sessions_per_subject": LIMIT, "on_max_sessions": on_max}}
    )


def refusal(response: httpx.Response) -> dict[str, Any]:
    """The 409's body without its message (for people; it may change)."""
    assert response.status_code == 409, response.text
    body: dict[str, Any] = response.json()
    assert body.pop("message")
    return body


async def test_the_admin_api_refuses_a_subject_past_the_limit_and_writes_nothing(
    make_app: Callable[..., FastAPI],
) -> None:
    app = limited_service(make_app, "refuse")
    async with app.router.lifespan_context(app), client_for(app) as service:
        for _ in range(LIMIT):
            made = await service.post(f"{WEB}/sessions", json={"subject": "ann"}, headers=ADMIN)
            assert made.status_code == 201, made.text
        created = await service.post(f"{WEB}/sessions", json={"subject": "ann"}, headers=ADMIN)
        assert refusal(created) == REFUSED

        anonymous = (await service.post(f"{WEB}/sessions", json={}, headers=ADMIN)).json()
        at = f"{WEB}/sessions/{anonymous['id']}"
        rotated = await service.post(f"{at}/rotate", json={"subject": "ann"}, headers=ADMIN)
        assert refusal(rotated) == REFUSED
        patched = await service.patch(at, json={"subject": "ann", "data": {"a": 1}}, headers=ADMIN)
        assert refusal(patched) == REFUSED

        unchanged = (await service.get(at, headers=ADMIN)).json()  # same id: not rotated
        assert (unchanged["subject"], unchanged["data"]) == (None, {})
        assert unchanged["version"] == anonymous["version"]
        listed = await service.get(f"{WEB}/subjects/ann/sessions", headers=ADMIN)
        assert len(listed.json()["sessions"]) == LIMIT
        other = await service.post(f"{WEB}/sessions", json={"subject": "bob"}, headers=ADMIN)
        assert other.status_code == 201  # the limit is per subject


async def test_the_admin_api_evicts_the_least_recently_active(
    make_app: Callable[..., FastAPI], clock: ManualClock
) -> None:
    app = limited_service(make_app, "evict_oldest")
    async with app.router.lifespan_context(app), client_for(app) as service:
        ids = []
        for _ in range(LIMIT):
            made = await service.post(f"{WEB}/sessions", json={"subject": "ann"}, headers=ADMIN)
            ids.append(made.json()["id"])
            clock.advance(timedelta(seconds=1))
        await service.post(f"{WEB}/sessions/{ids[0]}/touch", headers=ADMIN)  # now the newest
        newest = await service.post(f"{WEB}/sessions", json={"subject": "ann"}, headers=ADMIN)
        assert newest.status_code == 201

        assert (await service.get(f"{WEB}/sessions/{ids[1]}", headers=ADMIN)).status_code == 404
        listed = await service.get(f"{WEB}/subjects/ann/sessions", headers=ADMIN)
        assert {s["id"] for s in listed.json()["sessions"]} == {ids[0], newest.json()["id"]}


async def test_openapi_names_the_409_of_each_write_that_gives_a_subject(
    service: httpx.AsyncClient,
) -> None:
    paths = (await service.get("/openapi.json")).json()["paths"]
    session = f"{WEB.replace('web', '{namespace}')}/sessions"
    writes = [
        paths[session]["post"],
        paths[f"{session}/{{session_id}}"]["patch"],
        paths[f"{session}/{{session_id}}/rotate"]["post"],
    ]
    assert all("too_many_sessions" in write["responses"]["409"]["description"] for write in writes)
    # a touch gives no subject: its 409 is only that of a session it cannot open
    touch = paths[f"{session}/{{session_id}}/touch"]["post"]["responses"]
    assert "too_many_sessions" not in touch["409"]["description"]


async def test_the_service_will_not_start_with_a_limit_redis_cannot_keep(redis_url: str) -> None:
    """Sessions of `web` spread over hash slots already (it had no limit): the limit stops
    the start, naming the way out, rather than failing every request of the namespace."""
    spread = await connect(redis_url)
    await spread.namespace("web", idle_ttl=timedelta(minutes=30)).create(subject="ann")
    await spread.close()
    only_web = {"enabled": False}
    settings = Settings(
        store=redis_url,
        namespaces={"web": {"max_sessions_per_subject": LIMIT}},
        reaper=only_web,
        playground=only_web,
        runs=only_web,
        analytics=only_web,
    )
    app = create_app(settings)
    with pytest.raises(ValueError, match=r"'web' already holds sessions spread .*:layout"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("max_sessions_per_subject = 0", r"max_sessions_per_subject: .*greater than or equal"),
        ('on_max_sessions = "drop"', r"on_max_sessions: .*'refuse' or 'evict_oldest'"),
    ],
)
def test_a_bad_limit_is_a_settings_error(tmp_path: Path, line: str, problem: str) -> None:
    config = tmp_path / "sessionary.toml"
    config.write_text(f"[namespaces.web]\n{line}\n")
    with pytest.raises(SettingsError, match=rf"namespaces\.web\.{problem}"):
        load_settings(config)
    config.write_text("[namespaces.web]\nmax_sessions_per_subject = 3\n")
    web = load_settings(config).namespaces["web"]
    assert (web.max_sessions_per_subject, web.on_max_sessions) == (3, "refuse")


# -- the middleware ----------------------------------------------------------------------------


def web_of(store: Store, on_max: OnMaxSessions) -> Namespace:
    """The namespace `login_app`'s middleware opens (its default lifetimes, and the limit)."""
    return store.namespace(
        "web",
        idle_ttl=timedelta(minutes=30),
        absolute_ttl=timedelta(hours=12),
        max_sessions_per_subject=LIMIT,
        on_max_sessions=on_max,
    )


def login_app(store: Store, on_max: OnMaxSessions) -> FastAPI:
    """Logins through the middleware in a namespace of at most `LIMIT` sessions per user."""
    app = FastAPI()
    app.add_middleware(
        SessionMiddleware,
        store=store,
        namespace="web",
        max_sessions_per_subject=LIMIT,
        on_max_sessions=on_max,
    )

    @app.get("/me")
    async def me(session: CurrentSession) -> dict[str, Any]:
        return {"id": session.id, "user": session.subject, "cart": session.get("cart")}

    @app.post("/add/{item}")
    async def add(item: str, session: CurrentSession) -> dict[str, Any]:
        session.setdefault("cart", []).append(item)
        return {}

    @app.post("/login/{user}")
    async def login(user: str, session: CurrentSession) -> Any:
        try:
            await session.rotate(subject=user)
        except TooManySessions as refused:  # the application's own answer
            return JSONResponse({"refused": refused.max_sessions}, status_code=403)
        return {"user": user}

    @app.post("/login-unanswered/{user}")
    async def login_unanswered(user: str, session: CurrentSession) -> dict[str, Any]:
        await session.rotate(subject=user)
        return {"user": user}

    @app.post("/claim/{user}")
    async def claim(user: str, session: CurrentSession) -> dict[str, Any]:
        session["claimed"] = True
        session.set_subject(user)  # stored as the response starts
        return {}

    return app


async def logged_in(app: FastAPI, user: str) -> httpx.AsyncClient:
    client = client_for(app)
    answer = await client.post(f"/login/{user}")
    assert answer.json() == {"user": user}
    return client


async def test_a_refused_login_leaves_the_session_as_it_was(store: Store) -> None:
    app = login_app(store, "refuse")
    browsers = [await logged_in(app, "ann") for _ in range(LIMIT)]

    async with client_for(app) as shopper:
        await shopper.post("/add/book")
        before = (await shopper.get("/me")).json()
        refused = await shopper.post("/login/ann")
        assert (refused.status_code, refused.json()) == (403, {"refused": LIMIT})
        assert "set-cookie" not in refused.headers
        assert (await shopper.get("/me")).json() == before == {**before, "user": None}

        unanswered = await shopper.post("/login-unanswered/ann")
        assert refusal(unanswered) == REFUSED  # the middleware's 409, not a 500
        assert "set-cookie" not in unanswered.headers

        claimed = await shopper.post("/claim/ann")  # refused as the response starts
        assert refusal(claimed) == REFUSED
        assert (await shopper.get("/me")).json() == before  # nothing was written

    async with client_for(app) as newcomer:  # no session yet: refused at the call all the same
        refused = await newcomer.post("/login/ann")
        assert refused.status_code == 403
        assert "set-cookie" not in refused.headers
        assert (await newcomer.get("/me")).json() == {"id": None, "user": None, "cart": None}

    assert len(await web_of(store, "refuse").list_subject("ann")) == LIMIT
    for browser in browsers:
        assert (await browser.get("/me")).json()["user"] == "ann"
        await browser.aclose()


async def test_a_login_evicts_the_least_recently_active_device(
    store: Store, clock: ManualClock
) -> None:
    app = login_app(store, "evict_oldest")
    first = await logged_in(app, "ann")
    clock.advance(timedelta(seconds=1))
    second = await logged_in(app, "ann")
    clock.advance(timedelta(seconds=1))
    async with client_for(app) as third:
        await third.post("/add/book")  # anonymous first: the login rotates a stored session
        assert (await third.post("/login/ann")).json() == {"user": "ann"}
        assert (await third.get("/me")).json()["cart"] == ["book"]

    evicted = await first.get("/me")
    assert evicted.json() == {"id": None, "user": None, "cart": None}
    assert "Max-Age=0" in cookie_of(evicted)  # the dead id is cleared
    assert (await second.get("/me")).json()["user"] == "ann"
    assert len(await web_of(store, "evict_oldest").list_subject("ann")) == LIMIT
    await first.aclose()
    await second.aclose()
