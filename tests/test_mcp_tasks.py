"""`sessionary.mcp_tasks`: the MCP Tasks extension (SEP-2663) backed by runs, driven by the
SDK's own client (in process) against the SDK's own `MCPServer`, on every backend.

Two `MCPServer`s, each with its own `Runs` over its own store on one backend, stand for two
replicas: a task started on one is polled, finished and cancelled through the other. The tool
waits on an `asyncio.Event` the test sets, so "long" is as long as the test says, with no sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CallToolResult,
    GetTaskPayloadRequest,
    GetTaskPayloadRequestParams,
    TextContent,
)

from sessionary.clock import iso_utc, to_ms
from sessionary.logs import LogEvent
from sessionary.mcp_tasks import (
    ANONYMOUS,
    EXTENSION_ID,
    Acknowledged,
    CancelTaskRequest,
    CreatedTask,
    GetTaskRequest,
    Owner,
    RunTasks,
    Task,
    TaskParams,
    TasksClient,
    TaskUpdateParams,
    UpdateTaskRequest,
    caller,
)
from sessionary.runs import Run, Runs
from tests.test_mcp_event_store import URL, ASGIStreamTransport, replicas

POLL = timedelta(milliseconds=10)
LIMIT_S = 10


@dataclass
class Replica:
    """One MCP server: the `report` tool, served as a task, over its own `Runs`."""

    runs: Runs
    tasks: RunTasks
    server: MCPServer
    release: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


def replica(runs: Runs, owner: Owner = "mcp", tokens: TokenVerifier | None = None) -> Replica:
    """`owner` as `RunTasks` takes it; `tokens`: the server authenticates with them."""
    tasks = RunTasks(runs, task_tools={"report"}, owner=owner, poll_interval=POLL)
    auth = AuthSettings(
        issuer_url="https://auth.example", resource_server_url=URL, validate_token_resource=False
    )
    server = MCPServer(
        "reports", extensions=[tasks], token_verifier=tokens, auth=auth if tokens else None
    )
    made = Replica(runs, tasks, server)

    @server.tool()
    async def report(pages: int) -> str:
        """A report that takes as long as the test holds `release`."""
        made.entered.set()
        try:
            await made.release.wait()
        except asyncio.CancelledError:
            made.stopped.set()
            raise
        if pages < 0:
            raise MCPError(INVALID_PARAMS, "pages must not be negative")
        return f"{pages} pages"

    return made


@asynccontextmanager
async def two_replicas(url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    async with replicas(url) as (first_store, second_store):
        first, second = replica(Runs(first_store)), replica(Runs(second_store))
        try:
            yield first, second
        finally:
            await first.tasks.aclose()
            await second.tasks.aclose()


def tasks_client(made: Replica) -> Client:
    return Client(made.server, extensions=[TasksClient()])


async def start(client: Client, pages: int) -> CreatedTask:
    created = await client.session.call_tool("report", {"pages": pages}, allow_claimed=True)
    assert isinstance(created, CreatedTask)
    return created


async def get(client: Client, task_id: str) -> Task:
    return await client.session.send_request(
        GetTaskRequest(params=TaskParams(task_id=task_id)), Task
    )


async def ended(runs: Runs, run_id: str) -> Run:
    """The run once its `end` event is stored (followed, not polled)."""
    async with asyncio.timeout(LIMIT_S):
        async for event in runs.events(run_id):
            if isinstance(event, LogEvent) and event.final:
                break
    return await runs.get(run_id)


# -- tests ------------------------------------------------------------------------------------


async def test_a_long_tool_call_is_a_task_the_sdk_client_polls_to_its_result(
    store_url: str,
) -> None:
    async with two_replicas(store_url) as (first, _), tasks_client(first) as client:
        assert EXTENSION_ID in (client.server_capabilities.extensions or {})
        call = asyncio.create_task(client.call_tool("report", {"pages": 12}))
        async with asyncio.timeout(LIMIT_S):
            await first.entered.wait()
        assert not call.done()  # answered with a task, polling: the tool is still at work
        first.release.set()
        async with asyncio.timeout(LIMIT_S):
            result = await call

        assert result == CallToolResult(
            content=[TextContent(text="12 pages")], structured_content={"result": "12 pages"}
        )


async def test_another_replica_answers_for_a_task_started_on_the_first(store_url: str) -> None:
    async with (
        two_replicas(store_url) as (first, second),
        tasks_client(first) as on_first,
        tasks_client(second) as on_second,
    ):
        created = await start(on_first, 7)
        assert created.status == "working"
        assert created.poll_interval_ms == to_ms(POLL)
        assert created.ttl_ms == to_ms(first.runs.settings.run_max_age)

        working = await get(on_second, created.task_id)
        assert (working.status, working.result, working.error) == ("working", None, None)

        first.release.set()
        run = await ended(second.runs, created.task_id)
        done = await get(on_second, created.task_id)

        assert done.status == "completed"
        assert done.result is not None
        assert CallToolResult.model_validate(done.result).content == [TextContent(text="7 pages")]
        assert done.created_at == created.created_at == iso_utc(run.created_at)
        assert run.finished_at is not None
        assert done.last_updated_at == iso_utc(run.finished_at)
        retention = to_ms(second.runs.settings.retention)
        assert done.ttl_ms == run.finished_at + retention - run.created_at
        assert run.input == {"mcp_tool": "report", "arguments": {"pages": 7}}


async def test_a_tool_error_fails_the_task_with_it(store_url: str) -> None:
    async with (
        two_replicas(store_url) as (first, second),
        tasks_client(first) as on_first,
        tasks_client(second) as on_second,
    ):
        created = await start(on_first, -1)
        first.release.set()
        await ended(second.runs, created.task_id)

        failed = await get(on_second, created.task_id)

        assert failed.status == "failed"
        assert failed.result is None
        assert failed.error is not None
        assert failed.error.message == "pages must not be negative"
        second.release.set()  # and the SDK's client raises the task's error from call_tool
        with pytest.raises(MCPError, match="pages must not be negative"):
            async with asyncio.timeout(LIMIT_S):
                await on_second.call_tool("report", {"pages": -1})


async def test_cancel_on_another_replica_stops_the_tool(store_url: str) -> None:
    async with (
        two_replicas(store_url) as (first, second),
        tasks_client(first) as on_first,
        tasks_client(second) as on_second,
    ):
        created = await start(on_first, 3)
        async with asyncio.timeout(LIMIT_S):
            await first.entered.wait()

        await on_second.session.send_request(
            CancelTaskRequest(params=TaskParams(task_id=created.task_id)), Acknowledged
        )
        async with asyncio.timeout(LIMIT_S):
            await first.stopped.wait()  # the producer heard the cancel and cancelled the tool

        cancelled = await get(on_first, created.task_id)
        assert (cancelled.status, cancelled.result) == ("cancelled", None)
        assert (await first.runs.get(created.task_id)).status == "cancelled"
        with pytest.raises(MCPError) as again:
            await on_second.session.send_request(
                CancelTaskRequest(params=TaskParams(task_id=created.task_id)), Acknowledged
            )
        assert again.value.code == INVALID_PARAMS


async def test_unknown_tasks_others_tasks_and_plain_runs_are_alike_unknown(
    store_url: str,
) -> None:
    async with two_replicas(store_url) as (first, second):
        bobs = replica(second.runs, owner="bob")
        conversation = await first.runs.create_conversation("mcp")
        plain = await first.runs.start(conversation.id, "mcp")
        async with tasks_client(first) as on_first, tasks_client(bobs) as as_bob:
            created = await start(on_first, 1)
            for client, task_id in (
                (on_first, "run_nosuchrun"),
                (on_first, plain.id),  # a run, but no task
                (as_bob, created.task_id),  # a task, but not bob's
            ):
                for request in (
                    GetTaskRequest(params=TaskParams(task_id=task_id)),
                    CancelTaskRequest(params=TaskParams(task_id=task_id)),
                    UpdateTaskRequest(params=TaskUpdateParams(task_id=task_id)),
                ):
                    with pytest.raises(MCPError) as unknown:
                        await client.session.send_request(request, Acknowledged)
                    assert unknown.value.code == INVALID_PARAMS
                    assert unknown.value.message == f"unknown task {task_id!r}"
            # a task never asks for input: an update is acknowledged, and changes nothing
            update = UpdateTaskRequest(params=TaskUpdateParams(task_id=created.task_id))
            await on_first.session.send_request(update, Acknowledged)  # no error: acknowledged
            assert (await get(on_first, created.task_id)).status == "working"
            # the 2025-11-25 design's tasks/result is gone from SEP-2663: not served
            with pytest.raises(MCPError) as gone:
                await on_first.session.send_request(
                    GetTaskPayloadRequest(
                        params=GetTaskPayloadRequestParams(task_id=created.task_id)
                    ),
                    Acknowledged,
                )
            assert gone.value.code == METHOD_NOT_FOUND
        await bobs.tasks.aclose()


async def test_a_client_without_the_extension_gets_the_result_in_the_call(
    store_url: str,
) -> None:
    async with two_replicas(store_url) as (first, _), Client(first.server) as plain:
        first.release.set()

        result = await plain.call_tool("report", {"pages": 2})

        assert result.content == [TextContent(text="2 pages")]
        assert await first.runs.runs.list_subject("mcp") == []  # served in the request: no run


async def test_closing_fails_the_in_flight_tasks_at_once(store_url: str) -> None:
    async with two_replicas(store_url) as (first, second), tasks_client(first) as on_first:
        created = await start(on_first, 5)
        async with asyncio.timeout(LIMIT_S):
            await first.entered.wait()

        await first.tasks.aclose()

        run = await ended(second.runs, created.task_id)
        assert (run.status, run.error) == ("error", "the worker was stopped mid-run")


# -- over Streamable HTTP, stateless (2026-07-28): no session routes a poll to its replica -----


@asynccontextmanager
async def over_http(
    made: Replica, tokens: Sequence[str | None] = (None,)
) -> AsyncIterator[list[Client]]:
    """The SDK's clients, with the Tasks extension, over Streamable HTTP to `made`'s ASGI app:
    one per entry of `tokens`, sending it as its Bearer token (None: none)."""
    app = made.server.streamable_http_app(host="testserver")  # not localhost: no Host check
    transport = ASGIStreamTransport(app)
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(made.server.session_manager.run())
            clients = []
            for token in tokens:
                headers = {"Authorization": f"Bearer {token}"} if token else None
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(transport=transport, headers=headers)
                )
                sdk = Client(
                    streamable_http_client(URL, http_client=http), extensions=[TasksClient()]
                )
                clients.append(await stack.enter_async_context(sdk))
            yield clients
    finally:
        await transport.aclose()


async def test_over_stateless_http_any_replica_answers(store_url: str) -> None:
    async with (
        two_replicas(store_url) as (first, second),
        over_http(first) as (on_first,),
        over_http(second) as (on_second,),
    ):
        assert on_first.protocol_version == on_second.protocol_version == "2026-07-28"
        created = await start(on_first, 4)
        assert (await get(on_second, created.task_id)).status == "working"

        first.release.set()
        await ended(second.runs, created.task_id)
        done = await get(on_second, created.task_id)

        assert done.status == "completed"
        assert done.result is not None
        assert CallToolResult.model_validate(done.result).content == [TextContent(text="4 pages")]
        second.release.set()
        async with asyncio.timeout(LIMIT_S):
            polled = await on_second.call_tool("report", {"pages": 9})
        assert polled.content == [TextContent(text="9 pages")]


class Tokens:
    """A token verifier for which a token is its client's name."""

    async def verify_token(self, token: str) -> AccessToken | None:
        return AccessToken(token=token, client_id=token, scopes=[]) if token in NAMES else None


NAMES = ("alice", "bob")


async def test_a_task_belongs_to_the_authenticated_caller(store_url: str) -> None:
    async with replicas(store_url) as (store, _):
        made = replica(Runs(store), owner=caller, tokens=Tokens())
        try:
            async with over_http(made, NAMES) as (alice, bob):
                alices = [await start(alice, 1), await start(alice, 2)]
                bobs = await start(bob, 3)

                assert (await get(alice, alices[0].task_id)).status == "working"
                for client, task_id in ((bob, alices[0].task_id), (alice, bobs.task_id)):
                    with pytest.raises(MCPError) as unknown:
                        await get(client, task_id)
                    assert unknown.value.code == INVALID_PARAMS
                owners = [(await made.runs.get(t.task_id)).owner for t in (*alices, bobs)]
                assert owners[0] == owners[1] != owners[2]
                assert ANONYMOUS not in owners
        finally:
            await made.tasks.aclose()
