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
disconnected. A resume point at or past the run's `end` is answered `204 No Content`, which
makes a browser's `EventSource` stop reconnecting.

Browsers: `SessionAuthenticator` lets the application's own session cookie authenticate (the
session's subject is the caller; `FirstOf` combines it with Bearer keys). With `origins`,
pages of those exact origins may call with credentials (CORS: preflights answered on every
route, `Access-Control-Allow-Origin` on every response to them, the event stream and errors
included); other origins get no CORS header, so their browser keeps the answer from them.
A POST authenticated by a cookie (any request without a Bearer key) must prove it comes from
a page of this origin or an allowed one, by its `Origin`, else, without one, by
`Sec-Fetch-Site: same-origin`; otherwise 403 `csrf_rejected` before anything happens. Why
these headers and not a CSRF token: see the README, "A browser page following a run".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Annotated, Any, Literal, Protocol

import orjson
from fastapi import APIRouter, Header, Path, Query, Request, Security
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from sse_starlette import ServerSentEvent
from starlette.responses import Response

from sessionary.errors import StoreUnavailable
from sessionary.http.bearer import BearerKeys, presented_key, unauthorized
from sessionary.http.csrf import require_same_origin
from sessionary.http.errors import JSONResponse
from sessionary.http.handlers import JSONErrorRoute
from sessionary.http.openapi import (
    LOG_CURSOR,
    STORE,
    USER_KEY,
    Integral,
    errors,
    id_pattern,
    session_cookie,
)
from sessionary.http.sse import SEND_TIMEOUT_S, BoundedEventStream, unavailable_event
from sessionary.logs import Cursor, LogReset
from sessionary.runs.model import TERMINAL, Run, RunNotFound
from sessionary.runs.service import MAX_RETRIES, Runs
from sessionary.runs.settings import RunsUser, exact_origin
from sessionary.session_request import RequestSession
from sessionary.store import Namespace

HEARTBEAT_S = 15
# one event of the stream, as the OpenAPI document describes it (OpenAPI 3.1: the schema of a
# text/event-stream is each event's); heartbeats are comments
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the event's cursor"},
        "event": {"type": "string", "description": "its type: status, chunk, end, reset..."},
        "data": {"type": "string", "description": "its JSON data"},
        "retry": {"type": "integer"},
    },
}
# the ids of the runs feature's namespaces (`sessionary.runs.service`)
CONVERSATION_ID = Path(
    description="a conversation id: conv_ and 43 characters",
    json_schema_extra={"pattern": id_pattern("conv_")},
)
RUN_ID = Path(
    description="a run id: run_ and 43 characters",
    json_schema_extra={"pattern": id_pattern("run_")},
)
# empty: from the start, as without it (what a client that has seen no event may send)
CURSOR_SCHEMA = {"pattern": f"^(?:{LOG_CURSOR.strip('^$')})?$"}
ConversationId = Annotated[str, CONVERSATION_ID]
RunId = Annotated[str, RUN_ID]
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


class SessionAuthenticator:
    """The subject of the live session named by the request's session cookie (the one
    sessionary's `SessionMiddleware`, or the application, sets), so a browser page, whose
    `EventSource` cannot send an `Authorization` header, calls as its logged-in user. None
    without the cookie, for an unknown, expired, malformed or unreadable id, and for a
    session without a subject (not logged in); never creates a session. It touches the
    session as the middleware does (one round trip, sliding its idle expiry): a user
    following a long run is active, and is not logged out halfway. The store down is a
    `StoreUnavailable` (503) whatever the namespace's outage policy: failing open here
    would let no one in anyway, and saying so tells the client to try again.

    `namespace` is the sessions' `Namespace`, or a function returning it (the store may
    open after the router is built). `cookie_name` is the cookie's name; its `__Host-`
    form (what the middleware sends over https) is read first when the browser sends it."""

    def __init__(
        self, namespace: Namespace | Callable[[], Namespace], cookie_name: str = "session"
    ) -> None:
        self._namespace = namespace
        self._names = (f"__Host-{cookie_name}", cookie_name)

    async def __call__(self, request: Request) -> str | None:
        presented = next(
            (request.cookies[name] for name in self._names if request.cookies.get(name)), None
        )
        if presented is None:
            return None
        namespace = self._namespace
        loaded = await RequestSession.load(
            namespace if isinstance(namespace, Namespace) else namespace(), presented
        )
        return loaded.subject


class FirstOf:
    """The first subject any of `authenticators` finds, asked in order (Bearer keys
    first, then the session cookie, say)."""

    def __init__(self, *authenticators: Authenticator) -> None:
        self._authenticators = authenticators

    async def __call__(self, request: Request) -> str | None:
        for authenticate in self._authenticators:
            subject = await authenticate(request)
            if subject is not None:
                return subject
        return None


_ALLOWED_HEADERS = "Content-Type, Last-Event-ID, Authorization"
_PREFLIGHT_MAX_AGE = "600"


class Cors:
    """The CORS and CSRF rules of the runs routes for an allow-list of exact origins
    (see the module docstring)."""

    def __init__(self, origins: Sequence[str]) -> None:
        if isinstance(origins, str):
            raise ValueError("origins is a list of origins, not one string")
        self.origins = frozenset(exact_origin(origin) for origin in origins)

    def allowed(self, request: Request) -> str | None:
        """The request's `Origin`, when it is in the allow-list."""
        origin = request.headers.get("origin")
        return origin if origin is not None and origin.lower() in self.origins else None

    def sign(self, request: Request, response: Response) -> None:
        """Let an allowed origin's page read `response`, with credentials."""
        if not self.origins:
            return
        response.headers.add_vary_header("Origin")
        origin = self.allowed(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"

    def preflight(self, request: Request, methods: str) -> Response:
        """The answer to an `OPTIONS` (a browser's preflight) at a path serving `methods`:
        what an allowed origin may send; to any other, nothing of CORS, so its browser
        refuses to send the request."""
        response = Response(status_code=204, headers={"Allow": methods})
        if self.allowed(request) is not None:
            response.headers["Access-Control-Allow-Methods"] = methods
            response.headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
        return response

    def check_same_origin(self, request: Request) -> None:
        """Refuse (403 `csrf_rejected`) a cookie-authenticated state change that no page of
        this origin or an allowed one made (`sessionary.http.csrf`)."""
        require_same_origin(request, self.origins)


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    multitask: Literal["reject", "enqueue", "interrupt"] = "reject"
    input: Any = None
    #: times a run whose worker died goes back to the queue before it ends as error
    retries: Integral = Field(0, ge=0, le=MAX_RETRIES)


class RunOut(BaseModel):
    runId: str
    conversationId: str
    status: str = Field(description="queued, running, completed, error, cancelled, interrupted")
    createdAt: int
    startedAt: int | None
    lastActivity: int
    finishedAt: int | None
    cursor: str | None = Field(description="the cursor of its last event")
    result: Any
    error: str | None
    attempt: int
    retries: int


class ConversationOut(BaseModel):
    conversationId: str
    owner: str
    createdAt: int


class ActiveSessionOut(BaseModel):
    sessionId: str = Field(description="the run's id")
    status: Literal["active", "completed", "idle"]
    cursor: str | None
    conversationId: str
    startedAt: int
    lastActivity: int


class TaskStatusOut(BaseModel):
    isActive: bool
    sessionId: str
    estimatedCompletion: int = Field(description="ms since the epoch: an estimate")
    conversationId: str
    status: str


class RunStatusOut(BaseModel):
    runId: str
    status: str


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
        "attempt": run.attempt,
        "retries": run.retries,
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
    origins: Sequence[str] = (),
    cookie: str | None = None,
) -> APIRouter:
    """The routes, over the `Runs` that `runs()` returns (known once the store is open).
    `on_start` is given each run started here (to hand it to a worker); event streams send
    a heartbeat comment every `heartbeat_s` seconds, and disconnect a reader that takes
    nothing for `send_timeout_s` (see `sessionary.http.sse`). `origins`: the exact origins
    whose pages may call with credentials (CORS); `"*"` is a ValueError. `cookie`: the name
    of the session cookie that `authenticate` accepts, for the document (None: none)."""
    cors = Cors(origins)

    async def caller(request: Request) -> str:
        """Who calls: authenticated once per request, before the body or a parameter is
        looked at (the routes' guard), then remembered for the handler."""
        subject = getattr(request.state, _CALLER, None)
        if subject is None:
            subject = await authenticate(request)
            if subject is None and presented_key(request) is not None:
                raise unauthorized("the runs key is not valid")  # as the admin API says it
            if subject is None:
                raise unauthorized("send the runs key as 'Authorization: Bearer <key>'")
            setattr(request.state, _CALLER, subject)
        return str(subject)

    async def admit(request: Request) -> None:
        """Before anything else: a preflight needs no credentials; any other request is
        authenticated, and a POST without a Bearer key (a cookie's, then) proves its
        origin. A Bearer key is exempt: no browser sends one by itself, and a page of
        another origin can set the header only if a preflight from our allow-list let it."""
        if request.method == "OPTIONS":
            return
        await caller(request)
        if request.method == "POST" and presented_key(request) is None:
            cors.check_same_origin(request)

    class RunsRoute(JSONErrorRoute):
        """A runs route: `admit` first; CORS headers on whatever it answers."""

        async def check(self, request: Request) -> None:
            await admit(request)

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            answer = super().get_route_handler()

            async def signed(request: Request) -> Response:
                response = await answer(request)
                cors.sign(request, response)
                return response

            return signed

    # a Bearer key or the session cookie (either: OpenAPI's alternatives)
    schemes: list[Callable[..., Any]] = [USER_KEY]
    if cookie is not None:
        schemes.append(session_cookie(cookie))
    router = APIRouter(
        prefix="/api/v1/conversations",
        tags=["runs"],
        route_class=RunsRoute,
        dependencies=[Security(scheme) for scheme in schemes],
        responses=errors(400, 401, 403, 413, 422, *STORE),
    )
    not_found = errors(404)

    async def own_run(request: Request, conversation_id: str, run_id: str) -> Run:
        subject = await caller(request)
        await runs().conversation(conversation_id, subject)
        run = await runs().get(run_id, subject)
        if run.conversation_id != conversation_id:
            raise RunNotFound("no such run in this conversation")
        return run

    @router.post("", status_code=201, response_model=ConversationOut)
    async def create_conversation(request: Request) -> Response:
        """A conversation owned by the caller."""
        made = await runs().create_conversation(await caller(request))
        return JSONResponse(
            {"conversationId": made.id, "owner": made.owner, "createdAt": made.created_at}, 201
        )

    @router.get(
        "/{conversation_id}/active-session",
        response_model=ActiveSessionOut,
        responses=errors(
            described={404: "no such conversation, or no run in it (code: no_active_session)"}
        ),
    )
    async def active_session(request: Request, conversation_id: ConversationId) -> Response:
        """The conversation's active run, else its latest run still retained."""
        run = await runs().latest(conversation_id, await caller(request))
        if run is None:
            return JSONResponse(
                {
                    "error": "No active session found",
                    "message": "No active session found",
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

    @router.get(
        "/{conversation_id}/task-status",
        response_model=TaskStatusOut,
        responses=errors(
            described={404: "no such conversation, or no run in it (code: no_background_task)"}
        ),
    )
    async def task_status(request: Request, conversation_id: ConversationId) -> Response:
        """Whether a run is going on, and an estimate of when it ends (from the durations of
        recent runs: an estimate, not a promise)."""
        run = await runs().latest(conversation_id, await caller(request))
        if run is None:
            return JSONResponse(
                {
                    "error": "No background task found",
                    "message": "No background task found",
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

    @router.post(
        "/{conversation_id}/runs",
        status_code=201,
        response_model=RunOut,
        responses={
            **not_found,
            **errors(described={409: "run_active: another run is active (activeRunId)"}),
        },
    )
    async def start(
        request: Request, conversation_id: ConversationId, body: StartIn | None = None
    ) -> Response:
        """Start a run; while another is active, `multitask` says: reject (409), enqueue, or
        interrupt (cancel it)."""
        body = body or StartIn()
        run = await runs().start(
            conversation_id,
            await caller(request),
            body.multitask,
            input=body.input,
            retries=body.retries,
        )
        if on_start is not None:
            on_start(run)
        return JSONResponse(run_json(run), 201)

    @router.get("/{conversation_id}/runs/{run_id}", response_model=RunOut, responses=not_found)
    async def read_run(
        request: Request, conversation_id: ConversationId, run_id: RunId
    ) -> Response:
        return JSONResponse(run_json(await own_run(request, conversation_id, run_id)))

    @router.post(
        "/{conversation_id}/runs/{run_id}/cancel",
        status_code=202,
        response_model=RunStatusOut,
        responses={
            **not_found,
            **errors(described={409: "run_finished: the run already ended (runId, status)"}),
        },
    )
    async def cancel(request: Request, conversation_id: ConversationId, run_id: RunId) -> Response:
        """Cancel the run (409 if it already ended)."""
        run = await own_run(request, conversation_id, run_id)
        cancelled = await runs().cancel(run.id, run.owner)
        return JSONResponse({"runId": run.id, "status": cancelled.status}, 202)

    @router.post(
        "/{conversation_id}/stop",
        status_code=202,
        response_model=RunStatusOut,
        responses={
            **not_found,
            **errors(described={409: "no run is active, or it already ended"}),
        },
    )
    async def stop(request: Request, conversation_id: ConversationId) -> Response:
        """Cancel the conversation's active run."""
        stopped = await runs().stop(conversation_id, await caller(request))
        return JSONResponse({"runId": stopped.id, "status": stopped.status}, 202)

    @router.get(
        "/{conversation_id}/runs/{run_id}/events",
        response_class=Response,  # not JSON: the 200 is declared below
        responses={
            200: {
                "description": "the events, then live ones until `end`",
                "content": {"text/event-stream": {"schema": SSE_EVENT}},
            },
            204: {"description": "the resume point is at or past the run's `end`"},
            **not_found,
        },
    )
    async def events(
        request: Request,
        conversation_id: ConversationId,
        run_id: RunId,
        after: Annotated[
            str | SkipJsonSchema[None],
            Query(description="resume after this cursor", json_schema_extra=CURSOR_SCHEMA),
        ] = None,
        last_event_id: Annotated[
            str | SkipJsonSchema[None],
            Header(
                alias="Last-Event-ID",
                description="resume after this cursor (what EventSource sends); over `after`",
                json_schema_extra=CURSOR_SCHEMA,
            ),
        ] = None,
    ) -> Response:
        """The run's events as Server-Sent Events: replayed after `Last-Event-ID` (or
        `?after=`, or from the start), then live until `end`."""
        run = await own_run(request, conversation_id, run_id)
        return await event_stream(
            runs(),
            run,
            last_event_id or after,
            heartbeat_s=heartbeat_s,
            send_timeout_s=send_timeout_s,
        )

    served: dict[str, set[str]] = {}
    for route in router.routes:
        if isinstance(route, APIRoute):
            served.setdefault(route.path, set()).update(route.methods or ())
    for path, methods in served.items():
        router.add_api_route(
            path.removeprefix(router.prefix),
            _preflight(cors, ", ".join(sorted(methods))),
            methods=["OPTIONS"],
            include_in_schema=False,
        )
    return router


async def event_stream(
    runs: Runs,
    run: Run,
    position: str | None,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> Response:
    """The answer to a request for `run`'s events, once the caller may read them: resumed
    after `position` (a cursor: `Last-Event-ID`, else `?after=`; None or empty: from the
    start), a 204 past its `end`, else the stream (see the module docstring). One function
    for the runs API and the console (`sessionary.web.console.runs`), so both streams are
    the same. A cursor that is malformed or not this run's raises its 400 here, before the
    stream starts."""
    cursor = None
    if position:
        cursor = Cursor.parse(position, runs.runs.name, run.id)
        await runs.runs.read(run.id, after=cursor, limit=1)
        if run.status in TERMINAL and run.cursor is not None and cursor >= run.cursor:
            # past the `end`: nothing will ever come, and a 204 stops EventSource
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return BoundedEventStream(
        _stream(runs, run.id, cursor),
        ping=heartbeat_s,
        send_timeout_s=send_timeout_s,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _preflight(cors: Cors, methods: str) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    """The `OPTIONS` route of a path serving `methods`: a browser's preflight."""

    async def preflight(request: Request) -> Response:
        return cors.preflight(request, methods)

    return preflight


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
