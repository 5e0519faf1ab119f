"""Exception handlers that keep every error JSON with a stable code (never a bare 500 for bad
input, never FastAPI's `{"detail": ...}`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sessionary.errors import SessionaryError, StoreUnavailable
from sessionary.http.errors import ResponseError, error_response, response_for
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
            log.warning(
                "store unavailable serving %s %s: %s", request.method, request.url.path, exc
            )
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
        return error_response(exc.status_code, code, message, headers=exc.headers)

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "something went wrong on our side")

    app.add_exception_handler(ResponseError, on_response_error)
    app.add_exception_handler(SessionaryError, on_sessionary_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)


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


class JSONErrorRoute(APIRoute):
    """A route answering its own errors as sessionary's JSON, whatever handlers the
    application around it has (for routers mounted into someone else's app)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return validation_response(exc)
            except ResponseError as exc:
                return exc.response
            except SessionaryError as exc:
                return response_for(exc)

        return answer


def _summary(problems: list[dict[str, Any]]) -> str:
    first = problems[0] if problems else {"location": [], "message": "invalid request"}
    where = ".".join(first["location"][1:] or first["location"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['message']}{more}" if where else f"{first['message']}{more}"
