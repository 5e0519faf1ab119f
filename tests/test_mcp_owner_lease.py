"""Owner leases of `sessionary.mcp.StoreEventStore`: when the replica running an MCP request
goes away, a replica following the request's stream for a client gives the request up, with
one JSON-RPC error response, within `lease_bound`, instead of leaving the client to wait.

The unit test runs followers in process on a `ManualClock` (the lease lapses when the test says
so); the fault test runs two replicas as uvicorn processes sharing a store, the SDK's own
client, and kills the replica running the call (SIGKILL), in real time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    ErrorData,
    JSONRPCError,
    JSONRPCResponse,
)
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

import sessionary
from sessionary import ManualClock, Store, StoreUnavailable
from sessionary.mcp import REQUEST_ABANDONED, REQUEST_ABANDONED_MESSAGE, StoreEventStore
from tests.servers import eventually, free_port
from tests.test_mcp_event_store import (
    LIMIT_S,
    ASGIStreamTransport,
    Watcher,
    call_work,
    log_of,
    note,
    replicas,
    streams_of,
    wire,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore::mcp.shared.exceptions.MCPDeprecationWarning"  # Context.log, as in the other file
)

GIVEN_UP = wire(
    JSONRPCError(
        jsonrpc="2.0",
        id=3,
        error=ErrorData(code=REQUEST_ABANDONED, message=REQUEST_ABANDONED_MESSAGE),
    )
)


class LeaseTap:
    """A backend as it is, except for the owner leases: their renewals fail while `cut` (a
    replica cut off from the store), and each check of one is counted, for a test to wait
    until followers have looked."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.cut = False
        self.checks = 0
        self._checked = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def touch(self, ns: str, *args: Any) -> Any:
        if self.cut and ns.endswith(".owners"):
            raise StoreUnavailable("cut off, for the test")
        return await self._backend.touch(ns, *args)

    async def get(self, ns: str, *args: Any) -> Any:
        found = await self._backend.get(ns, *args)
        if ns.endswith(".owners"):
            self.checks += 1
            self._checked.set()
        return found

    async def checked(self, times: int) -> None:
        """Wait until the lease was checked `times` times in all."""
        async with asyncio.timeout(LIMIT_S):
            while self.checks < times:
                self._checked.clear()
                await self._checked.wait()


async def session_not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """What the SDK answers for an MCP session this replica does not hold."""
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def reconnect(events: StoreEventStore, last_event_id: str, seen: Watcher) -> int:
    """A client's reconnect for "session-a" to the replica of `events`: the status, and in
    `seen` each event sent (`tokens`: ids, `logs`: data)."""
    transport = ASGIStreamTransport(events.wrap(session_not_found))
    headers = {"mcp-session-id": "session-a", "last-event-id": last_event_id}
    try:
        async with (
            httpx2.AsyncClient(transport=transport, base_url="http://x") as http,
            http.stream("GET", "/mcp", headers=headers) as response,
        ):
            if response.status_code != 200:
                return response.status_code
            async for sse in httpx2.EventSource(response):
                seen.tokens.append(sse.id or "")
                seen.logs.append(sse.data)
                seen.changed.set()
            return response.status_code
    finally:
        await transport.aclose()


async def test_racing_followers_give_up_a_request_once_when_its_owner_lapses(
    store_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    lease = timedelta(seconds=1)  # the followers check every 100 ms (real time)
    async with replicas(store_url, clock) as (store_a, store_b):
        cut = LeaseTap(store_a.backend)
        owner = StoreEventStore(Store(cut, clock=clock, fail_fast=timedelta(0)), lease=lease)
        taps = [LeaseTap(store.backend) for store in (store_a, store_b, store_a, store_b)]
        followers = [StoreEventStore(Store(tap, clock=clock), lease=lease) for tap in taps]
        seen = [Watcher() for _ in followers]
        with owner.bind("session-a"):  # held throughout: the owner does not die, it is cut off
            ids = [await owner.store_event("3", None), await owner.store_event("3", note(1))]
            get_stream = await owner.store_event("_GET_stream", None)
            following = [
                asyncio.create_task(reconnect(f, ids[0], s))
                for f, s in zip(followers, seen, strict=True)
            ]
            for s in seen:
                await s.until(lambda s=s: len(s.logs) == 1)

            # alive: past the first lease's end, renewed by the events it stores meanwhile
            clock.advance(lease * 0.6)
            ids.append(await owner.store_event("3", note(2)))
            clock.advance(lease * 0.6)
            for tap in taps:  # each follower looked at the lease, found it standing
                await tap.checked(tap.checks + 2)
            ids.append(await owner.store_event("3", note(3)))
            for s in seen:
                await s.until(lambda s=s: len(s.logs) == 3)

            cut.cut = True  # renewals fail from now on
            clock.advance(lease * 1.5)
            with caplog.at_level(logging.WARNING, "sessionary.mcp"):
                async with asyncio.timeout(LIMIT_S):
                    statuses = await asyncio.gather(*following)
            log = streams_of(store_a)
            closed = await log.read(log_of(ids[0]))
            late_seen = Watcher()
            late = await reconnect(followers[0], ids[1], late_seen)  # after the lapse
            refused_get = await reconnect(followers[1], get_stream, Watcher())

            cut.cut = False  # the owner reaches the store again, and answers at last
            with caplog.at_level(logging.WARNING, "sessionary.mcp"):
                response_id = await owner.store_event(
                    "3", JSONRPCResponse(jsonrpc="2.0", id=3, result={"content": []})
                )
            after = await log.read(log_of(ids[0]))

    assert statuses == [200] * len(followers)
    given_up = closed.events[-1]
    for s in seen:  # all the same events, the error response once, then the end
        assert s.logs == [wire(note(n)) for n in (1, 2, 3)] + [GIVEN_UP]
        assert s.tokens == [*ids[1:], f"{log_of(ids[0])}/{given_up.cursor}"]
    assert [e.type for e in closed.events] == ["priming"] + ["message"] * 4
    assert given_up.final
    assert closed.closed
    assert given_up.data == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32030, "message": "the server running this request went away; retry it"},
    }
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("gave up MCP request '3'")]) == 1  # stored once
    assert (late, late_seen.logs) == (200, [wire(note(n)) for n in (2, 3)] + [GIVEN_UP])
    assert refused_get == 404  # the GET stream of a session whose replica went away: the SDK's
    assert log_of(response_id) != log_of(ids[0])  # the late response went to a log of its own
    assert "another replica gave up MCP request '3'" in caplog.text
    assert after.events == closed.events  # the closed log took nothing more


async def test_a_response_closes_the_log_so_a_lapse_after_it_adds_nothing(
    store_url: str, clock: ManualClock
) -> None:
    lease = timedelta(seconds=1)
    async with replicas(store_url, clock) as (store_a, store_b):
        owner = StoreEventStore(store_a, lease=lease)
        follower = StoreEventStore(store_b, lease=lease)
        response = JSONRPCResponse(jsonrpc="2.0", id="job-7", result={"content": []})
        with owner.bind("session-a"):
            first = await owner.store_event("job-7", None)
            answered = await owner.store_event("job-7", response)
        clock.advance(lease * 2)  # the owner went away after answering
        seen = Watcher()
        status = await reconnect(follower, first, seen)
        log = await streams_of(store_a).read(log_of(first))

    assert status == 200
    assert (seen.tokens, seen.logs) == ([answered], [wire(response)])
    assert log.closed
    assert [e.type for e in log.events] == ["priming", "message"]


# -- two replicas as processes, the SDK's client, and a SIGKILL ------------------------------------

FAULT_LEASE = timedelta(seconds=2)
REPO = Path(__file__).resolve().parents[1]


def replica() -> Starlette:
    """A replica for `uvicorn --factory`: an MCP server whose tool `work` logs a step and then
    waits until the process dies, on the store `MCP_REPLICA_STORE`, with `FAULT_LEASE`."""
    served: list[ASGIApp] = []

    async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
        await served[0](scope, receive, send)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        store = await sessionary.connect(os.environ["MCP_REPLICA_STORE"])
        events = StoreEventStore(store, lease=FAULT_LEASE)
        server = MCPServer("mortal")

        @server.tool()
        async def work(who: str, ctx: Context) -> str:
            await ctx.log("info", f"{who}: step 1")
            await asyncio.Event().wait()  # until the process is killed
            return "never"

        app = server.streamable_http_app(event_store=events, retry_interval=50)
        async with server.session_manager.run():
            served.append(events.wrap(app))
            yield
        await store.close()

    return Starlette(routes=[Mount("/", app=mcp)], lifespan=lifespan)


class Replicas:
    """Replica processes on free ports, on one store; `to` names the one a client's requests
    go to (a load balancer's choice)."""

    def __init__(self, store_url: str, directory: Path) -> None:
        self.store_url = store_url
        self.directory = directory
        self.processes: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        self.to = ""

    def start(self, name: str) -> None:
        port = free_port()
        with (self.directory / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:replica"),
                    *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
                ],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env={**os.environ, "MCP_REPLICA_STORE": self.store_url},
            )
        self.processes[name] = (port, process)

    async def ready(self, name: str) -> None:
        port, process = self.processes[name]

        async def answers() -> bool:
            assert process.poll() is None, (self.directory / f"{name}.log").read_text()
            try:
                async with httpx2.AsyncClient() as http:
                    await http.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            except httpx2.TransportError:
                return False
            return True

        await eventually(answers, 30, f"replica {name} did not start")

    def kill(self, name: str) -> None:
        _, process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for _, process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


class Balancer(httpx2.AsyncBaseTransport):
    """Sends each request to the replica `replicas.to` names now."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port, _ = self.replicas.processes[self.replicas.to]
        request.url = request.url.copy_with(port=port)
        request.headers["host"] = f"127.0.0.1:{port}"
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextmanager
def replica_processes(store_url: str, directory: Path) -> Iterator[Replicas]:
    processes = Replicas(store_url, directory)
    try:
        yield processes
    finally:
        processes.stop_all()


async def test_the_sdk_client_gets_an_error_within_the_bound_when_its_replica_is_killed(
    shared_url: str, tmp_path: Path
) -> None:
    with replica_processes(shared_url, tmp_path) as processes:
        for name in ("a", "b"):
            processes.start(name)
        for name in ("a", "b"):
            await processes.ready(name)
        processes.to = "a"
        seen = Watcher()
        async with (
            httpx2.AsyncClient(transport=Balancer(processes)) as http,
            # no DELETE at the end: the replica left holds no session to end
            streamable_http_client(
                "http://127.0.0.1/mcp", http_client=http, terminate_on_close=False
            ) as (read, write),
            ClientSession(read, write, logging_callback=seen.on_log) as session,
        ):
            await session.initialize()
            call = asyncio.create_task(call_work(session, seen))
            await seen.until(lambda: len(seen.logs) == 1 and len(seen.tokens) == 2)
            processes.to = "b"  # the balancer's choice once a is gone
            processes.kill("a")
            killed = time.monotonic()
            with pytest.raises(MCPError) as raised:
                async with asyncio.timeout(LIMIT_S):
                    await call
            took = timedelta(seconds=time.monotonic() - killed)

        async with replicas(shared_url) as (store, _):
            log = await streams_of(store).read(log_of(seen.tokens[-1]))
            bound = StoreEventStore(store, lease=FAULT_LEASE).lease_bound

    assert raised.value.code == REQUEST_ABANDONED
    assert raised.value.message == REQUEST_ABANDONED_MESSAGE
    assert seen.logs == ["w: step 1"]
    # not before the lease could have lapsed (renewed a third of a lease before the kill, at
    # the earliest), and within the bound, with a margin for round trips and a busy machine
    assert FAULT_LEASE * 2 / 3 <= took <= bound + timedelta(seconds=1.5)
    given_up = [e for e in log.events if "error" in (e.data or {})]
    assert len(given_up) == 1
    assert given_up[0].final
    assert log.closed
