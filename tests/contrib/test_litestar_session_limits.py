"""`SessionaryStore(max_sessions_per_subject=...)` under Litestar's server-side sessions: a
login (`request.set_session` naming the user) past the limit evicts the user's least recently
active session, or is refused with a 409 by `SessionConfig`'s middleware (never a 500), the
session staying as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.testing import TestClient

from sessionary import ManualClock
from sessionary.contract import OnMaxSessions
from sessionary.contrib.litestar import SessionaryStore, SessionConfig

pytestmark = pytest.mark.timeout(300)

LIMIT = 3


@post("/login")
async def login(request: Request[Any, Any, Any]) -> None:
    """Log user 42 in: the session names its user."""
    request.set_session({**request.session, "user_id": 42})


@post("/add")
async def add(request: Request[Any, Any, Any]) -> None:
    """Put a book in the session's cart."""
    request.set_session({**request.session, "cart": [*request.session.get("cart", []), "book"]})


@get("/me")
async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"user_id": request.session.get("user_id"), "cart": request.session.get("cart")}


@contextmanager
def limited_app(
    store_url: str, clock: ManualClock, on_max: OnMaxSessions
) -> Iterator[tuple[Litestar, SessionaryStore]]:
    sessions = SessionaryStore(
        store_url,
        clock=clock,
        subject_key="user_id",
        max_sessions_per_subject=LIMIT,
        on_max_sessions=on_max,
    )
    app = Litestar(
        route_handlers=[login, add, me],
        middleware=[SessionConfig(max_age=3600).middleware],
        stores={"sessions": sessions},
    )
    yield app, sessions


def _devices(client: TestClient[Litestar], clock: ManualClock, how_many: int) -> list[str]:
    """The session cookies of `how_many` browsers logged in as user 42, one a second."""
    cookies = []
    for _ in range(how_many):
        client.cookies.clear()
        assert client.post("/login").status_code == 201
        cookies.append(client.cookies["session"])
        clock.advance(timedelta(seconds=1))
    return cookies


def _me(client: TestClient[Litestar], cookie: str) -> dict[str, Any]:
    """What the browser holding `cookie` finds in its session."""
    client.cookies.clear()
    client.cookies.set("session", cookie)
    found: dict[str, Any] = client.get("/me").json()
    return found


def test_a_login_past_the_limit_evicts_the_least_recently_active_session(
    store_url: str, clock: ManualClock
) -> None:
    with limited_app(store_url, clock, "evict_oldest") as (app, _), TestClient(app) as client:
        first, *others = _devices(client, clock, LIMIT + 1)
        assert _me(client, first) == {"user_id": None, "cart": None}
        assert [_me(client, cookie)["user_id"] for cookie in others] == [42] * LIMIT


def test_a_refused_login_is_a_409_and_the_session_stays_as_it_was(
    store_url: str, clock: ManualClock
) -> None:
    with limited_app(store_url, clock, "refuse") as (app, sessions), TestClient(app) as client:
        devices = _devices(client, clock, LIMIT)
        client.cookies.clear()
        client.post("/add")
        late = client.cookies["session"]
        refused = client.post("/login")
        assert refused.status_code == 409
        body = refused.json()
        assert body.pop("message")
        assert body == {"error": "too_many_sessions", "max_sessions": LIMIT}
        assert "set-cookie" not in refused.headers
        assert _me(client, late) == {"user_id": None, "cart": ["book"]}

        client.cookies.clear()  # nothing stored yet: refused all the same, nothing written
        assert client.post("/login").status_code == 409
        assert len(client.blocking_portal.call(sessions.list_subject, "42")) == LIMIT
        assert [_me(client, cookie)["user_id"] for cookie in devices] == [42] * LIMIT
