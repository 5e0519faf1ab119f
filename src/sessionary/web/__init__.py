"""The web layer: the service (`create_app`), the ASGI session middleware, and its FastAPI
dependency.

`CurrentSession` and `current_session` are imported on first use, so that importing the
middleware (the `starlette` extra) does not need FastAPI (the `server` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sessionary.extras import needs

with needs("starlette", "sessionary.web"):
    from sessionary.web.middleware import SessionHandle, SessionMiddleware

if TYPE_CHECKING:
    from sessionary.web.fastapi import CurrentSession, current_session

__all__ = ["CurrentSession", "SessionHandle", "SessionMiddleware", "current_session"]

_FASTAPI_NAMES = frozenset({"CurrentSession", "current_session"})


def __getattr__(name: str) -> Any:
    if name in _FASTAPI_NAMES:
        from sessionary.web import fastapi

        return getattr(fastapi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
