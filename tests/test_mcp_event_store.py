"""`sessionary.mcp.StoreEventStore`: the MCP SDK's Streamable HTTP event store on sessionary's
event logs, on every backend.

The end-to-end tests run the SDK's own server (`MCPServer` and its `StreamableHTTPSessionManager`)
and the SDK's own client, in process: httpx2's `ASGITransport` buffers a whole response, which
an SSE stream never finishes, so `ASGIStreamTransport` below hands the body over as it comes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventMessage
from mcp.shared.message import ClientMessageMetadata
from mcp_types import (
    CallToolRequest,
    CallToolRequestParams,
    CallToolResult,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    LoggingMessageNotificationParams,
    TextContent,
)
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import sessionary
from sessionary import ManualClock, Store, StoreUnavailable
from sessionary.ids import derived
from sessionary.logs import Cursor, LogEvent
from sessionary.mcp import StoreEventStore
from sessionary.store import Namespace

pytestmark = pytest.mark.filterwarnings(
    # Context.log (the tool's way to talk while it works) is deprecated from 2026-07-28 on;
    # the handshake revisions these tests speak still have it.
    "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)

NS = "mcp.streams"
URL = "http://testserver/mcp"
LIMIT_S = 10


# -- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def replicas(
    url: str, clock: ManualClock | None = None
) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores over one backend, as two replicas would have."""
    first = await sessionary.connect(url, clock=clock)
    if url.startswith("memory"):  # one process's memory: share the backend object itself
        second, own = Store(first.backend, clock=clock), False
    else:
        second, own = await sessionary.connect(url, clock=clock), True
    try:
        yield first, second
    finally:
        if own:
            await second.close()
        await first.close()


def streams_of(store: Store) -> Namespace:
    """The namespace a default `StoreEventStore` writes (same policy, so the same object)."""
    return store.namespace(NS, absolute_ttl=timedelta(hours=1), log_max_length=10_000)


def note(n: int, text: str = "step") -> JSONRPCNotification:
    return JSONRPCNotification(
        jsonrpc="2.0",
        method="notifications/message",
        params={"level": "info", "data": {"n": n, "text": f"{text} {n} é ✓", "ratio": n / 4}},
    )


def wire(message: JSONRPCMessage) -> str:
    """A message as the SDK puts it on the wire."""
    return message.model_dump_json(by_alias=True, exclude_unset=True)


async def replay(events: StoreEventStore, event_id: str) -> tuple[str | None, list[EventMessage]]:
    sent: list[EventMessage] = []

    async def collect(message: EventMessage) -> None:
        sent.append(message)

    return await events.replay_events_after(event_id, collect), sent


def log_of(event_id: str) -> str:
    return event_id.partition("/")[0]


def seq_of(event_id: str) -> int:
    return int(event_id.partition("/")[2].partition("-")[0])


# -- storing and replaying ----------------------------------------------------------------------


async def test_replay_sends_what_followed_exactly_and_in_order(
    store_url: str, clock: ManualClock
) -> None:
    messages: list[JSONRPCMessage] = [
        JSONRPCRequest(jsonrpc="2.0", id=7, method="sampling/createMessage", params={"x": [1]}),
        note(1),
        note(2),
        JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=-32700, message="bad")),
        JSONRPCResponse(jsonrpc="2.0", id="7", result={"content": [], "big": 2**53}),
    ]
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store)
        with events.bind("session-a"):
            priming = await events.store_event("7", None)
            ids = [await events.store_event("7", m) for m in messages]
            stream, sent = await replay(events, priming)

    assert stream == "7"
    assert [m.event_id for m in sent] == ids  # the priming event itself is never sent
    assert [m.message for m in sent] == messages
    assert [wire(m.message) for m in sent] == [wire(m) for m in messages]
    assert sent[3].message.id is None  # an explicit null survives (exclude_unset, as the SDK)
    assert len({log_of(i) for i in [priming, *ids]}) == 1
    assert [seq_of(i) for i in [priming, *ids]] == [1, 2, 3, 4, 5, 6]


async def test_replay_is_exclusive_of_the_event_named(store_url: str, clock: ManualClock) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store)
        with events.bind("session-a"):
            ids = [await events.store_event("3", note(n)) for n in range(1, 6)]
            after_third = await replay(events, ids[2])
            after_last = await replay(events, ids[-1])

    assert after_third[0] == "3"
    assert [m.event_id for m in after_third[1]] == ids[3:]
    assert [m.message for m in after_third[1]] == [note(4), note(5)]
    assert after_last == ("3", [])  # known and current: the stream, nothing to send


async def test_streams_of_a_session_do_not_mix(store_url: str, clock: ManualClock) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store)
        with events.bind("session-a"):
            first_get = await events.store_event("_GET_stream", None)
            first_call = await events.store_event("1", None)
            for n in range(1, 4):  # interleaved
                await events.store_event("_GET_stream", note(n, "get"))
                await events.store_event("1", note(n, "call"))
            get = await replay(events, first_get)
            call = await replay(events, first_call)

    assert log_of(first_get) != log_of(first_call)
    assert get[0] == "_GET_stream"
    assert [m.message for m in get[1]] == [note(n, "get") for n in range(1, 4)]
    assert call[0] == "1"
    assert [m.message for m in call[1]] == [note(n, "call") for n in range(1, 4)]


async def test_mcp_sessions_with_the_same_stream_ids_do_not_mix(
    store_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store)

        async def session(name: str) -> list[str]:
            with events.bind(name):
                first = [await events.store_event(s, None) for s in ("1", "_GET_stream")]
                for n in range(1, 4):
                    await asyncio.sleep(0)  # let the other session interleave
                    await events.store_event("1", note(n, name))
                    await events.store_event("_GET_stream", note(n, f"{name} get"))
                return first

        a, b = await asyncio.gather(session("session-a"), session("session-b"))
        with events.bind("session-a"):
            a_call, a_get = await replay(events, a[0]), await replay(events, a[1])
            with caplog.at_level(logging.WARNING, "sessionary.mcp"):
                stolen = await replay(events, b[0])
        with events.bind("session-b"):
            b_call = await replay(events, b[0])

    assert {log_of(i) for i in a}.isdisjoint(log_of(i) for i in b)
    assert [m.message for m in a_call[1]] == [note(n, "session-a") for n in range(1, 4)]
    assert [m.message for m in a_get[1]] == [note(n, "session-a get") for n in range(1, 4)]
    assert [m.message for m in b_call[1]] == [note(n, "session-b") for n in range(1, 4)]
    assert stolen == (None, [])  # session b's event id, presented by session a
    assert "another MCP session" in caplog.text


async def test_event_ids_that_are_not_this_logs_replay_nothing(
    store_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store)
        with events.bind("session-a"):
            ids = [await events.store_event("1", note(n)) for n in range(1, 4)]
            other = await events.store_event("2", note(9))
            log, other_log = log_of(ids[0]), log_of(other)
            unknown = derived("no such log")
            bad = [
                "",
                "garbage",
                log,  # no cursor
                f"{log}/",
                f"{log}/2",
                f"{log}/1-00000000",  # a tag this log never issued
                f"{log}/0-{Cursor.of(NS, log, 0).tag}",
                f"{log}/{Cursor.of(NS, other_log, 1)}",  # another log's cursor
                f"{other_log}/{Cursor.of(NS, log, 1)}",
                f"{log}/{Cursor.of(NS, log, 99)}",  # the log's future
                f"{unknown}/{Cursor.of(NS, unknown, 1)}",  # well formed, no such log
                f"{log}/{Cursor.of(NS, log, 1)}/x",
                f"{'B' if log[0] == 'A' else 'A'}{log[1:]}/{Cursor.of(NS, log, 1)}",
                "a" * 5000,
            ]
            with caplog.at_level(logging.WARNING, "sessionary.mcp"):
                results = [await replay(events, event_id) for event_id in bad]
            still_good = await replay(events, ids[0])

    assert results == [(None, [])] * len(bad)
    refusals = [r for r in caplog.records if r.name == "sessionary.mcp"]
    assert len(refusals) == len(bad)
    assert all(r.levelno == logging.WARNING for r in refusals)
    assert [m.message for m in still_good[1]] == [note(2), note(3)]


async def test_a_position_trimmed_away_replays_nothing(store_url: str, clock: ManualClock) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store, namespace="mcp.short", max_events=3)
        with events.bind("session-a"):
            ids = [await events.store_event("1", None)]
            ids += [await events.store_event("1", note(n)) for n in range(1, 6)]  # 6 events
            trimmed = [await replay(events, ids[i]) for i in (0, 1)]
            kept = await replay(events, ids[2])  # the next one after it is still there

    assert trimmed == [(None, []), (None, [])]
    assert kept[0] == "1"
    assert [m.event_id for m in kept[1]] == ids[3:]


async def test_another_replica_replays_what_one_stored(store_url: str, clock: ManualClock) -> None:
    async with replicas(store_url, clock) as (first, second):
        here, there = StoreEventStore(first), StoreEventStore(second)
        with here.bind("session-a"):
            ids = [await here.store_event("4", None)]
            ids += [await here.store_event("4", note(n)) for n in range(1, 4)]
        with there.bind("session-a"):  # the same MCP session, seen from the other replica
            resumed = await replay(there, ids[1])
        with there.bind("session-b"):
            foreign = await replay(there, ids[1])

    assert resumed[0] == "4"
    assert [m.event_id for m in resumed[1]] == ids[2:]
    assert [m.message for m in resumed[1]] == [note(2), note(3)]
    assert foreign == (None, [])


async def test_an_expired_log_goes_on_in_a_new_one(store_url: str, clock: ManualClock) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store, namespace="mcp.brief", ttl=timedelta(minutes=1))
        with events.bind("session-a"):
            old = [await events.store_event("1", note(n)) for n in (1, 2)]
            clock.advance(timedelta(minutes=2))
            new = [await events.store_event("1", note(n)) for n in (3, 4)]
            from_old = await replay(events, old[0])
            from_new = await replay(events, new[0])

    assert log_of(new[0]) != log_of(old[0])  # never an old id naming a new event
    assert seq_of(new[0]) == 1
    assert from_old == (None, [])
    assert from_new[0] == "1"
    assert [m.message for m in from_new[1]] == [note(4)]


async def test_many_streams_at_once_including_two_first_events_of_one(
    store_url: str, clock: ManualClock
) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store)
        ns = streams_of(store)

        async def write(stream: str, tag: str) -> list[str]:
            return [await events.store_event(stream, note(n, tag)) for n in range(12)]

        with events.bind("session-a"):
            writers = [write(str(k), "w") for k in range(8)] + [write("0", "twin")]
            written = await asyncio.gather(*writers)
        logs = {k: await ns.read(log_of(written[k][0])) for k in range(8)}

    for k in range(8):
        assert {log_of(i) for i in written[k]} == {log_of(written[k][0])}
        assert [seq_of(i) for i in written[k]] == sorted(seq_of(i) for i in written[k])
    assert log_of(written[8][0]) == log_of(written[0][0])  # the twin wrote into the same log
    for k in range(1, 8):
        assert [e.data["params"]["data"]["n"] for e in logs[k].events] == list(range(12))
    zero = [e.data["params"]["data"] for e in logs[0].events]
    for tag in ("w", "twin"):  # both writers' events, each writer's in its order
        assert [d["n"] for d in zero if d["text"].startswith(f"{tag} ")] == list(range(12))
    assert len(zero) == 24
    assert {str(e.cursor) for e in logs[0].events} == {
        i.partition("/")[2] for i in written[0] + written[8]
    }


async def test_unbound_use_is_refused(store_url: str, clock: ManualClock) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store)
        with events.bind("session-a"):
            event_id = await events.store_event("1", note(1))
        with pytest.raises(RuntimeError, match="outside an MCP session"):
            await events.store_event("1", note(2))
        assert await replay(events, event_id) == (None, [])
    with pytest.raises(ValueError, match="visible ASCII"), events.bind("bad id\n"):
        pass


async def test_an_unstorable_message_stops_a_replay_rather_than_skip_it(
    store_url: str, clock: ManualClock
) -> None:
    async with replicas(store_url, clock) as (store, _):
        events = StoreEventStore(store, namespace="mcp.small", max_payload=600)
        huge = JSONRPCNotification(
            jsonrpc="2.0", method="notifications/message", params={"data": "x" * 2000}
        )
        with events.bind("session-a"):
            priming = await events.store_event("1", None)
            ids = [await events.store_event("1", m) for m in (note(1), huge, note(2))]
            across = await replay(events, priming)
            beyond = await replay(events, ids[1])

    assert [m.message for m in across[1]] == [note(1)]  # sent up to it, then refused
    assert across[0] is None
    assert beyond[0] == "1"
    assert [m.message for m in beyond[1]] == [note(2)]


class Flaky:
    """A backend whose appends fail while `down`, as a store that cannot be reached."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreUnavailable("unreachable, for the test")
        return await self._backend.append(*args, **kwargs)


async def test_a_store_outage_keeps_the_session_going_and_no_replay_skips_the_hole(
    store_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with replicas(store_url, clock) as (store, _):
        flaky = Flaky(store.backend)
        events = StoreEventStore(Store(flaky, clock=clock))
        with events.bind("session-a"):
            priming = await events.store_event("1", None)
            await events.store_event("1", note(1))
            flaky.down = True
            with caplog.at_level(logging.ERROR, "sessionary.mcp"):
                lost = await events.store_event("1", note(2))  # the SDK sends it all the same
            flaky.down = False
            later = [await events.store_event("1", note(n)) for n in (3, 4)]
            across = await replay(events, priming)
            from_lost = await replay(events, lost)
            after_hole = await replay(events, later[0])

    assert "not stored" in caplog.text
    assert log_of(lost) == log_of(priming) == log_of(later[0])
    assert across[0] is None  # what came before the hole, then a refusal
    assert [m.message for m in across[1]] == [note(1)]
    assert from_lost == (None, [])
    assert after_hole[0] == "1"
    assert [m.message for m in after_hole[1]] == [note(4)]


# -- end to end: the SDK's server and client ----------------------------------------------------


class ASGIStreamTransport(httpx2.AsyncBaseTransport):
    """Serve each request with an ASGI app in this process, handing the response body over as
    it is sent, each request in a task of its own with a fresh context (as a server would)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        body = b"".join([part async for part in request.stream])
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
        }
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future()
        )
        gone = asyncio.Event()
        request_sent = False

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if gone.is_set():
                return  # the client left: what is sent goes nowhere
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                chunks.put_nowait(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        async def serve() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                chunks.put_nowait(None)
                if not started.done():
                    started.set_exception(RuntimeError("the app sent no response"))

        task = asyncio.get_running_loop().create_task(serve(), context=contextvars.Context())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        try:
            status, headers = await started
        except BaseException:
            gone.set()
            raise
        return httpx2.Response(
            status, headers=headers, stream=_StreamedBody(chunks, gone), request=request
        )

    async def aclose(self) -> None:
        """Let what the app still does for answered requests finish, then stop the rest."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _StreamedBody(httpx2.AsyncByteStream):
    def __init__(self, chunks: asyncio.Queue[bytes | None], gone: asyncio.Event) -> None:
        self._chunks = chunks
        self._gone = gone

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self._gone.set()  # the connection is dropped: the app sees http.disconnect


@dataclass
class Script:
    """What the tool `work` does, step by step, as the test lets it."""

    close_stream: bool = False  # close the call's SSE stream (the SDK's polling) after step 2
    go_on: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)
    runs: int = 0


@dataclass
class Replica:
    events: StoreEventStore
    app: ASGIApp  # the SDK's Starlette app, through `events.wrap`


@asynccontextmanager
async def serve(store: Store, script: Script) -> AsyncIterator[Replica]:
    """A replica: an MCP server with the tool `work`, its session manager, on `store`."""
    events = StoreEventStore(store)
    server = MCPServer("steps")

    @server.tool()
    async def work(who: str, ctx: Context) -> str:
        script.runs += 1
        for n in (1, 2):
            await ctx.log("info", f"{who}: step {n}")
        await script.go_on.wait()
        if script.close_stream:
            await ctx.close_sse_stream()
        for n in (3, 4):
            await ctx.log("info", f"{who}: step {n}")
        await script.finish.wait()
        for n in (5, 6):
            await ctx.log("info", f"{who}: step {n}")
        return f"{who}: done"

    # host: not localhost, so no DNS-rebinding check of the test's Host header
    http_app = server.streamable_http_app(event_store=events, retry_interval=10, host="testserver")
    async with server.session_manager.run():
        yield Replica(events, events.wrap(http_app))


@dataclass
class Watcher:
    """What a client saw: log messages and resumption tokens, with a way to wait for both."""

    logs: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_log(self, params: LoggingMessageNotificationParams) -> None:
        self.logs.append(str(params.data))
        self.changed.set()

    async def on_token(self, token: str) -> None:
        self.tokens.append(token)
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(LIMIT_S):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def client(
    app: ASGIApp,
    *,
    headers: dict[str, str] | None = None,
    terminate: bool = False,
    watcher: Watcher | None = None,
) -> AsyncIterator[tuple[ClientSession, Watcher, list[str]]]:
    """The SDK's client over the in-process transport; the MCP session ids the server named."""
    watcher = watcher or Watcher()
    named: list[str] = []

    async def remember(response: httpx2.Response) -> None:
        if (found := response.headers.get("mcp-session-id")) and found not in named:
            named.append(found)

    transport = ASGIStreamTransport(app)
    try:
        async with (
            httpx2.AsyncClient(
                transport=transport, headers=headers, event_hooks={"response": [remember]}
            ) as http,
            streamable_http_client(URL, http_client=http, terminate_on_close=terminate) as (
                read,
                write,
            ),
            ClientSession(read, write, logging_callback=watcher.on_log) as session,
        ):
            yield session, watcher, named
    finally:
        await transport.aclose()


def call_work(
    session: ClientSession, watcher: Watcher, resume_from: str | None = None, *, who: str = "w"
) -> Awaitable[CallToolResult]:
    return session.send_request(
        CallToolRequest(params=CallToolRequestParams(name="work", arguments={"who": who})),
        CallToolResult,
        metadata=ClientMessageMetadata(
            resumption_token=resume_from, on_resumption_token_update=watcher.on_token
        ),
    )


async def stored(store: Store, after: str, count: int) -> None:
    """Wait until `count` more messages are stored in the log of event id `after`."""
    seen = 0
    async with asyncio.timeout(LIMIT_S):
        async for item in streams_of(store).follow(log_of(after), after.partition("/")[2]):
            if isinstance(item, LogEvent) and item.type == "message":
                seen += 1
                if seen == count:
                    return


def text_of(result: CallToolResult) -> str:
    (content,) = result.content
    assert isinstance(content, TextContent)
    return content.text


async def drop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def test_a_replica_answers_a_reconnect_for_a_session_it_does_not_hold(
    store_url: str,
) -> None:
    passed_on: list[str] = []

    async def sdk(scope: Scope, receive: Receive, send: Send) -> None:  # as the SDK: unknown
        passed_on.append(Headers(scope=scope).get("last-event-id", ""))
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    unknown = derived("no such log")
    forged = [f"{unknown}/{Cursor.of(NS, unknown, 1)}"]
    async with replicas(store_url) as (store_a, store_b):
        here = StoreEventStore(store_a)
        there = StoreEventStore(store_b, tail_idle=timedelta(milliseconds=300))
        transport = ASGIStreamTransport(there.wrap(sdk))
        received: list[tuple[str, str]] = []
        with here.bind("session-a"):  # held, as the session's message loop holds it
            ids = [await here.store_event("_GET_stream", None)]
            ids += [await here.store_event("_GET_stream", note(n)) for n in (1, 2)]
            forged.append(f"{log_of(ids[1])}/9-00000000")
            async with httpx2.AsyncClient(transport=transport, base_url="http://x") as http:

                async def reconnect(session_id: str, last_event_id: str) -> int:
                    headers = {"mcp-session-id": session_id, "last-event-id": last_event_id}
                    async with http.stream("GET", "/mcp", headers=headers) as response:
                        if response.status_code != 200:
                            return response.status_code
                        async for sse in httpx2.EventSource(response):
                            received.append((sse.id or "", sse.data))
                            if len(received) == 1:  # the one stored; then one appended
                                ids.append(await here.store_event("_GET_stream", note(3)))
                        return response.status_code

                async with asyncio.timeout(LIMIT_S):  # it ends after 300 ms without news
                    status = await reconnect("session-a", ids[1])
                    refused = [
                        await reconnect("session-b", ids[1]),  # not that session's event id
                        *[await reconnect("session-a", event_id) for event_id in forged],
                    ]
        await transport.aclose()
        sticky = ASGIStreamTransport(there.wrap(sdk, resume_elsewhere=False))
        async with httpx2.AsyncClient(transport=sticky, base_url="http://x") as http:
            headers = {"mcp-session-id": "session-a", "last-event-id": ids[1]}
            off = await http.get("/mcp", headers=headers)
        await sticky.aclose()

    assert status == 200
    assert received == [(ids[2], wire(note(2))), (ids[3], wire(note(3)))]
    assert refused == [404, 404, 404]  # the SDK's answer: the wrapper passed them on
    assert off.status_code == 404
    assert passed_on == [ids[1], *forged, ids[1]]


@pytest.mark.parametrize("where", ["same replica", "other replica"])
async def test_the_sdk_client_resumes_a_tool_call_with_last_event_id(
    store_url: str, where: str
) -> None:
    """Two MCP sessions side by side (their calls have the same JSON-RPC id): each client drops
    mid-call, and a new client resumes each call with its last event id."""
    script = Script()
    who = ("x", "y")
    before = {w: Watcher() for w in who}
    session_ids: dict[str, str] = {}

    async with (
        replicas(store_url) as (store_a, store_b),
        serve(store_a, script) as a,
        serve(store_b, script) as b,
    ):

        async def first_client(w: str) -> None:
            async with client(a.app, watcher=before[w]) as (session, _, named):
                await session.initialize()
                (session_ids[w],) = named
                await call_work(session, before[w], who=w)

        firsts = [asyncio.create_task(first_client(w)) for w in who]
        for w in who:  # the priming event's id, then one per message
            seen = before[w]
            await seen.until(lambda seen=seen: len(seen.logs) == 2 and len(seen.tokens) == 3)
        for first in firsts:
            await drop(first)  # the connection is gone mid-call
        script.go_on.set()  # steps 3 and 4 happen while nobody listens
        for w in who:
            await stored(store_a, before[w].tokens[-1], 2)

        target = a if where == "same replica" else b
        resumed: list[str] = []

        async def resume(w: str) -> tuple[Watcher, CallToolResult]:
            headers = {"mcp-session-id": session_ids[w], "mcp-protocol-version": "2025-11-25"}
            async with client(target.app, headers=headers) as (session, seen, _):
                call = asyncio.create_task(call_work(session, seen, before[w].tokens[-1], who=w))
                # the replayed steps; on the same replica, the SDK primes the resumed stream
                # once it is live again (a message stored before that would not be sent live)
                wanted = 3 if where == "same replica" else 2
                await seen.until(lambda: len(seen.logs) == 2 and len(seen.tokens) >= wanted)
                resumed.append(w)
                if len(resumed) == len(who):
                    script.finish.set()
                async with asyncio.timeout(LIMIT_S):
                    return seen, await call

        after = dict(zip(who, await asyncio.gather(*(resume(w) for w in who)), strict=True))

    assert session_ids["x"] != session_ids["y"]
    for w in who:
        seen, result = after[w]
        assert before[w].logs == [f"{w}: step 1", f"{w}: step 2"]
        assert seen.logs == [f"{w}: step {n}" for n in (3, 4, 5, 6)]  # no duplicate, no gap
        assert text_of(result) == f"{w}: done"
        tokens = before[w].tokens + seen.tokens
        assert {log_of(t) for t in tokens} == {log_of(tokens[0])}
    assert script.runs == 2
    assert log_of(before["x"].tokens[0]) != log_of(before["y"].tokens[0])


async def test_the_sdk_client_reconnects_by_itself_to_another_replica(store_url: str) -> None:
    script = Script(close_stream=True)
    routes: dict[str, ASGIApp] = {}
    to = ["a"]

    async def balancer(scope: Scope, receive: Receive, send: Send) -> None:
        await routes[to[0]](scope, receive, send)

    async with (
        replicas(store_url) as (store_a, store_b),
        serve(store_a, script) as a,
        serve(store_b, script) as b,
        client(balancer) as (session, seen, _),
    ):
        routes.update(a=a.app, b=b.app)
        await session.initialize()
        call = asyncio.create_task(call_work(session, seen))
        await seen.until(lambda: len(seen.logs) == 2)
        to[0] = "b"  # from now on, the balancer sends every request to the other replica
        script.go_on.set()  # the server closes the call's stream; the client reconnects to b
        await seen.until(lambda: len(seen.logs) == 4)
        script.finish.set()
        async with asyncio.timeout(LIMIT_S):
            result = await call

    assert seen.logs == [f"w: step {n}" for n in range(1, 7)]
    assert text_of(result) == "w: done"
    assert script.runs == 1


async def test_ending_the_mcp_session_deletes_its_logs(store_url: str) -> None:
    script = Script()
    script.go_on.set()
    script.finish.set()
    async with replicas(store_url) as (store, _), serve(store, script) as a:
        async with client(a.app, terminate=True) as (session, seen, named):
            await session.initialize()
            result = await call_work(session, seen)
            (session_id,) = named
            logs = await streams_of(store).list_subject(session_id)
        after = await streams_of(store).list_subject(session_id)

    assert text_of(result) == "w: done"
    assert seen.logs == [f"w: step {n}" for n in range(1, 7)]
    assert logs  # the call's stream, at least
    assert after == []
