"""examples/mcp/long_tool_calls.py as it is run: two replicas in processes of their own over one
store, driven by the SDK's client over real HTTP: a task started on one is read and cancelled
through the other (that the replica running it then stops the tool is tests/test_mcp_tasks.py's
to show), and a client of the other polls its own task to the result."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from mcp import Client

from sessionary.mcp_tasks import (
    Acknowledged,
    CancelTaskRequest,
    CreatedTask,
    GetTaskRequest,
    Task,
    TaskParams,
    TasksClient,
)
from tests.servers import free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mcp" / "long_tool_calls.py"
LIMIT_S = 30


@contextmanager
def replica(store_url: str, log: Path) -> Iterator[str]:
    """The example serving on a free port over `store_url`: its MCP endpoint's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONARY_")}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", str(port)],
            stdout=out,
            stderr=out,
            env={**env, "SESSIONARY_URL": store_url},
        )
    try:
        deadline = time.monotonic() + LIMIT_S
        while True:  # up once it answers HTTP at all
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the example did not start"
                time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def get(client: Client, task_id: str) -> Task:
    return await client.session.send_request(
        GetTaskRequest(params=TaskParams(task_id=task_id)), Task
    )


async def test_two_replicas_of_the_example_share_its_tasks(shared_url: str, tmp_path: Path) -> None:
    log = tmp_path / "replicas.log"
    with replica(shared_url, log) as first_url, replica(shared_url, log) as second_url:
        async with (
            Client(first_url, extensions=[TasksClient()]) as first,
            Client(second_url, extensions=[TasksClient()]) as second,
        ):
            # long: 10 minutes, unless cancelled
            long = {"pages": 600, "seconds_per_page": 1.0}
            created = await first.session.call_tool("report", long, allow_claimed=True)
            assert isinstance(created, CreatedTask)
            assert (await get(second, created.task_id)).status == "working"

            await second.session.send_request(
                CancelTaskRequest(params=TaskParams(task_id=created.task_id)), Acknowledged
            )

            cancelled = await get(first, created.task_id)
            assert cancelled.status == "cancelled"
            async with asyncio.timeout(LIMIT_S):
                result = await second.call_tool("report", {"pages": 2, "seconds_per_page": 0})
            assert result.structured_content == {"result": "a report of 2 pages"}
    assert "Traceback" not in log.read_text()
