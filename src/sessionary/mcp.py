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
data names the stream, the session's random group (which this process uses to recognise its
own sessions) and the replica's owner lease (below). Two MCP sessions never share a log,
however their stream ids collide.

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
response, until nothing came for `tail_idle` (the client then reconnects), or until the owner
of the stream went away (below). Other requests of a session (POST, DELETE) still need the
replica that holds it.

Owner leases: the replica that writes a stream may die mid-request, and then nothing would
ever end the stream for a client following it elsewhere. So each replica (each
`StoreEventStore`) holds an owner lease, a session of the namespace "<namespace>.owners" whose
idle ttl is `lease` (default 15 s), named in every log it creates; it takes the lease before it
stores an event, and renews it every `lease / 3` while it holds an MCP session. One lease per
replica, not per stream or per MCP session, because the SDK keeps sessions in the process's
memory: all of a replica's streams end with it, so one key renewed three times a lease answers
for all of them, and the store's writes grow with replicas, not with streams. A replica
following a stream for a client asks whether the owner's lease stands when it starts and then
every `lease_check_every` (`lease / 10`) without news; once it lapsed with the request
unanswered, the follower stores the request's JSON-RPC error response, code
`REQUEST_ABANDONED` (-32030, an implementation-defined server error, apart from the SDK's and
MCP's own codes) and message `REQUEST_ABANDONED_MESSAGE` ("the server running this request went
away; retry it"), with the request's id (a number if the stream id is one's decimal form, as
clients' ids nearly always are, else the string), sends it and ends the stream. Exactly once:
a response closes its log (a final event), so whichever comes first of the response and the
error responses of racing followers is stored, the others are refused, and every follower
sends the one stored. The bound (`lease_bound`): a client following the request learns it at
most `lease + lease / 10` (1.1 x the lease) after the owner died, plus a few round trips to the
store: the lease lapses at most one lease after its last renewal, which came before the death,
and a follower looks within `lease / 10` after that (a client that reconnects later learns it at
once). A reconnect for the GET stream of a session whose replica went away is not answered from
the store: the SDK says 404 (the session is gone). A replica cut off from the store for a lease
may find its requests given up once it is back: their streams go on in new logs, and a client
connected to it live still gets everything.

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
A request is given up only when its replica went away (its lease lapsed), not when it is slow,
and only for a client that follows it on another replica: a client connected to the replica
running it waits for the tool, however long it takes.
If the store fails, `store_event` does not raise (an error would stop the SDK's message loop of
the session, and everything it sends): the message goes out with an id that replays nothing,
the stream's next stored event is preceded by a marker, and a replay across the hole stops
there (None) instead of skipping it; this is logged as an error. Given an empty answer (an id
that replays nothing), the SDK's client, reconnecting by itself, tries again with the same id
once per retry interval.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import secrets
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
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
    from mcp_types import (
        ErrorData,
        JSONRPCError,
        JSONRPCMessage,
        JSONRPCResponse,
        jsonrpc_message_adapter,
    )
    from pydantic import ValidationError as PydanticValidationError
    from sse_starlette import ServerSentEvent
    from starlette.datastructures import Headers
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary import ids
from sessionary.clock import to_ms
from sessionary.errors import (
    InvalidCursor,
    InvalidSessionId,
    LogClosed,
    PayloadTooLarge,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
    ValidationError,
)
from sessionary.http.sse import BoundedEventStream
from sessionary.logs import Cursor, Event, LogEvent, LogReset
from sessionary.store import FOLLOW_PAGE_BYTES, Namespace, Store

__all__ = ["REQUEST_ABANDONED", "REQUEST_ABANDONED_MESSAGE", "StoreEventStore"]

logger = logging.getLogger(__name__)

MESSAGE = "message"
PRIMING = "priming"
UNSTORABLE = "unstorable"

_PAGE = 500
_MAX_EVENT_ID = 128  # a log id (43) + "/" + a cursor (at most 27); anything longer is not ours
_SESSION_ID_RE = re.compile(r"[\x21-\x7e]{1,256}")  # the SDK's rule, within a subject's length
_ATTEMPTS = 4
_INTEGER_RE = re.compile(r"0|-?[1-9][0-9]{0,17}")  # an int as str() writes it (18 digits at most)

#: The JSON-RPC error code of a request given up because the replica running it went away: an
#: implementation-defined server error (-32000..-32099), clear of the SDK's own (-32000
#: connection closed, -32001 request timeout) and of those MCP defines (-32002, -32020..-32022,
#: -32042), so a client can tell it apart and retry.
REQUEST_ABANDONED = -32030
#: The message of that error response.
REQUEST_ABANDONED_MESSAGE = "the server running this request went away; retry it"


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
    owner: str | None  # the owner lease of the replica that writes the log (None: no lease)


class _OwnerLease:
    """This replica's owner lease: a session of the owners namespace, whose idle ttl is the
    lease, renewed (touched) every third of it while the replica holds an MCP session. One per
    replica, not per stream or per MCP session: the SDK keeps sessions in the process's memory,
    so every stream a replica writes ends with it, and one key renewed three times a lease
    vouches for all of them (writes grow with replicas, not with streams or sessions)."""

    def __init__(self, owners: Namespace, lease: timedelta, holding: Callable[[], bool]) -> None:
        self.id = ids.new_id()
        self._owners = owners
        self._renew_every_ms = max(1, to_ms(lease) // 3)
        self._holding = holding
        self._renewed_at: int | None = None  # the store's clock when the last renewal began
        self._renewer: asyncio.Task[None] | None = None

    async def hold(self) -> None:
        """Make sure the lease stands for two thirds of a lease at least, and is kept renewed.
        Called before each event is stored, so no follower ever finds an event of a stream
        whose owner holds no lease (after a time without sessions, the lease had lapsed)."""
        renewed_at = self._renewed_at
        if renewed_at is None or self._owners.store.clock.now_ms() - renewed_at >= (
            self._renew_every_ms
        ):
            await self._renew()
        if self._renewer is None or self._renewer.done():
            # a context of its own: inheriting the caller's would keep its MCP session's
            # binding alive, and with it the lease, for ever
            self._renewer = asyncio.get_running_loop().create_task(
                self._keep(), name="sessionary-mcp-owner-lease", context=contextvars.Context()
            )

    async def _keep(self) -> None:
        """Renew every third of a lease while this replica holds an MCP session."""
        while True:
            await asyncio.sleep(self._renew_every_ms / 1000)
            if not self._holding():
                return  # the next event stored takes the lease again first
            try:
                await self._renew()
            except StoreUnavailable as exc:
                logger.warning("could not renew this replica's MCP owner lease: %s", exc)

    async def _renew(self) -> None:
        began = self._owners.store.clock.now_ms()
        if await self._owners.touch(self.id) is None:  # first, or lapsed: take it again
            with suppress(SessionExists):  # a concurrent renewal took it first
                await self._owners.create(id=self.id)
        self._renewed_at = began


class StoreEventStore(EventStore):
    """An MCP `EventStore` on a sessionary `Store` (see the module's docstring).

    `ttl` is each stream log's life, `max_events` how many events each keeps, `max_payload`
    the largest encoded message it stores (default: the store's), `tail_idle` how long a
    replica serving a reconnect for another one waits for news before ending the response.
    `lease` is this replica's owner lease (kept in the namespace "<namespace>.owners"): once
    it lapsed, another replica gives up the requests this one left unanswered (see the
    module's docstring, "Owner leases").
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
        lease: timedelta = timedelta(seconds=15),
    ) -> None:
        if not isinstance(tail_idle, timedelta) or tail_idle <= timedelta(0):
            raise ValueError("tail_idle is a positive datetime.timedelta")
        if not isinstance(lease, timedelta) or to_ms(lease) < 3:
            raise ValueError("lease is a datetime.timedelta of 3 ms or more")
        self._ns = store.namespace(
            namespace,
            absolute_ttl=ttl,
            log_max_length=max_events,
            max_payload=max_payload,
        )
        self._tail_idle_s = tail_idle.total_seconds()
        self.lease = lease
        self._owners = store.namespace(f"{namespace}.owners", idle_ttl=lease)
        # Per instance, so two stores in one process (two MCP apps, or tests' replicas) never
        # see each other's bindings.
        self._bound: ContextVar[_Binding | None] = ContextVar(
            f"sessionary.mcp.binding.{id(self):x}", default=None
        )
        # The MCP sessions this process runs, while something (the session's message loop, a
        # request in flight) still holds their binding.
        self._local: weakref.WeakValueDictionary[str, _Binding] = weakref.WeakValueDictionary()
        self._lease = _OwnerLease(self._owners, lease, lambda: bool(self._local))

    @property
    def lease_check_every(self) -> timedelta:
        """How often a replica following another's stream, with no news, asks whether the
        owner's lease lapsed: a tenth of the lease."""
        return self.lease / 10

    @property
    def lease_bound(self) -> timedelta:
        """How long after the replica running a request died a client following the request
        elsewhere gets the error response, at most: the lease lapses at most one lease after
        its last renewal (which came before the death), and a follower asks within
        `lease_check_every` after that: 1.1 x the lease (plus a few round trips to the store;
        a client that reconnects only after that gets it at once)."""
        return self.lease + self.lease_check_every

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
        answer = _answers(message, stream_id)
        stream = _StreamLog()
        for _ in range(_ATTEMPTS):
            found = binding.streams.get(stream_id)
            stream = binding.streams.setdefault(stream_id, stream) if found is None else found
            try:
                await self._lease.hold()
                if not stream.ready:
                    await self._create(stream.log_id, stream_id, binding)
                    stream.ready = True
                # the response closes the log: it or another replica's error response for
                # the same request (see _abandon), whichever comes first, and never both
                cursor = await self._append(stream, kind, data, final=answer)
            except StoreUnavailable as exc:
                return _unstored(stream, exc)
            except (SessionNotFound, LogClosed) as exc:
                # The log expired (or was deleted), or another replica closed it, giving the
                # request up while this replica's lease had lapsed: the stream goes on in a
                # fresh log, with a new id, so no old event id can name a new event. Whoever
                # notices first moves it, once.
                if isinstance(exc, LogClosed):
                    logger.warning(
                        "another replica gave up MCP request %r (this replica's owner lease had "
                        "lapsed); what it still sends is stored in a new log",
                        stream_id[:32],
                    )
                if binding.streams.get(stream_id) is stream:
                    del binding.streams[stream_id]
                stream = _StreamLog()
                continue
            if answer and binding.streams.get(stream_id) is stream:
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
        False (nothing sent) if not, or if it is of the session's GET stream and the replica
        that held the session went away (the SDK then answers 404: the session is gone)."""
        opened = await self._open(last_event_id, None, session_id)
        if opened is None:
            return False
        owner_gone = await self._owner_gone(opened)
        if owner_gone and opened.stream_id == GET_STREAM_KEY:
            _refuse(last_event_id, "the replica that held its MCP session went away")
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
            self._tail(opened, page.events, owner_gone),
            headers={MCP_SESSION_ID_HEADER: session_id, "Cache-Control": "no-cache, no-transform"},
        )
        await response(scope, receive, send)
        return True

    async def _tail(
        self, opened: _Opened, first: list[LogEvent], owner_gone: bool
    ) -> AsyncIterator[ServerSentEvent]:
        """The events after `opened.cursor`: `first`, then the log followed, until the
        request's response, a gap, the log's end, or `tail_idle` without news. While nothing
        comes, every `lease_check_every` it asks whether the owner's lease lapsed; once it
        did (`owner_gone`: it had already), an unanswered request is given up (`_abandon`),
        and the follow brings the error response stored, or whatever closed the log first;
        a GET stream just ends."""
        position = opened.cursor
        for event in first:
            sse, done = self._sse(opened, event)
            if sse is not None:
                yield sse
            if done:
                return
            position = event.cursor
        if owner_gone:
            await self._abandon(opened)
        checking = opened.owner is not None and not owner_gone
        follow = cast(
            "AsyncGenerator[LogEvent | LogReset, None]",
            self._ns.follow(opened.log_id, after=position),
        )
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + self._tail_idle_s
        check_s = self.lease_check_every.total_seconds()
        # the next item, awaited across checks: cancelling a wait for it would end the follow
        coming: asyncio.Future[LogEvent | LogReset] | None = None
        try:
            while True:
                if coming is None:
                    coming = asyncio.ensure_future(anext(follow))
                left = quiet_until - loop.time()
                wait_s = min(left, check_s) if checking else left
                await asyncio.wait({coming}, timeout=max(0.0, wait_s))
                if not coming.done():
                    if loop.time() >= quiet_until:
                        return  # quiet: the client reconnects if it needs to
                    if checking and await self._owner_gone(opened):
                        checking = False
                        if opened.stream_id == GET_STREAM_KEY:
                            return  # its session is gone; a reconnect is refused (404)
                        await self._abandon(opened)
                    continue
                arrived, coming = coming, None
                try:
                    item = arrived.result()
                except StopAsyncIteration:
                    return  # the log ended
                quiet_until = loop.time() + self._tail_idle_s
                if isinstance(item, LogReset):
                    logger.warning("stopped following an MCP stream: events were trimmed away")
                    return
                sse, done = self._sse(opened, item)
                if sse is not None:
                    yield sse
                if done:
                    return
        finally:
            if coming is not None:
                coming.cancel()
                await asyncio.wait({coming})
            await follow.aclose()

    async def _owner_gone(self, opened: _Opened) -> bool:
        """Whether the lease of the replica that writes the log lapsed (False if the log
        names none, or the store cannot tell now: a follower asks again later)."""
        if opened.owner is None:
            return False
        try:
            return await self._owners.get(opened.owner) is None
        except StoreUnavailable:
            return False

    async def _abandon(self, opened: _Opened) -> None:
        """Give up the request of `opened`, whose owner went away unanswered: close its log
        with the request's error response. Exactly one of racing followers (and of the
        owner's own late response) closes it, since a log refuses appends after its final
        event; the others' appends fail with `LogClosed`, and all of them then send what
        closed it."""
        error = JSONRPCError(
            jsonrpc="2.0",
            id=_request_id(opened.stream_id),
            error=ErrorData(code=REQUEST_ABANDONED, message=REQUEST_ABANDONED_MESSAGE),
        )
        data = error.model_dump(mode="json", by_alias=True, exclude_unset=True)
        try:
            await self._ns.append(opened.log_id, MESSAGE, data, final=True)
        except LogClosed:
            return  # answered, or given up by another follower first
        except (SessionNotFound, StoreUnavailable) as exc:
            logger.warning("could not give up an MCP request whose replica went away: %s", exc)
            return
        logger.warning(
            "gave up MCP request %r: the replica running it went away (its lease lapsed)",
            opened.stream_id[:32],
        )

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
                data={"stream": stream_id, "group": binding.group, "owner": self._lease.id},
            )

    async def _append(self, stream: _StreamLog, kind: str, data: Any, *, final: bool) -> Cursor:
        """Append one event (after a marker, if the last one of this stream was lost); a
        `final` one closes the log."""
        lost = [Event(UNSTORABLE, {"reason": "the store was unavailable"})] if stream.gap else []
        try:
            cursors = await self._ns.extend(stream.log_id, [*lost, Event(kind, data, final=final)])
        except (PayloadTooLarge, ValidationError) as exc:
            logger.warning("an MCP message could not be stored (it will not be resumable): %s", exc)
            marker = Event(UNSTORABLE, {"reason": str(exc)[:200]}, final=final)
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
        owner = log.data.get("owner")  # absent from logs written before owner leases
        mine = (group is not None and owner_group == group) or (
            session is not None and log.subject == session
        )
        if not isinstance(stream_id, str) or not mine:
            _refuse(event_id, "it belongs to another MCP session")
            return None
        return _Opened(log_id, cursor, stream_id, owner if isinstance(owner, str) else None)


def _answers(message: JSONRPCMessage | None, stream_id: str) -> bool:
    """Whether `message` is the response that completes the request stream `stream_id`."""
    return (
        stream_id != GET_STREAM_KEY
        and isinstance(message, JSONRPCResponse | JSONRPCError)
        and message.id is not None
        and str(message.id) == stream_id
    )


def _request_id(stream_id: str) -> int | str:
    """The JSON-RPC id of the request whose stream is `stream_id` (the SDK names a request's
    stream `str(id)`): a number if the stream id is one's canonical decimal form, as clients'
    ids nearly always are, else the string."""
    return int(stream_id) if _INTEGER_RE.fullmatch(stream_id) else stream_id


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
