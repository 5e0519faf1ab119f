"""The MCP Tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) on sessionary's runs.

The 2026-07-28 MCP revision is stateless: no `Mcp-Session-Id`, no resumable streams. A tool call
that takes minutes is instead answered at once with a task (`resultType: "task"`), which the
client polls with `tasks/get` until it ends; the final `tasks/get` carries the tool's result
(or its JSON-RPC error). The `mcp` SDK (2.3) ships the extension framework (SEP-2133:
`mcp.server.extension.Extension`, `mcp.client.extension.ClientExtension`) but no Tasks
extension and no task store, so this module is both, with runs as the store:

    runs = Runs(store)
    tasks = RunTasks(runs, task_tools={"build_report"})
    server = MCPServer("reports", extensions=[tasks])

* A call of one of `task_tools`, from a client that declared the extension on a 2026-07-28
  connection, starts a run (its own conversation, owned by `owner`), answers with the run id as
  the task id, and executes the tool as the run's producer in this process.
* `tasks/get` reads the run from the store, so any replica over the same store answers it:
  `queued`/`running` is `working`, `completed` is `completed` (with the `CallToolResult`,
  `isError` included: a tool that reported a problem still completed), `error` is `failed`
  (with a JSON-RPC error: the tool's `MCPError` message, code -32603 whatever the tool's was,
  since a run keeps its error as text), `cancelled` is `cancelled`. `ttlMs` is how long after
  its creation the store keeps the run (the runs' `run_max_age` while it goes on, then its end
  plus `retention`), `pollIntervalMs` the configured poll interval.
* `tasks/cancel` cancels the run (on any replica): the producer hears it and cancels the tool.
* `tasks/update` (answers to a task's `inputRequests`) is acknowledged for a known task: these
  tasks never ask for input.
* An unknown task id, or one owned by someone else, is `-32602` (invalid params) alike, so a
  task id reveals nothing about tasks it does not name. `tasks/result` and `tasks/list` (the
  2025-11-25 design, dropped by SEP-2663) are not served: `-32601`.

The tool runs detached from the request that started it (the request was answered with the
task), so it cannot send progress or log notifications to that request. A process that stops
(`RunTasks.aclose`, or its death) fails its in-flight tasks: at once, or within the runs' lease
bound.

`TasksClient` is the client half for the SDK's `Client(extensions=[...])`: it declares the
extension, and `call_tool` polls a task to its end and returns its `CallToolResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import timedelta
from typing import Any, Literal

from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import principal_components
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ErrorData,
    Request,
    RequestParams,
    Result,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from sessionary import ids
from sessionary.clock import iso_utc, to_ms
from sessionary.errors import InvalidSessionId
from sessionary.runs import NotOwner, Producer, Run, RunFinished, RunNotFound, Runs

EXTENSION_ID = "io.modelcontextprotocol/tasks"
"""The Tasks extension's identifier (SEP-2663)."""

TaskStatus = Literal["working", "input_required", "completed", "failed", "cancelled"]

_TASK_STATUS: dict[str, TaskStatus] = {
    "queued": "working",
    "running": "working",
    "completed": "completed",
    "error": "failed",
    "cancelled": "cancelled",
}
_TERMINAL_TASK: frozenset[TaskStatus] = frozenset({"completed", "failed", "cancelled"})
_TOOL_KEY = "mcp_tool"  # in a run's input: marks the run as a task of this extension


# -- the wire ------------------------------------------------------------------------------


class TaskParams(RequestParams):
    """The params of `tasks/get`, `tasks/update` and `tasks/cancel`."""

    task_id: str


class TaskUpdateParams(TaskParams):
    input_responses: dict[str, Any] | None = None


class _TaskState(Result):
    """What every answer about a task carries (SEP-2663 `Task`)."""

    task_id: str
    status: TaskStatus
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None


class Task(_TaskState):
    """A task as `tasks/get` answers it (SEP-2663 `DetailedTask`): `result` on a completed
    task, `error` on a failed one."""

    result: dict[str, Any] | None = None
    error: ErrorData | None = None


class CreatedTask(_TaskState):
    """The answer to a `tools/call` made a task (`CreateTaskResult`): no result yet."""

    result_type: Literal["task"] = "task"


class GetTaskRequest(Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskParams
    name_param = "taskId"  # SEP-2663: tasks/* mirror the task id into the Mcp-Name header


class CancelTaskRequest(Request[TaskParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskParams
    name_param = "taskId"


class UpdateTaskRequest(Request[TaskUpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    params: TaskUpdateParams
    name_param = "taskId"


class Acknowledged(Result):
    """The empty answer of `tasks/cancel` and `tasks/update`."""


# -- the server ----------------------------------------------------------------------------


Owner = str | Callable[[ServerRequestContext[Any, Any]], str]
ANONYMOUS = "mcp"  # the owner of tasks started without a token, under `caller`


def caller(ctx: ServerRequestContext[Any, Any]) -> str:
    """The default owner: the principal of the request's OAuth access token, when the server
    authenticates (`MCPServer(token_verifier=..., auth=...)`), as a digest of the SDK's
    `principal_components` (client, issuer, subject: one subject of the store's whatever their
    length); else `ANONYMOUS`, one owner for every caller."""
    token = get_access_token()
    if token is None:
        return ANONYMOUS
    return "oauth:" + ids.derived(json.dumps(principal_components(token)))


class RunTasks(Extension):
    """Serves the tools named in `task_tools` as tasks backed by `runs` (see the module).

    `owner` names whom a task belongs to: a function of the request (by default `caller`, the
    OAuth principal) or a fixed subject; `tasks/*` for a task owned by another answer as for an
    unknown one. `worker` names this process in the runs' records."""

    identifier = EXTENSION_ID

    def __init__(
        self,
        runs: Runs,
        task_tools: Collection[str],
        *,
        owner: Owner = caller,
        poll_interval: timedelta = timedelta(seconds=1),
        worker: str = "mcp",
    ) -> None:
        self.runs = runs
        self.task_tools = frozenset(task_tools)
        self._owner = owner
        self.poll_interval = poll_interval
        self.worker = worker
        self._executing: set[asyncio.Task[None]] = set()

    def methods(self) -> Sequence[MethodBinding]:
        modern = frozenset(MODERN_PROTOCOL_VERSIONS)
        return (
            MethodBinding("tasks/get", TaskParams, self._get, modern),
            MethodBinding("tasks/cancel", TaskParams, self._cancel, modern),
            MethodBinding("tasks/update", TaskUpdateParams, self._update, modern),
        )

    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        if params.name not in self.task_tools or not _declared(ctx):
            return await call_next(ctx)
        owner = self.owner(ctx)
        conversation = await self.runs.create_conversation(owner)
        run = await self.runs.start(
            conversation.id, owner, input={_TOOL_KEY: params.name, "arguments": params.arguments}
        )
        execution = asyncio.get_running_loop().create_task(
            self._execute(run.id, lambda: call_next(ctx)), name=f"sessionary-mcp-task-{run.id}"
        )
        self._executing.add(execution)
        execution.add_done_callback(self._executing.discard)
        return CreatedTask(**self._task_fields(run))

    def owner(self, ctx: ServerRequestContext[Any, Any]) -> str:
        return self._owner if isinstance(self._owner, str) else self._owner(ctx)

    async def aclose(self) -> None:
        """Stop this process's in-flight tasks: each fails at once ("the worker was stopped
        mid-run") rather than at the lease bound."""
        for execution in list(self._executing):
            execution.cancel()
        for execution in list(self._executing):
            with contextlib.suppress(asyncio.CancelledError):
                await execution

    async def _execute(self, run_id: str, call: Callable[[], Awaitable[HandlerResult]]) -> None:
        """Run the tool as the run's producer; a cancel of the run cancels the tool."""
        try:
            async with self.runs.producer(run_id, worker=self.worker) as producer:
                work = asyncio.ensure_future(call())
                ended = asyncio.ensure_future(producer.until_cancelled())
                try:
                    await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pending in (work, ended):
                        pending.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await pending
                await self._record(producer, work)
        except RunFinished:
            return  # cancelled before its turn came: the tool never ran

    @staticmethod
    async def _record(producer: Producer, work: asyncio.Future[HandlerResult]) -> None:
        """End the run with what the tool came to. Stopped because the run ended (a cancel, a
        lapsed lease), it fails it, which is a no-op unless the run is still going on (its
        lease lapsed but no sweeper failed it yet): never `completed` without a result."""
        if work.cancelled():
            await producer.fail("the run ended while its tool was at work")
            return
        error = work.exception()
        if isinstance(error, MCPError):
            await producer.fail(error.message)
        elif error is not None:
            raise error  # the producer fails the run with it
        elif isinstance(result := work.result(), CallToolResult):
            await producer.complete(
                result.model_dump(by_alias=True, mode="json", exclude_none=True)
            )
        else:
            await producer.fail("the tool asked for input, which a task cannot relay")

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> Task:
        run = await self._run(ctx, params.task_id)
        fields = self._task_fields(run)
        if run.status == "completed":
            fields["result"] = run.result
        elif run.status == "error":
            fields["error"] = ErrorData(code=INTERNAL_ERROR, message=run.error or "failed")
        return Task(**fields)

    async def _cancel(
        self, ctx: ServerRequestContext[Any, Any], params: TaskParams
    ) -> Acknowledged:
        run = await self._run(ctx, params.task_id)
        try:
            await self.runs.cancel(run.id)
        except RunFinished as finished:
            raise MCPError(INVALID_PARAMS, f"task {run.id} already ended") from finished
        return Acknowledged()

    async def _update(
        self, ctx: ServerRequestContext[Any, Any], params: TaskUpdateParams
    ) -> Acknowledged:
        await self._run(ctx, params.task_id)
        return Acknowledged()

    async def _run(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> Run:
        """The task's run, or `-32602` alike for an unknown task, another's, or a run that is
        not a task."""
        try:
            run = await self.runs.get(task_id, self.owner(ctx))
        except (InvalidSessionId, RunNotFound, NotOwner):
            run = None
        if run is None or not isinstance(run.input, dict) or _TOOL_KEY not in run.input:
            raise MCPError(INVALID_PARAMS, f"unknown task {task_id!r}")
        return run

    def _task_fields(self, run: Run) -> dict[str, Any]:
        settings = self.runs.settings
        if run.finished_at is None:
            kept_ms = to_ms(settings.run_max_age)
        else:
            kept_ms = run.finished_at + to_ms(settings.retention) - run.created_at
        status = _TASK_STATUS[run.status]
        return {
            "task_id": run.id,
            "status": status,
            "status_message": run.error if status in ("failed", "cancelled") else None,
            "created_at": iso_utc(run.created_at),
            "last_updated_at": iso_utc(run.finished_at or run.last_activity_at),
            "ttl_ms": kept_ms,
            "poll_interval_ms": to_ms(self.poll_interval),
        }


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    """SEP-2663: a server answers with a task only on a 2026-07-28 connection, to a client
    that declared the extension (a legacy wire cannot carry `resultType: "task"`)."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    capabilities = ctx.session.client_capabilities
    return bool(
        capabilities and capabilities.extensions and EXTENSION_ID in capabilities.extensions
    )


# -- the client ----------------------------------------------------------------------------


class TasksClient(ClientExtension):
    """Declares the Tasks extension to a server and finishes a task-answered `call_tool`: it
    polls `tasks/get` at the task's `pollIntervalMs` (at most `max_poll_interval`) until the
    task ends, and returns its `CallToolResult`. A failed task raises its `MCPError`, a
    cancelled one `MCPError` too (code -32603, `data: {"taskId", "status"}`)."""

    identifier = EXTENSION_ID

    def __init__(self, *, max_poll_interval: timedelta = timedelta(seconds=60)) -> None:
        self.max_poll_interval = max_poll_interval

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return (
            ResultClaim(
                result_type="task",
                model=CreatedTask,
                resolve=self._finish,
                protocol_versions=frozenset(MODERN_PROTOCOL_VERSIONS),
            ),
        )

    async def _finish(self, created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
        interval_ms = created.poll_interval_ms
        while True:
            pause_ms = min(interval_ms or 1000, to_ms(self.max_poll_interval))
            await asyncio.sleep(pause_ms / 1000)
            task = await ctx.session.send_request(
                GetTaskRequest(params=TaskParams(task_id=created.task_id)), Task
            )
            interval_ms = task.poll_interval_ms or interval_ms
            if task.status not in _TERMINAL_TASK:
                continue
            if task.status == "completed" and task.result is not None:
                return CallToolResult.model_validate(task.result)
            error = task.error or ErrorData(
                code=INTERNAL_ERROR,
                message=task.status_message or f"task {task.status}",
                data={"taskId": task.task_id, "status": task.status},
            )
            raise MCPError(error.code, error.message, error.data)
