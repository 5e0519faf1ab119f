"""The application the browser tests drive, run by uvicorn in a process of its own so that a
test can kill it mid-stream and start it again on the same port:

    SESSIONARY_BROWSER_STORE=sqlite:///... SESSIONARY_BROWSER_ORIGINS="http://127.0.0.1:8001" \
        python -m uvicorn tests.browser.app:create_app --factory --port 8000

It is what an application using sessionary looks like: its own login (the session middleware's
`rotate`), the runs API authenticated by that session's cookie, a CORS allow-list for a
frontend on another origin, and a page (page.html) on its own origin. It starts runs but never
produces them: the test does, through the store (a SQLite file both processes open), so a run
outlives the server's restart as it would outlive a web process's in production.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import FileResponse, JSONResponse, Response

from sessionary import Namespace, connect
from sessionary.runs import Runs, RunsSettings
from sessionary.runs.http import FirstOf, SessionAuthenticator, runs_router
from sessionary.source import StoreSource
from sessionary.web.fastapi import CurrentSession
from sessionary.web.middleware import SessionMiddleware

STORE_ENV = "SESSIONARY_BROWSER_STORE"
ORIGINS_ENV = "SESSIONARY_BROWSER_ORIGINS"  # the CORS allow-list, separated by spaces
PAGE = Path(__file__).with_name("page.html")
RUNS = RunsSettings()
SESSIONS = "web"
# the middleware and the authenticator ask the store for the same namespace, so with one policy
IDLE_TTL = timedelta(minutes=30)
ABSOLUTE_TTL = timedelta(hours=12)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    username: str = Field(min_length=1, max_length=64)


class Opened:
    """What the application opens at startup: the routes reach it through these getters."""

    def __init__(self) -> None:
        self.runs_: Runs | None = None
        self.sessions_: Namespace | None = None

    def runs(self) -> Runs:
        assert self.runs_ is not None, "the store opens with the application"
        return self.runs_

    def sessions(self) -> Namespace:
        assert self.sessions_ is not None, "the store opens with the application"
        return self.sessions_


def create_app() -> FastAPI:
    """The application on the store `$SESSIONARY_BROWSER_STORE`, letting the origins in
    `$SESSIONARY_BROWSER_ORIGINS` call its runs API with credentials."""
    url = os.environ[STORE_ENV]
    origins = os.environ.get(ORIGINS_ENV, "").split()
    source = StoreSource()  # bound at startup, closed at shutdown, by the lifespan below
    opened = Opened()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await connect(url)
        source.bind(store)
        opened.runs_ = Runs(store, RUNS)
        opened.sessions_ = store.namespace(SESSIONS, idle_ttl=IDLE_TTL, absolute_ttl=ABSOLUTE_TTL)
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(lifespan=lifespan)
    # The tests serve plain http, so the cookie cannot be Secure. It stays SameSite=Lax: the
    # allowed frontend is on another port of 127.0.0.1, another origin but the same site, so
    # the browser sends the cookie with its credentialed requests (a frontend on another site
    # would need SameSite=None; Secure, hence https).
    app.add_middleware(
        SessionMiddleware,
        store=source,
        namespace=SESSIONS,
        idle_ttl=IDLE_TTL,
        absolute_ttl=ABSOLUTE_TTL,
        https_only=False,
    )

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/")
    async def page() -> Response:
        return FileResponse(PAGE, headers={"Cache-Control": "no-store"})

    @app.post("/login")
    async def login(body: Login, session: CurrentSession) -> Response:
        """No password: the tests are about what the session cookie lets a page do."""
        await session.rotate(subject=body.username)
        return JSONResponse({"subject": body.username})

    app.include_router(
        runs_router(opened.runs, FirstOf(SessionAuthenticator(opened.sessions)), origins=origins)
    )
    return app
