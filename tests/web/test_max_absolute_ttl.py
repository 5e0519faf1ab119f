"""The bound on what one session may ask for itself (`max_absolute_ttl`) where the service's
settings and the middleware configure a namespace, and the middleware's cookie Max-Age taken
from a `Namespace`'s own policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock, Store, ValidationError, connect
from sessionary.web import CurrentSession, SessionMiddleware
from sessionary.web.settings import SettingsError, load_settings
from tests.web.conftest import ADMIN, client_for
from tests.web.test_middleware import cookie_of

WEB = "/v1/namespaces/web"
DAY_MS = 86_400_000
MONTH = timedelta(days=30)


@pytest_asyncio.fixture
async def store(store_url: str, clock: ManualClock) -> AsyncIterator[Store]:
    opened = await connect(store_url, clock=clock)
    yield opened
    await opened.close()


def remembering_app(**options: Any) -> FastAPI:
    """An app whose login asks a lifetime of `days` days for the session (refused: the
    login goes on with the namespace's)."""
    app = FastAPI()
    app.add_middleware(SessionMiddleware, **options)

    @app.post("/login/{days}")
    async def login(days: int, session: CurrentSession) -> dict[str, Any]:
        refused = False
        try:
            session.set_lifetime(idle_ttl=timedelta(days=1), absolute_ttl=timedelta(days=days))
        except ValidationError:
            refused = True
        await session.rotate(subject="ann")
        return {"refused": refused}

    return app


async def test_the_service_bounds_a_namespace_from_its_settings(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(namespaces={"web": {"max_absolute_ttl": "30d"}})
    async with app.router.lifespan_context(app), client_for(app) as service:
        asked = {"idle_ttl_ms": DAY_MS, "absolute_ttl_ms": 30 * DAY_MS}
        within = await service.post(f"{WEB}/sessions", json=asked, headers=ADMIN)
        assert within.status_code == 201, within.text
        asked["absolute_ttl_ms"] += 1
        beyond = await service.post(f"{WEB}/sessions", json=asked, headers=ADMIN)
        assert beyond.status_code == 422, beyond.text


def test_a_policy_above_its_own_bound_is_a_settings_error(tmp_path: Path) -> None:
    config = tmp_path / "sessionary.toml"
    config.write_text('[namespaces.web]\nabsolute_ttl = "12h"\nmax_absolute_ttl = "1h"\n')
    with pytest.raises(SettingsError, match=r"namespaces\.web: .*absolute_ttl is above"):
        load_settings(config)
    config.write_text('[namespaces.web]\nabsolute_ttl = "12h"\nmax_absolute_ttl = "30d"\n')
    assert load_settings(config).namespaces["web"].max_absolute_ttl == MONTH


@pytest.mark.parametrize(("bound", "refused"), [(MONTH, True), (None, False)])
async def test_the_middleware_opens_its_namespace_with_the_bound(
    store: Store, bound: timedelta | None, refused: bool
) -> None:
    app = remembering_app(store=store, namespace="web", max_absolute_ttl=bound)
    async with client_for(app) as client:
        within = await client.post("/login/30")
        assert within.json() == {"refused": False}
        assert "Max-Age=2592000" in cookie_of(within)
        assert (await client.post("/login/31")).json() == {"refused": refused}


async def test_a_namespace_given_as_an_object_sets_the_cookies_max_age(store: Store) -> None:
    idle = timedelta(minutes=10)
    short = store.namespace("short", idle_ttl=idle, absolute_ttl=timedelta(hours=2))
    browser = store.namespace("browser", idle_ttl=idle, absolute_ttl=None)
    async with client_for(remembering_app(namespace=short)) as client:
        refused = await client.post("/login/0")  # no lifetime of its own: the policy's
        assert refused.json() == {"refused": True}
        assert "Max-Age=7200" in cookie_of(refused)
    async with client_for(remembering_app(namespace=browser)) as client:
        issued = cookie_of(await client.post("/login/0"))
        assert issued.startswith("__Host-session=")
        assert "Max-Age" not in issued  # no absolute ttl: a browser-session cookie
