"""The FastAPI side of the session middleware: a handler's `session: CurrentSession` parameter.

Apart from `sessionary.web.middleware` so that a Starlette application does not need FastAPI.
"""

from __future__ import annotations

from typing import Annotated

from sessionary.extras import needs

with needs("server", "sessionary.web.CurrentSession"):
    from fastapi import Depends, Request

from sessionary.session_request import RequestSession
from sessionary.web.middleware import STATE_KEY


async def current_session(request: Request) -> RequestSession:
    """A FastAPI dependency: the current request's session (needs `SessionMiddleware`).

    A coroutine on purpose: FastAPI runs a plain function dependency in a worker thread,
    which costs a thread hand-off on every request."""
    handle = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(handle, RequestSession):
        raise RuntimeError("current_session needs SessionMiddleware on the application")
    return handle


#: A handler's parameter `session: CurrentSession` receives the request's session.
CurrentSession = Annotated[RequestSession, Depends(current_session)]
