"""The applications `middleware.py` benchmarks, each served by uvicorn in its own process.

Every one exposes GET /rw (read a counter from the session, write it back plus one), GET /ro
(read the counter, write nothing) and GET /plain (touches no session). The Redis URL comes
from BENCH_REDIS_URL, the size of sessionary's read cache from BENCH_READ_CACHE.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request

from sessionary.web import SessionMiddleware

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
PREFIX = os.environ.get("BENCH_PREFIX", "bench:mw:")
#: sessionary's read cache, in sessions (0: off; see sessionary.read_cache)
READ_CACHE = int(os.environ.get("BENCH_READ_CACHE", "10000"))


def bare() -> FastAPI:
    """No session middleware at all."""
    app = FastAPI()

    @app.get("/plain")
    async def plain() -> dict[str, Any]:
        return {"ok": True}

    return app


def no_session() -> FastAPI:
    """No session middleware, and a GET /ro shaped like the others' (it takes the request,
    which carries a cookie in the benchmark) that reads nothing: the ceiling for /ro."""
    app = bare()

    @app.get("/ro")
    async def read_only(request: Request) -> dict[str, Any]:
        return {"n": 0}

    return app


def sessionary() -> FastAPI:
    app = bare()
    app.add_middleware(
        SessionMiddleware,
        store=f"{REDIS_URL}?prefix={PREFIX}sessionary:&read_cache={READ_CACHE}",
        namespace="bench",
        idle_ttl=timedelta(minutes=30),
        absolute_ttl=timedelta(hours=12),
        https_only=False,
    )

    @app.get("/rw")
    async def read_write(request: Request) -> dict[str, Any]:
        session = request.session  # as with starsessions (CurrentSession works too)
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @app.get("/ro")
    async def read_only(request: Request) -> dict[str, Any]:
        return {"n": request.session.get("n", 0)}

    return app


def starsessions() -> FastAPI:
    from starsessions import SessionMiddleware, load_session
    from starsessions.stores.redis import RedisStore

    app = bare()
    app.add_middleware(
        SessionMiddleware,
        store=RedisStore(REDIS_URL, prefix=f"{PREFIX}starsessions:"),
        lifetime=timedelta(hours=12),
        cookie_https_only=False,
    )

    @app.get("/rw")
    async def read_write(request: Request) -> dict[str, Any]:
        await load_session(request)
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    @app.get("/ro")
    async def read_only(request: Request) -> dict[str, Any]:
        await load_session(request)
        return {"n": request.session.get("n", 0)}

    return app
