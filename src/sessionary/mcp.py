"""Resumable MCP streams: an `EventStore` for the MCP Python SDK's Streamable HTTP transport,
kept in sessionary's event logs, so a client that lost its connection resumes where it was
(Last-Event-ID), on this replica or on any other that shares the store.

    pip install 'sessionary[mcp]'

    store = await sessionary.connect("redis://localhost:6379/0")
    events = StoreEventStore(store)
    server = MCPServer("demo")                       # or a low-level `mcp.server.Server`
    app = events.wrap(server.streamable_http_app(event_store=events))
    # or: manager = StreamableHTTPSessionManager(server, event_store=events)
    #     Mount("/mcp", app=events.wrap(manager.handle_request))

Why `wrap`: the SDK tells an event store only a stream id, which is a JSON-RPC request id
("1", "2", ...) or "_GET_stream", so every MCP session has the same ones; the store is never
told whose stream it is. `wrap` puts the MCP session in a context variable around each request
(from its `mcp-session-id` header, or, for the request that opens a session, from the id the
SDK answers with), and the SDK's message loop of a session inherits it from the request that
opened the session. Without it `store_event` raises, rather than mix two sessions' events;
for transports you build yourself, run each one's `connect()` and `handle_request()` inside
`bind(mcp_session_id)`.

Keying: each stream of each MCP session gets its own log, a session of the namespace (default
"mcp.streams") with a fresh random id. The process that runs an MCP session is the only one that
writes its logs, and it picks a stream's log id once, in one step with no await between looking
and choosing, so concurrent first events of a stream share it; they all create it, and
`SessionExists` means another one did first. The log's subject is the MCP session id and its
data names the stream and the session's random group (which this process uses to recognise
its own sessions). Two MCP sessions never share a log, however their stream ids collide.

Event ids are "<log id>/<cursor>", e.g. "Zm9v...(43 characters)/17-1a2b3c4d": enough for any
replica to find the log, unguessable (a log id has 256 random bits), and checked strictly on
replay: malformed, forged (the cursor's tag binds it to its log), from another MCP session,
expired, from the log's future or trimmed away all replay nothing and return None (logged at
warning), as the SDK expects of an id it does not know. Messages are stored as the SDK writes
them on the wire (`model_dump(mode="json", by_alias=True, exclude_unset=True)`) and validated
again on replay, so they come back exactly. Priming events (message None) are stored too;
replaying after one sends what followed it, and priming events themselves are never sent.

Replicas: behind a load balancer without sticky sessions, a client's reconnect may reach a
replica that does not hold its MCP session (the SDK's session manager keeps sessions in memory
and answers 404 for others). `wrap` answers such a GET with Last-Event-ID itself: it checks
that the event id belongs to that MCP session, replays what is stored, and follows the log as
the replica running the request appends to it, without gap or duplicate, until the request's
response, or until nothing came for `tail_idle` (the client then reconnects). Other requests
of a session (POST, DELETE) still need the replica that holds it.

Lifetimes: every log lives `ttl` from its creation (appends do not extend it). A stream that
outlives it goes on in a fresh log (with a new id), so an old event id never names a newer
event. Each log keeps its last `max_events` events; a client whose position was trimmed away
cannot resume that stream. A successful DELETE of a session through `wrap` deletes its logs.
A message that cannot be stored (over the namespace's `max_payload`, or not JSON) is still
delivered live; the log keeps a marker in its place, and a replay stops there (None) rather
than skip it.

Limits: on the replica that holds the session, the SDK replays and then attaches the live
stream; a message stored in between is kept but not sent live (the SDK's own window; a reply
from another replica follows the log and has none). The stream of the initialize request,
which starts before the session has an id, resumes only on the replica that holds the session.
If the store fails, `store_event` does not raise (an error would stop the SDK's message loop of
the session, and everything it sends): the message goes out with an id that replays nothing,
the stream's next stored event is preceded by a marker, and a replay across the hole stops
there (None) instead of skipping it; this is logged as an error. Given an empty answer (an id
that replays nothing), the SDK's client, reconnecting by itself, tries again with the same id
once per retry interval.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from sessionary.extras import needs

with needs("mcp", "sessionary.mcp"):
    from mcp.server.streamable_http import (
        GET_STREAM_KEY,
        LAST_EVENT_ID_HEADER,
        MCP_SESSION_ID_HEADER,
        EventCallback,
        EventId,
        EventMessage,
        EventStore,
        StreamId,
    )
    from mcp_types import JSONRPCError, JSONRPCMessage, JSONRPCResponse, jsonrpc_message_adapter
    from pydantic import ValidationError as PydanticValidationError
    from sse_starlette import ServerSentEvent
    from starlette.datastructures import Headers
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary import ids
from sessionary.errors import (
    InvalidCursor,
    InvalidSessionId,
    PayloadTooLarge,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
    ValidationError,
)
from sessionary.http.sse import BoundedEventStream
from sessionary.logs import Cursor, Event, LogEvent, LogReset
from sessionary.store import FOLLOW_PAGE_BYTES, Store

__all__ = ["StoreEventStore"]

logger = logging.getLogger(__name__)

MESSAGE = "message"
PRIMING = "priming"
UNSTORABLE = "unstorable"

_PAGE = 500
_MAX_EVENT_ID = 128  # a log id (43) + "/" + a cursor (at most 27); anything longer is not ours
_SESSION_ID_RE = re.compile(r"[\x21-\x7e]{1,256}")  # the SDK's rule, within a subject's length
_ATTEMPTS = 4


@dataclass(eq=False)
class _StreamLog:
    """Where one stream of one MCP session is appended now."""

    log_id: str = field(default_factory=ids.new_id)
    ready: bool = False  # created (by this call or another)
    gap: bool = False  # an event of the stream could not be stored since the last one was


@dataclass(eq=False)
class _Binding:
    """One MCP session as this process runs it: a random group (recorded in its logs, so this
    process knows them for its own even before the session has an id), the session's id once
    known, and where each of its streams is appended."""

    group: str
    session: str | None
    streams: dict[str, _StreamLog] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Opened:
    log_id: str
    cursor: Cursor
    stream_id: str


class StoreEventStore(EventStore):
    """An MCP `EventStore` on a sessionary `Store` (see the module's docstring).

    `ttl` is each stream log's life, `max_events` how many events each keeps, `max_payload`
    the largest encoded message it stores (default: the store's), `tail_idle` how long a
    replica serving a reconnect for another one waits for news before ending the response.
    """

    def __init__(
        self,
        store: Store,
        *,
        namespace: str = "mcp.streams",
        ttl: timedelta = timedelta(hours=1),
        max_events: int = 10_000,
        max_payload: int | None = None,
        tail_idle: timedelta = timedelta(minutes=5),
    ) -> None:
        if not isinstance(tail_idle, timedelta) or tail_idle <= timedelta(0):
            raise ValueError("tail_idle is a positive datetime.timedelta")
        self._ns = store.namespace(
            namespace,
            absolute_ttl=ttl,
            log_max_length=max_events,
            max_payload=max_payload,
        )
        self._tail_idle_s = tail_idle.total_seconds()
        # Per instance, so two stores in one process (two MCP apps, or tests' replicas) never
        # see each other's bindings.
        self._bound: ContextVar[_Binding | None] = ContextVar(
            f"sessionary.mcp.binding.{id(self):x}", default=None
        )
        # The MCP sessions this process runs, while something (the session's message loop, a
        # request in flight) still holds their binding.
        self._local: weakref.WeakValueDictionary[str, _Binding] = weakref.WeakValueDictionary()

    # -- binding requests to MCP sessions --------------------------------------------------

    @contextmanager
    def bind(self, mcp_session_id: str) -> Iterator[None]:
        """Store and replay events for the MCP session `mcp_session_id` inside the block
        (tasks started in it inherit the binding). `wrap` does this for you.

        Run the session's whole transport inside one block (its `connect()`, which starts the
        message loop, holds the binding for the session's life): once no block of a session
        runs any more, a new one writes its streams into new logs (the old ones still replay
        for the session)."""
        if not isinstance(mcp_session_id, str) or not _SESSION_ID_RE.fullmatch(mcp_session_id):
            raise ValueError("an MCP session id is 1 to 256 visible ASCII characters")
        binding = self._local.get(mcp_session_id)
        if binding is None:
            binding = _Binding(_new_group(), mcp_session_id)
            self._local[mcp_session_id] = binding
        with self._binding(binding):
            yield

    @contextmanager
    def _binding(self, binding: _Binding) -> Iterator[None]:
        token = self._bound.set(binding)
        try:
            yield
        finally:
            self._bound.reset(token)

    def wrap(self, app: ASGIApp, *, resume_elsewhere: bool = True) -> ASGIApp:
        """The ASGI app `app` (an MCP Streamable HTTP endpoint, or an app whose only endpoint
        is one) with its requests bound to their MCP sessions, and, with `resume_elsewhere`,
        reconnects for sessions that live on another replica answered from the store.

        Such an answer checks the session id and the event id (both unguessable), not the
        credential: with the SDK's authentication on, the replica that holds a session also
        checks that a request comes with the credential that opened it. Turn
        `resume_elsewhere` off (and keep sessions sticky) if that matters to you."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            headers = Headers(scope=scope)
            session_id = headers.get(MCP_SESSION_ID_HEADER)
            if session_id is None:
                await self._opening(app, scope, receive, send)
                return
            binding = self._local.get(session_id)
            if binding is not None:
                await self._in_session(app, binding, scope, receive, send)
                return
            last_event_id = headers.get(LAST_EVENT_ID_HEADER)
            if (
                resume_elsewhere
                and scope["method"] == "GET"
                and last_event_id
                and _SESSION_ID_RE.fullmatch(session_id)
                and await self._resume_elsewhere(session_id, last_event_id, scope, receive, send)
            ):
                return
            await app(scope, receive, send)  # not a session of ours: the SDK answers (404)

        return wrapped

    async def _opening(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """A request without a session id (an initialize): the SDK names the session in its
        answer; whatever that request starts (the session's message loop) shares the binding."""
        binding = _Binding(_new_group(), None)

        async def learn(message: Message) -> None:
            if message["type"] == "http.response.start" and binding.session is None:
                found = Headers(raw=message.get("headers", [])).get(MCP_SESSION_ID_HEADER)
                if found is not None and _SESSION_ID_RE.fullmatch(found):
                    binding.session = found
                    self._local[found] = binding
            await send(message)

        with self._binding(binding):
            await app(scope, receive, learn)

    async def _in_session(
        self, app: ASGIApp, binding: _Binding, scope: Scope, receive: Receive, send: Send
    ) -> None:
        ending = scope["method"] == "DELETE"

        async def watch(message: Message) -> None:
            if ending and message["type"] == "http.response.start" and message["status"] == 200:
                await self._forget(binding)  # before the client hears its session ended
            await send(message)

        with self._binding(binding):
            await app(scope, receive, watch if ending else send)

    async def _forget(self, binding: _Binding) -> None:
        """The client ended its MCP session: its streams cannot be resumed any more."""
        if binding.session is None:
            return
        try:
            await self._ns.revoke_subject(binding.session)
        except StoreUnavailable as exc:
            logger.warning("could not delete the logs of an ended MCP session: %s", exc)

    # -- EventStore -------------------------------------------------------------------------

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        """Append `message` (None: a priming event) to the stream's log; its event id."""
        binding = self._bound.get()
        if binding is None:
            raise RuntimeError(
                "StoreEventStore.store_event called outside an MCP session: serve the MCP app "
                "through StoreEventStore.wrap(app), or run the transport inside bind(session_id)"
            )
        if message is None:
            kind, data = PRIMING, None
        else:
            kind, data = MESSAGE, message.model_dump(mode="json", by_alias=True, exclude_unset=True)
        stream = _StreamLog()
        for _ in range(_ATTEMPTS):
            found = binding.streams.get(stream_id)
            stream = binding.streams.setdefault(stream_id, stream) if found is None else found
            try:
                if not stream.ready:
                    await self._create(stream.log_id, stream_id, binding)
                    stream.ready = True
                cursor = await self._append(stream, kind, data)
            except StoreUnavailable as exc:
                return _unstored(stream, exc)
            except SessionNotFound:
                # The log expired (or was deleted): the stream goes on in a fresh one, with a
                # new id, so no old event id can name a new event. Whoever notices first
                # moves it, once.
                if binding.streams.get(stream_id) is stream:
                    del binding.streams[stream_id]
                stream = _StreamLog()
                continue
            if _answers(message, stream_id) and binding.streams.get(stream_id) is stream:
                # The request's stream is complete: forget it, so a session's memory does not
                # grow with its requests (a priming the SDK stores after a late replay opens a
                # log of its own, which a replay after it finds complete).
                del binding.streams[stream_id]
            return f"{stream.log_id}/{cursor}"
        return _unstored(stream, StoreUnavailable("the stream's log kept disappearing"))

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        """Send each message stored after `last_event_id` in its stream, oldest first, and
        return the stream id; None (having sent nothing, or what could be sent before the
        log turned out trimmed) if the id is not one this MCP session can resume from."""
        binding = self._bound.get()
        if binding is None:
            logger.warning("replay refused: no MCP session is bound (serve the app via wrap)")
            return None
        opened = await self._open(last_event_id, binding.group, binding.session)
        if opened is None:
            return None
        after = opened.cursor
        while True:
            try:
                page = await self._ns.read(
                    opened.log_id, after=after, limit=_PAGE, max_bytes=FOLLOW_PAGE_BYTES
                )
            except (InvalidCursor, SessionNotFound, StoreUnavailable) as exc:
                _refuse(last_event_id, f"its log cannot be read ({exc})")
                return None
            if page.reset is not None:
                _refuse(last_event_id, "events after it were trimmed away")
                return None
            for event in page.events:
                if event.type == PRIMING:
                    continue
                message = _message_of(event)
                if message is None:
                    _refuse(last_event_id, f"event {event.cursor} cannot be replayed")
                    return None
                await send_callback(EventMessage(message, f"{opened.log_id}/{event.cursor}"))
            if not page.events or page.last is None or page.events[-1].cursor >= page.last:
                return opened.stream_id
            after = page.events[-1].cursor

    # -- serving a reconnect for a session another replica holds -----------------------------

    async def _resume_elsewhere(
        self, session_id: str, last_event_id: str, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Answer the reconnect from the store if `last_event_id` is one of this session's;
        False (nothing sent) if not."""
        opened = await self._open(last_event_id, None, session_id)
        if opened is None:
            return False
        try:
            page = await self._ns.read(
                opened.log_id, after=opened.cursor, limit=_PAGE, max_bytes=FOLLOW_PAGE_BYTES
            )
        except (InvalidCursor, SessionNotFound, StoreUnavailable) as exc:
            _refuse(last_event_id, f"its log cannot be read ({exc})")
            return False
        if page.reset is not None:
            _refuse(last_event_id, "events after it were trimmed away")
            return False
        response = BoundedEventStream(
            self._tail(opened, page.events),
            headers={MCP_SESSION_ID_HEADER: session_id, "Cache-Control": "no-cache, no-transform"},
        )
        await response(scope, receive, send)
        return True

    async def _tail(self, opened: _Opened, first: list[LogEvent]) -> AsyncIterator[ServerSentEvent]:
        """The events after `opened.cursor`: `first`, then the log followed, until the
        request's response, a gap, the log's end, or `tail_idle` without news."""
        position = opened.cursor
        for event in first:
            sse, done = self._sse(opened, event)
            if sse is not None:
                yield sse
            if done:
                return
            position = event.cursor
        follow = cast(
            "AsyncGenerator[LogEvent | LogReset, None]",
            self._ns.follow(opened.log_id, after=position),
        )
        try:
            while True:
                try:
                    async with asyncio.timeout(self._tail_idle_s):
                        item = await anext(follow)
                except (TimeoutError, StopAsyncIteration):
                    return  # quiet, or the log ended: the client reconnects if it needs to
                if isinstance(item, LogReset):
                    logger.warning("stopped following an MCP stream: events were trimmed away")
                    return
                sse, done = self._sse(opened, item)
                if sse is not None:
                    yield sse
                if done:
                    return
        finally:
            await follow.aclose()

    def _sse(self, opened: _Opened, event: LogEvent) -> tuple[ServerSentEvent | None, bool]:
        """The SSE form of a stored event (None for a priming one) and whether it ends the
        stream (a response, or an event that cannot be sent)."""
        if event.type == PRIMING:
            return None, False
        message = _message_of(event)
        if message is None:
            logger.warning("stopped replaying an MCP stream: event %s cannot be sent", event.cursor)
            return None, True
        sse = ServerSentEvent(
            data=message.model_dump_json(by_alias=True, exclude_unset=True),
            event="message",
            id=f"{opened.log_id}/{event.cursor}",
        )
        return sse, _answers(message, opened.stream_id)

    # -- helpers ----------------------------------------------------------------------------

    async def _create(self, log_id: str, stream_id: str, binding: _Binding) -> None:
        with suppress(SessionExists):  # another call for this stream created it first
            await self._ns.create(
                id=log_id,
                subject=binding.session,
                data={"stream": stream_id, "group": binding.group},
            )

    async def _append(self, stream: _StreamLog, kind: str, data: Any) -> Cursor:
        """Append one event (after a marker, if the last one of this stream was lost)."""
        lost = [Event(UNSTORABLE, {"reason": "the store was unavailable"})] if stream.gap else []
        try:
            cursors = await self._ns.extend(stream.log_id, [*lost, Event(kind, data)])
        except (PayloadTooLarge, ValidationError) as exc:
            logger.warning("an MCP message could not be stored (it will not be resumable): %s", exc)
            marker = Event(UNSTORABLE, {"reason": str(exc)[:200]})
            cursors = await self._ns.extend(stream.log_id, [*lost, marker])
        stream.gap = False
        cursor = cursors[-1]
        if cursor is None:  # only a producer's retry has no cursor, and there is no producer
            raise StoreUnavailable("the event was not stored")
        return cursor

    async def _open(
        self, event_id: object, group: str | None, session: str | None
    ) -> _Opened | None:
        """The log, position and stream an event id names, if the MCP session (`group` on
        this replica, or `session`) may read it; else None, logged."""
        if not isinstance(event_id, str) or len(event_id) > _MAX_EVENT_ID:
            _refuse(event_id, "it is not an event id of this store")
            return None
        log_id, slash, text = event_id.partition("/")
        try:
            if not slash:
                raise InvalidCursor("no '/'")
            ids.validate(log_id)
            cursor = Cursor.parse(text, self._ns.name, log_id)
        except (InvalidSessionId, InvalidCursor):
            _refuse(event_id, "it is malformed or forged")
            return None
        try:
            log = await self._ns.get(log_id)
        except StoreUnavailable as exc:
            _refuse(event_id, f"the store is unavailable ({exc})")
            return None
        if log is None:
            _refuse(event_id, "its log is unknown or expired")
            return None
        stream_id = log.data.get("stream")
        owner_group = log.data.get("group")
        mine = (group is not None and owner_group == group) or (
            session is not None and log.subject == session
        )
        if not isinstance(stream_id, str) or not mine:
            _refuse(event_id, "it belongs to another MCP session")
            return None
        return _Opened(log_id, cursor, stream_id)


def _answers(message: JSONRPCMessage | None, stream_id: str) -> bool:
    """Whether `message` is the response that completes the request stream `stream_id`."""
    return (
        stream_id != GET_STREAM_KEY
        and isinstance(message, JSONRPCResponse | JSONRPCError)
        and message.id is not None
        and str(message.id) == stream_id
    )


def _unstored(stream: _StreamLog, exc: Exception) -> EventId:
    """The store failed: the SDK sends the message anyway (raising would stop the session's
    message loop); the stream's next event is preceded by a marker, so no replay skips it."""
    stream.gap = True
    logger.error("an MCP message was sent but not stored (%s); replays stop at its place", exc)
    return f"{stream.log_id}/unstored"  # not a cursor: it replays nothing


def _new_group() -> str:
    return secrets.token_urlsafe(32)


def _message_of(event: LogEvent) -> JSONRPCMessage | None:
    if event.type != MESSAGE:
        return None
    try:
        return jsonrpc_message_adapter.validate_python(event.data, by_name=False)
    except PydanticValidationError:
        return None


def _refuse(event_id: object, why: str) -> None:
    shown = event_id[:8] if isinstance(event_id, str) else type(event_id).__name__
    logger.warning("not replaying after event id %r...: %s", shown, why)
