"""Every HTTP error is JSON: `{"error": "<stable code>", "message": "...", ...}`.

The code is the contract (clients branch on it); the message is for people and may change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.responses import Response

from sessionary.clock import iso_utc
from sessionary.counters import CounterReading
from sessionary.errors import SessionaryError, StoreUnavailable
from sessionary.outage import RETRY_AFTER_UNAVAILABLE as RETRY_AFTER_UNAVAILABLE


class JSONResponse(Response):
    """A JSON response encoded by orjson (Starlette's own uses the stdlib encoder)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    status: int,
    code: str,
    message: str,
    /,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status, dict(headers or {}))


def internal_error_response(headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The 500 of a bug (logged where it was caught); it says nothing more to the client."""
    return error_response(
        500, "internal_error", "something went wrong on our side", headers=headers
    )


def unavailable_response(message: str, retry_after: int = RETRY_AFTER_UNAVAILABLE) -> JSONResponse:
    return error_response(
        503,
        StoreUnavailable.code,
        message,
        headers={"Retry-After": str(retry_after)},
        retry_after=retry_after,
    )


class ResponseError(HTTPException):
    """Raise to answer with `response` (from a dependency, say). With sessionary's handler
    installed (`install_error_handlers`, `Playground.install`) it is sent as it is; in an app
    without it, it is still an HTTPException with the same status, headers and body (under
    FastAPI's "detail"), never a 500."""

    def __init__(self, response: Response) -> None:
        body = orjson.loads(response.body) if response.body else None
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        super().__init__(response.status_code, detail=body, headers=headers)
        self.response = response


def quota_response(scope: str, reading: CounterReading, now: int) -> JSONResponse:
    """429 for a refused charge: the scope that refused, its limit and its real reset moment,
    with Retry-After and the IETF RateLimit-* headers.

    The headers wait until `retry_at`, the first moment the counter takes the next unit: its
    window's end for a fixed counter (its `resets_at`), sooner for a sliding or gcra one (for
    gcra, the real time until the next allowed hit, not until it is full again). A counter
    that never takes one (a limit of 0) waits until its `resets_at`."""
    retry_at = reading.resets_at if reading.retry_at is None else reading.retry_at
    wait = max(0, -(-(retry_at - now) // 1000))  # whole seconds, rounded up
    limit = reading.limit if reading.limit is not None else reading.used
    return error_response(
        429,
        "quota_exceeded",
        f"the {scope} quota of {limit} is used up until {iso_utc(retry_at)}",
        headers={
            "Retry-After": str(wait),
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(wait),
        },
        scope=scope,
        limit=limit,
        remaining=0,
        resets_at=iso_utc(reading.resets_at),
    )


def response_for(exc: SessionaryError) -> JSONResponse:
    """The response for one of sessionary's own errors."""
    if isinstance(exc, StoreUnavailable):
        return unavailable_response("the session store is unavailable; try again shortly")
    return error_response(exc.http_status, exc.code, str(exc), **exc.details())
