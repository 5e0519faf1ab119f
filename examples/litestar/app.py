"""A Litestar app whose server-side sessions live in sessionary: log in, count, log out
everywhere.

    pip install 'sessionary[litestar,redis]' uvicorn
    SESSIONARY_URL=redis://localhost:6379/0 uvicorn examples.litestar.app:app

    curl -c jar localhost:8000/login --json '{"user_id": 42}'   # {"user_id": 42, "count": 0}
    curl -b jar -c jar -X POST localhost:8000/count  # {"user_id": 42, "count": 1}
    curl -b jar -X POST localhost:8000/logout-everywhere   # {"sessions_ended": 1}

Litestar keeps the session dict and the cookie; `SessionaryStore` keeps the data, expiring it
(`max_age`, renewed on each request), and, because the dict carries "user_id", knows whose
session it is: logging out everywhere is one call, whatever device holds a cookie.
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.middleware.session.server_side import ServerSideSessionConfig

from sessionary.contrib.litestar import SessionaryStore


@post("/login")
async def login(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Log in (a real app checks a password first): a new session for the user."""
    user_id = int((await request.json())["user_id"])
    request.set_session({"user_id": user_id, "count": 0})
    return {"user_id": user_id, "count": 0}


@post("/count")
async def count(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Add one to the logged-in user's counter, kept in the session."""
    user_id = _user_of(request)
    counted = request.session.get("count", 0) + 1
    request.set_session({**request.session, "count": counted})
    return {"user_id": user_id, "count": counted}


@get("/me")
async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Who this session belongs to (user_id null when logged out)."""
    return {"user_id": request.session.get("user_id"), "count": request.session.get("count")}


@post("/logout-everywhere")
async def logout_everywhere(request: Request[Any, Any, Any]) -> dict[str, int]:
    """End every session of the logged-in user, on every device, this one included."""
    user_id = _user_of(request)
    sessions = request.app.stores.get("sessions")
    assert isinstance(sessions, SessionaryStore)
    ended = await sessions.revoke_subject(str(user_id))
    request.clear_session()  # else Litestar would write this one back after the response
    return {"sessions_ended": ended}


def _user_of(request: Request[Any, Any, Any]) -> int:
    user_id = request.session.get("user_id")
    if user_id is None:
        raise NotAuthorizedException("log in first")
    return int(user_id)


def create_app(sessions: SessionaryStore) -> Litestar:
    """The app over `sessions` (a test passes one on its own clock)."""
    config = ServerSideSessionConfig(max_age=3600, renew_on_access=True)
    return Litestar(
        route_handlers=[login, count, me, logout_everywhere],
        middleware=[config.middleware],
        stores={"sessions": sessions},
    )


app = create_app(
    SessionaryStore(
        os.environ.get("SESSIONARY_URL", "sqlite:///sessionary-litestar.db"),
        subject_key="user_id",
    )
)
