"""The runs API, under /api/v1/conversations, behind a pluggable authenticator.

    POST /api/v1/conversations                                  201 {"conversationId", ...}
    GET  /api/v1/conversations/{id}/active-session              the active (or latest) run
    GET  /api/v1/conversations/{id}/task-status                 is a run going on, and until when
    POST /api/v1/conversations/{id}/runs                        start one ({"multitask": ...})
    GET  /api/v1/conversations/{id}/runs/{run_id}               a run
    GET  /api/v1/conversations/{id}/runs/{run_id}/events        its events, text/event-stream
    POST /api/v1/conversations/{id}/runs/{run_id}/cancel        202
    POST /api/v1/conversations/{id}/stop                        202: cancel the active run

Every route checks the caller owns the conversation (401 without credentials, 403 for someone
else's, 404 for an unknown one, 503 with Retry-After when the store is down). Times are integer
ms since the epoch (UTC). The event stream carries each event's cursor as its SSE `id`, resumes
exclusively after `Last-Event-ID` (or `?after=`), sends a heartbeat comment every 15 s, and
closes after `end`; a client going away never cancels the run. If the store stops answering,
an `event: error` with `{"error": "store_unavailable", "last": <cursor>}` ends the stream (the
client resumes with `Last-Event-ID`); a reader that takes nothing for the send timeout is
disconnected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, Protocol

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sse_starlette import ServerSentEvent
from starlette.responses import Response

from sessionary.errors import StoreUnavailable
from sessionary.http.bearer import BearerKeys, unauthorized
from sessionary.http.errors import JSONResponse
from sessionary.http.handlers import guarded
from sessionary.http.sse import SEND_TIMEOUT_S, BoundedEventStream, unavailable_event
from sessionary.logs import Cursor, LogReset
from sessionary.runs.model import Run, RunNotFound
from sessionary.runs.service import Runs
from sessionary.runs.settings import RunsUser

HEARTBEAT_S = 15
# one event of the stream, as the OpenAPI document describes it
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the event's cursor"},
        "event": {"type": "string", "description": "its type: status, chunk, end, reset..."},
        "data": {"type": "string", "description": "its JSON data"},
        "retry": {"type": "integer"},
    },
}
_CALLER = "sessionary_runs_caller"
RETRY_MS = 3000


class Authenticator(Protocol):
    """Who is calling: a subject, or None when the request carries no valid credentials."""

    async def __call__(self, request: Request) -> str | None: ...


class ApiKeyAuthenticator:
    """`Authorization: Bearer <key>`, each key standing for a subject (compared in constant
    time against every key)."""

    def __init__(self, users: Sequence[RunsUser]) -> None:
        self._keys = BearerKeys((u.key.get_secret_value(), u.subject) for u in users)

    async def __call__(self, request: Request) -> str | None:
        return self._keys.match(request)


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    multitask: Literal["reject", "enqueue", "interrupt"] = "reject"
    input: Any = None


def run_json(run: Run) -> dict[str, Any]:
    return {
        "runId": run.id,
        "conversationId": run.conversation_id,
        "status": run.status,
        "createdAt": run.created_at,
        "startedAt": run.started_at,
        "lastActivity": run.last_activity_at,
        "finishedAt": run.finished_at,
        "cursor": None if run.cursor is None else str(run.cursor),
        "result": run.result,
        "error": run.error,
    }


def _public_status(run: Run) -> str:
    if run.active:
        return "active"
    return "completed" if run.status == "completed" else "idle"


def runs_router(
    runs: Callable[[], Runs],
    authenticate: Authenticator,
    on_start: Callable[[Run], object] | None = None,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> APIRouter:
    """The routes, over the `Runs` that `runs()` returns (known once the store is open).
    `on_start` is given each run started here (to hand it to a worker); event streams send
    a heartbeat comment every `heartbeat_s` seconds, and disconnect a reader that takes
    nothing for `send_timeout_s` (see `sessionary.http.sse`)."""

    async def caller(request: Request) -> str:
        """Who calls: authenticated once per request, before the body or a parameter is
        looked at (the routes' guard), then remembered for the handler."""
        subject = getattr(request.state, _CALLER, None)
        if subject is None:
            subject = await authenticate(request)
            if subject is None:
                raise unauthorized("send credentials: Authorization: Bearer <key>")
            setattr(request.state, _CALLER, subject)
        return str(subject)

    router = APIRouter(prefix="/api/v1/conversations", tags=["runs"], route_class=guarded(caller))

    async def own_run(request: Request, conversation_id: str, run_id: str) -> Run:
        subject = await caller(request)
        await runs().conversation(conversation_id, subject)
        run = await runs().get(run_id, subject)
        if run.conversation_id != conversation_id:
            raise RunNotFound("no such run in this conversation")
        return run

    @router.post("", status_code=201)
    async def create_conversation(request: Request) -> Response:
        """A conversation owned by the caller."""
        made = await runs().create_conversation(await caller(request))
        return JSONResponse(
            {"conversationId": made.id, "owner": made.owner, "createdAt": made.created_at}, 201
        )

    @router.get("/{conversation_id}/active-session")
    async def active_session(request: Request, conversation_id: str) -> Response:
        """The conversation's active run, else its latest run still retained."""
        run = await runs().latest(conversation_id, await caller(request))
        if run is None:
            return JSONResponse(
                {
                    "error": "No active session found",
                    "code": "no_active_session",
                    "conversationId": conversation_id,
                },
                404,
            )
        return JSONResponse(
            {
                "sessionId": run.id,
                "status": _public_status(run),
                "cursor": None if run.cursor is None else str(run.cursor),
                "conversationId": conversation_id,
                "startedAt": run.started_at if run.started_at is not None else run.created_at,
                "lastActivity": run.last_activity_at,
            }
        )

    @router.get("/{conversation_id}/task-status")
    async def task_status(request: Request, conversation_id: str) -> Response:
        """Whether a run is going on, and an estimate of when it ends (from the durations of
        recent runs: an estimate, not a promise)."""
        run = await runs().latest(conversation_id, await caller(request))
        if run is None:
            return JSONResponse(
                {
                    "error": "No background task found",
                    "code": "no_background_task",
                    "conversationId": conversation_id,
                },
                404,
            )
        return JSONResponse(
            {
                "isActive": run.active,
                "sessionId": run.id,
                "estimatedCompletion": await runs().estimated_completion(run),
                "conversationId": conversation_id,
                "status": run.status,
            }
        )

    @router.post("/{conversation_id}/runs", status_code=201)
    async def start(
        request: Request, conversation_id: str, body: StartIn | None = None
    ) -> Response:
        """Start a run; while another is active, `multitask` says: reject (409), enqueue, or
        interrupt (cancel it)."""
        body = body or StartIn()
        run = await runs().start(
            conversation_id, await caller(request), body.multitask, input=body.input
        )
        if on_start is not None:
            on_start(run)
        return JSONResponse(run_json(run), 201)

    @router.get("/{conversation_id}/runs/{run_id}")
    async def read_run(request: Request, conversation_id: str, run_id: str) -> Response:
        return JSONResponse(run_json(await own_run(request, conversation_id, run_id)))

    @router.post("/{conversation_id}/runs/{run_id}/cancel", status_code=202)
    async def cancel(request: Request, conversation_id: str, run_id: str) -> Response:
        """Cancel the run (409 if it already ended)."""
        run = await own_run(request, conversation_id, run_id)
        cancelled = await runs().cancel(run.id, run.owner)
        return JSONResponse({"runId": run.id, "status": cancelled.status}, 202)

    @router.post("/{conversation_id}/stop", status_code=202)
    async def stop(request: Request, conversation_id: str) -> Response:
        """Cancel the conversation's active run."""
        stopped = await runs().stop(conversation_id, await caller(request))
        return JSONResponse({"runId": stopped.id, "status": stopped.status}, 202)

    @router.get(
        "/{conversation_id}/runs/{run_id}/events",
        responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}},
    )
    async def events(
        request: Request, conversation_id: str, run_id: str, after: str | None = None
    ) -> Response:
        """The run's events as Server-Sent Events: replayed after `Last-Event-ID` (or
        `?after=`, or from the start), then live until `end`."""
        run = await own_run(request, conversation_id, run_id)
        position = request.headers.get("last-event-id") or after
        cursor = None
        if position:  # checked before the stream starts: a bad cursor is a 400, not a stream
            cursor = Cursor.parse(position, runs().runs.name, run.id)
            await runs().runs.read(run.id, after=cursor, limit=1)
        return BoundedEventStream(
            _stream(runs(), run.id, cursor),
            ping=heartbeat_s,
            send_timeout_s=send_timeout_s,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router


async def _stream(runs: Runs, run_id: str, after: Cursor | None) -> AsyncIterator[ServerSentEvent]:
    """The run's events; if the store stops answering, an `error` event saying so (with the
    cursor to resume after) ends the stream."""
    yield ServerSentEvent(comment="stream", retry=RETRY_MS)
    last = after
    try:
        async for item in runs.events(run_id, after):
            if isinstance(item, LogReset):
                run = await runs.get(run_id)
                payload = {
                    "status": run.status,
                    "first": None if item.first is None else str(item.first),
                    "last": None if item.last is None else str(item.last),
                }
                yield ServerSentEvent(event="reset", data=orjson.dumps(payload).decode())
                continue
            yield ServerSentEvent(
                id=str(item.cursor), event=item.type, data=orjson.dumps(item.data).decode()
            )
            last = item.cursor
    except StoreUnavailable as exc:
        yield unavailable_event(exc, last)
