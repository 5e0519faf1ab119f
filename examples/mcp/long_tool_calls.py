"""A stateless MCP server whose long tool call is a task kept as a sessionary run.

    pip install 'sessionary[mcp]'
    python examples/mcp/long_tool_calls.py --port 8000 &       # one replica
    python examples/mcp/long_tool_calls.py --port 8001 &       # another, over the same store
    python examples/mcp/long_tool_calls.py --call http://127.0.0.1:8001/mcp --pages 3

`report` takes `pages` x `seconds_per_page` seconds. A client that declares the MCP Tasks
extension (the SDK's `Client(extensions=[TasksClient()])`, as `--call` does) is answered at once
with a task, the run's id, and polls `tasks/get` until the report is done; any replica over the
same store (SESSIONARY_URL, default an SQLite file here) answers the polls, and `tasks/cancel`
on any of them stops the report where it runs. A client without the extension gets the report
in the call, as from any MCP server. `--task-of URL --pages N` starts a task on one replica and
prints its id, and `--get URL TASK_ID` reads it, from any replica.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import timedelta

import uvicorn
from mcp import Client
from mcp.server.mcpserver import MCPServer

import sessionary
from sessionary.mcp_tasks import (
    CreatedTask,
    GetTaskRequest,
    RunTasks,
    Task,
    TaskParams,
    TasksClient,
)
from sessionary.runs import Runs

STORE_URL = os.environ.get("SESSIONARY_URL", "sqlite:///mcp-tasks.db")


def create_server(runs: Runs) -> tuple[MCPServer, RunTasks]:
    """The MCP server, with `report` served as a task backed by `runs`."""
    tasks = RunTasks(runs, task_tools={"report"}, poll_interval=timedelta(milliseconds=200))
    server = MCPServer("reports", extensions=[tasks])

    @server.tool()
    async def report(pages: int, seconds_per_page: float = 1.0) -> str:
        """Write a report of `pages` pages, one every `seconds_per_page` seconds."""
        for _ in range(pages):
            await asyncio.sleep(seconds_per_page)  # the long work this example stands for
        return f"a report of {pages} pages"

    return server, tasks


async def serve(port: int) -> None:
    store = await sessionary.connect(STORE_URL)
    runs = Runs(store)
    server, tasks = create_server(runs)
    # a replica that dies mid-task: another's sweep fails its run within the lease bound
    watching = asyncio.create_task(runs.watch_leases())
    config = uvicorn.Config(server.streamable_http_app(), port=port, log_level="warning")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await tasks.aclose()  # this replica's tasks fail at once, not at the lease bound
        watching.cancel()
        await store.close()


async def call(url: str, pages: int, seconds_per_page: float) -> None:
    async with Client(url, extensions=[TasksClient()]) as client:
        result = await client.call_tool(
            "report", {"pages": pages, "seconds_per_page": seconds_per_page}
        )
        print(result.structured_content)


async def task_of(url: str, pages: int, seconds_per_page: float) -> None:
    async with Client(url, extensions=[TasksClient()]) as client:
        created = await client.session.call_tool(
            "report", {"pages": pages, "seconds_per_page": seconds_per_page}, allow_claimed=True
        )
        assert isinstance(created, CreatedTask)
        print(created.task_id)


async def get(url: str, task_id: str) -> None:
    async with Client(url, extensions=[TasksClient()]) as client:
        task = await client.session.send_request(
            GetTaskRequest(params=TaskParams(task_id=task_id)), Task
        )
        print(task.model_dump_json(by_alias=True, exclude_none=True, exclude={"meta"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--call", metavar="URL", help="call report through the server at URL")
    parser.add_argument("--task-of", metavar="URL", help="start report as a task, print its id")
    parser.add_argument("--get", nargs=2, metavar=("URL", "TASK_ID"), help="print a task")
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--seconds-per-page", type=float, default=1.0)
    args = parser.parse_args()
    if args.call:
        asyncio.run(call(args.call, args.pages, args.seconds_per_page))
    elif args.task_of:
        asyncio.run(task_of(args.task_of, args.pages, args.seconds_per_page))
    elif args.get:
        asyncio.run(get(*args.get))
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
