"""Limits on requests: bodies larger than a limit are refused with 413 JSON before the handler
reads them (`BodyLimit`); the bytes of work in flight on a route are bounded (`ByteBudget`),
so past it a request is answered 503 `overloaded` with Retry-After instead of being held."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.http.errors import JSONResponse, ResponseError, error_response

#: seconds an overloaded route tells a client to wait
RETRY_AFTER_OVERLOADED = 1


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await self._refuse(scope, receive, send)
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the request body is over {self.max_body} bytes",
            limit=self.max_body,
        )
        await response(scope, receive, send)


class ByteBudget:
    """Requests in flight on a route, counted by their bodies' declared size (Content-Length,
    else `unknown`: the largest body `BodyLimit` lets through): at most `capacity` bytes at a
    time, except that one request alone always fits. The memory a route's requests hold is
    then their bodies' size in flight times what handling a byte costs, whatever the load."""

    def __init__(self, capacity: int, unknown: int) -> None:
        self.capacity = capacity
        self.unknown = unknown
        self.used = 0

    @contextmanager
    def hold(self, scope: Scope) -> Iterator[None]:
        """Reserve the request's size for the block, or raise a `ResponseError` with 503
        `overloaded` and Retry-After when the budget is spent."""
        cost = self.unknown
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                cost = min(int(value), self.unknown)
        if self.used and self.used + cost > self.capacity:
            raise ResponseError(overloaded(f"over {self.capacity} bytes of requests in flight"))
        self.used += cost
        try:
            yield
        finally:
            self.used -= cost


def overloaded(message: str) -> JSONResponse:
    return error_response(
        503,
        "overloaded",
        f"{message}; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_OVERLOADED)},
        retry_after=RETRY_AFTER_OVERLOADED,
    )
