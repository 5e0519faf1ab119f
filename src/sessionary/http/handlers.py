"""Exception handlers that keep every error JSON with a stable code (never a bare 500 for bad
input, never FastAPI's `{"detail": ...}`), route classes that answer their own errors and
check credentials before anything else, and `ServerErrors`, which answers a crash with a JSON
500 and keeps the client's connection."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.errors import SessionaryError, StoreUnavailable
from sessionary.http.errors import (
    ResponseError,
    error_response,
    internal_error_response,
    response_for,
)
from sessionary.http.metrics import Metrics

log = logging.getLogger("sessionary.http")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI, metrics: Metrics | None = None) -> None:
    async def on_response_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ResponseError)
        return exc.response

    async def on_sessionary_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SessionaryError)
        if isinstance(exc, StoreUnavailable):
            # said once per outage by the store itself (`sessionary.outage`), not per request
            log.debug("store unavailable serving %s %s: %s", request.method, request.url.path, exc)
            if metrics is not None:
                metrics.store_errors.labels("api").inc()
        return response_for(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, code, message, headers=headers)

    app.add_exception_handler(ResponseError, on_response_error)
    app.add_exception_handler(SessionaryError, on_sessionary_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    # Outermost of the application's middleware: call this after adding the others.
    app.add_middleware(ServerErrors)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. Starlette's 405 names the
    methods of the first route whose path matched, though several routes may share a path
    (GET, PATCH and DELETE of one session, say). Asked of each route by `matches` (public,
    and it sees into included routers), only when answering a 405."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches(dict(request.scope, method=method))[0] == Match.FULL for route in routes
        )
    ]


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


class ServerErrors:
    """Answers an exception nothing else answered with a JSON 500, logged once, and keeps
    the connection open.

    Starlette's own last resort answers a 500 and then raises the exception again, for the
    server to log; uvicorn, seeing an exception after a response has started, closes the
    connection, so a keep-alive client loses its connection on every 500. Here the exception
    ends with the response: raised before the response started, it is answered; after the
    response was sent whole, it is only logged; only a response cut off halfway (its head
    sent, its body not finished) is raised on, as the connection cannot be used again.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False

        async def watching_send(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception:
            log.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            if started and not finished:
                raise
            if not started:
                await internal_error_response()(scope, receive, send)


def validation_response(exc: RequestValidationError) -> Response:
    """400 for a body that is not JSON at all, 422 for one that is but does not fit."""
    problems = [
        {
            "location": [str(part) for part in error.get("loc", ())],
            "message": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]
    if any(p["type"] == "json_invalid" for p in problems):
        return error_response(
            400, "malformed_request", "the body is not valid JSON", details=problems
        )
    return error_response(422, "validation_error", _summary(problems), details=problems)


Guard = Callable[[Request], object]


class JSONErrorRoute(APIRoute):
    """A route answering its own errors as sessionary's JSON, whatever handlers the
    application around it has (for routers mounted into someone else's app). A subclass made
    by `guarded` checks the request first (its credentials), before the body is read or any
    parameter validated: a request without a key gets a 401, whatever else is wrong with it."""

    async def check(self, request: Request) -> None:
        """Refuse the request (raise) before anything else; `guarded` routes do."""

    def endpoint_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """What answers a request once checked: FastAPI's handler (parameters, body, the
        response model)."""
        return super().get_route_handler()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = self.endpoint_handler()

        async def answer(request: Request) -> Response:
            try:
                await self.check(request)
                return await handler(request)
            except RequestValidationError as exc:
                return validation_response(exc)
            except ResponseError as exc:
                return exc.response
            except SessionaryError as exc:
                return response_for(exc)

        return answer


class DirectRoute(JSONErrorRoute):
    """A route whose endpoint takes the `Request` alone and returns a `Response`, called as
    it is: without FastAPI's parameter solving, which costs a busy route (/track) more than
    its own work. Its dependencies only document it (a security scheme that never refuses by
    itself, say): they are not run."""

    def endpoint_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)


def guarded(guard: Guard) -> type[JSONErrorRoute]:
    """A route class whose routes run `guard(request)` (sync or async; it raises to refuse: a
    `ResponseError`, say) before anything else."""

    class GuardedRoute(JSONErrorRoute):
        async def check(self, request: Request) -> None:
            checked = guard(request)
            if inspect.isawaitable(checked):
                await checked

    return GuardedRoute


def _summary(problems: list[dict[str, Any]]) -> str:
    first = problems[0] if problems else {"location": [], "message": "invalid request"}
    where = ".".join(first["location"][1:] or first["location"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['message']}{more}" if where else f"{first['message']}{more}"
