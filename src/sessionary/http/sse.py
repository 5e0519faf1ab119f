"""Server-Sent Event streams whose readers cannot make the process hold their output.

A stream writes an event only once the transport took the previous ones: uvicorn pauses a
writer whose socket buffer passed its high-water mark (64 KiB) until the client reads. So a
reader that stops reading holds at most that buffer, the one event being written and the page
its stream is replaying (`sessionary.store.FOLLOW_PAGE_BYTES`). If a write (an event or a
heartbeat) makes no progress for `send_timeout_s`, the reader is disconnected; it resumes with
`Last-Event-ID` like after any cut.

That cut is expected, so it is logged once, as a warning. An ASGI app has no way of its own to
drop a connection, and a stream returning before its response ended makes uvicorn log an error
("ASGI callable returned without completing response") and then close the connection
gracefully, still holding what it had not sent. So a server may offer the scope extension
`ABORT_EXTENSION`, `{"abort": f}`: `f()` drops the connection at once, unsent output
included, and the server takes the client as gone, as after its own disconnect
(`sessionary serve` offers it: see `sessionary.web.server`). Without it (another server)
the stream just returns, and that server says what it says.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Mapping
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from sessionary.errors import StoreUnavailable

#: seconds a stream's write may wait for its reader before the reader is disconnected
SEND_TIMEOUT_S = 30.0
#: the ASGI scope extension through which a server lets a response drop its connection
ABORT_EXTENSION = "sessionary.abort"

log = logging.getLogger("sessionary.http")


class BoundedEventStream(EventSourceResponse):
    """An `EventSourceResponse` that disconnects a reader whose writes stall for
    `send_timeout_s` (see the module docstring)."""

    def __init__(
        self,
        content: AsyncIterable[ServerSentEvent],
        *,
        send_timeout_s: float = SEND_TIMEOUT_S,
        ping: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, ping=ping, headers=headers, send_timeout=send_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning(
                "an event stream's reader took nothing for %s s: disconnected", self.send_timeout
            )
            abort = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
            if abort is not None:
                abort()


def unavailable_event(exc: StoreUnavailable, last: object) -> ServerSentEvent:
    """The last event of a stream whose store stopped answering: `event: error` with the
    stable code, and `last`, the cursor to resume after (also the stream's `Last-Event-ID`)."""
    payload: dict[str, Any] = {
        "error": StoreUnavailable.code,
        "message": f"the store does not answer: {exc}; resume with Last-Event-ID",
        "last": None if last is None else str(last),
    }
    return ServerSentEvent(event="error", data=orjson.dumps(payload).decode())
