"""Runs executed by a real Celery worker (prefork, two processes, on the RabbitMQ at
127.0.0.1:5672) through `sessionary.runs.celery`, on the stores processes share (SQLite and
Redis): a run is produced once with its events in order, however many times its message
comes; a run cancelled before its message came is left alone; a worker process killed mid-run
has its message delivered again and its run, retried, completes in the same log; and a task
that finds the store down is retried by Celery until the store is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from celery import Task
from celery.result import AsyncResult
from kombu import Connection, Queue

from sessionary import connect
from sessionary.logs import LogEvent
from sessionary.runs import Runs
from tests.runs.celery_app import BROKER, SETTINGS, make_app
from tests.servers import RedisServer, eventually

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")
WITHIN = 60.0  # seconds: a worker's start, a lease's lapse and a retry, on a loaded machine


class CeleryWorker:
    """`celery worker` started in a process group of its own (its main process and its
    children), consuming `queue`; its output goes to `log`."""

    def __init__(self, queue: str, store_url: str, log: Path) -> None:
        self.queue = queue
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SESSIONARY_CELERY_QUEUE": queue,
            "SESSIONARY_CELERY_STORE": store_url,
        }
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    str(CELERY),
                    "--app",
                    "tests.runs.celery_app:app",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    "2",
                    "--queues",
                    queue,
                    "--hostname",
                    f"{queue}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "INFO",
                ],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        """Kill the whole group (the children too), then drop the queue."""
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        with Connection(BROKER) as connection:
            Queue(self.queue).bind(connection.default_channel).delete()


@pytest.fixture
def queue() -> str:
    return f"sessionary-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def celery_store(shared_url: str) -> str:
    """The store of the Celery worker, of the sending app and of the test's `Runs`."""
    return shared_url


@pytest.fixture
def celery_worker(queue: str, celery_store: str, tmp_path: Path) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(queue, celery_store, tmp_path / "celery.log")
    try:
        yield worker
    finally:
        worker.stop()
        print(worker.log.read_text(errors="replace")[-20_000:])  # shown if the test failed


@pytest.fixture
def execute_run(queue: str, celery_store: str) -> Iterator[Task[[str], None]]:
    """The web side's task: what `register` gives an app that only sends."""
    app, task = make_app(queue, celery_store)
    yield task
    app.close()


@pytest_asyncio.fixture
async def runs(celery_store: str) -> AsyncIterator[Runs]:
    store = await connect(celery_store)
    yield Runs(store, SETTINGS)
    await store.close()


async def events_of(runs: Runs, run_id: str) -> list[LogEvent]:
    """The run's whole log, once it ended."""
    async with asyncio.timeout(WITHIN):
        return [event async for event in runs.events(run_id) if isinstance(event, LogEvent)]


async def done(delivery: AsyncResult[Any]) -> Any:
    """The task's result, once a worker finished it."""
    return await asyncio.to_thread(delivery.get, timeout=WITHIN)


def calls_in(calls: Path) -> list[int]:
    """The process ids of the handler's calls (see celery_app.answer)."""
    return [int(line) for line in calls.read_text().splitlines()] if calls.exists() else []


async def test_a_run_is_produced_once_with_its_events_in_order(
    runs: Runs, celery_worker: CeleryWorker, execute_run: Task[[str], None], tmp_path: Path
) -> None:
    conversation = await runs.create_conversation("alice")
    calls = tmp_path / "calls"
    run = await runs.start(conversation.id, "alice", input={"chunks": 20, "calls": str(calls)})
    deliveries = [execute_run.delay(run.id) for _ in range(2)]  # as a redelivery would come

    events = await events_of(runs, run.id)
    assert [await done(delivery) for delivery in deliveries] == [None, None]
    assert [e.type for e in events] == ["status", "status", *["chunk"] * 20, "end"]
    assert [e.data["status"] for e in events[:2]] == ["queued", "running"]
    assert [e.data["n"] for e in events[2:-1]] == list(range(20))
    assert events[-1].data == {"status": "completed", "result": {"chunks": 20}}
    assert len(calls_in(calls)) == 1
    assert calls_in(calls)[0] != celery_worker.process.pid  # a child ran it, not the main one


async def test_a_run_cancelled_before_its_message_came_is_left_alone(
    runs: Runs, celery_worker: CeleryWorker, execute_run: Task[[str], None], tmp_path: Path
) -> None:
    conversation = await runs.create_conversation("alice")
    calls = tmp_path / "calls"
    run = await runs.start(conversation.id, "alice", input={"chunks": 3, "calls": str(calls)})
    await runs.cancel(run.id, "alice")

    assert await done(execute_run.delay(run.id)) is None  # delivered, and done without error
    events = await events_of(runs, run.id)
    assert [(e.type, e.data["status"]) for e in events] == [
        ("status", "queued"),
        ("end", "cancelled"),
    ]
    assert calls_in(calls) == []


async def test_a_killed_worker_process_has_its_run_retried_to_completion(
    runs: Runs, celery_worker: CeleryWorker, execute_run: Task[[str], None], tmp_path: Path
) -> None:
    conversation = await runs.create_conversation("alice")
    calls = tmp_path / "calls"
    run = await runs.start(
        conversation.id,
        "alice",
        input={"chunks": 5, "calls": str(calls), "hang_first": True},
        retries=1,
    )
    delivery = execute_run.delay(run.id)
    async with asyncio.timeout(WITHIN):
        async for event in runs.events(run.id):
            if isinstance(event, LogEvent) and event.type == "chunk":
                hanging = int(event.data["pid"])
                break
    assert hanging != celery_worker.process.pid
    os.kill(hanging, signal.SIGKILL)

    async def completed() -> bool:
        return (await runs.get(run.id)).status == "completed"

    await eventually(completed, WITHIN, "the run was not retried to completion")
    assert await done(delivery) is None  # its message, delivered again, was done
    events = await events_of(runs, run.id)
    assert [e.type for e in events] == [
        *["status", "status", "chunk"],  # queued, running, and the first call's chunk
        "retry",  # back to queued: the first process's lease lapsed
        "status",  # running again, in another process
        *["chunk"] * 5,
        "end",
    ]
    first, second = events[1].data["worker"], events[4].data["worker"]
    assert first != second
    assert events[3].data["error"] == "the worker stopped renewing its lease"
    assert [events[1].data["attempt"], events[4].data["attempt"]] == [1, 2]
    assert [e.data["n"] for e in events[5:-1]] == list(range(5))
    assert events[-1].data == {"status": "completed", "result": {"chunks": 5}}
    assert calls_in(calls)[0] == hanging
    assert len(calls_in(calls)) == 2
    assert calls_in(calls)[1] != hanging


class TestAStoreDown:
    """On a redis-server of the test's own that keeps its data across a kill -9 (an fsynced
    append-only file), so that it comes back with the run."""

    @pytest.fixture
    def durable_redis(self, tmp_path: Path) -> Iterator[RedisServer]:
        server = RedisServer(tmp_path, None, "--appendonly", "yes", "--appendfsync", "always")
        server.start()
        yield server
        server.stop()

    @pytest.fixture
    def celery_store(self, durable_redis: RedisServer) -> str:
        return durable_redis.url

    async def test_a_run_whose_store_is_down_is_retried_by_celery_until_it_is_back(
        self,
        runs: Runs,
        durable_redis: RedisServer,
        celery_worker: CeleryWorker,
        execute_run: Task[[str], None],
        tmp_path: Path,
    ) -> None:
        conversation = await runs.create_conversation("alice")
        calls = tmp_path / "calls"
        run = await runs.start(conversation.id, "alice", input={"chunks": 3, "calls": str(calls)})
        durable_redis.stop()
        delivery = execute_run.delay(run.id)

        def retried() -> bool:
            return "Retry in" in celery_worker.log.read_text(errors="replace")

        await eventually(retried, WITHIN, "Celery did not retry the task")
        durable_redis.start()
        assert await done(delivery) is None
        events = await events_of(runs, run.id)
        assert [e.type for e in events] == ["status", "status", *["chunk"] * 3, "end"]
        assert events[-1].data == {"status": "completed", "result": {"chunks": 3}}
        assert len(calls_in(calls)) == 1
