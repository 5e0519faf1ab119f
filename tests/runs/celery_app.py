"""The Celery application of tests/runs/test_celery.py: the test process makes its own with
`make_app` to send tasks; its worker processes find theirs as `app`, made from the environment:

    SESSIONARY_CELERY_QUEUE=<queue> SESSIONARY_CELERY_STORE=<store url> \\
        celery -A tests.runs.celery_app:app worker --pool prefork --queues <queue>
"""

from __future__ import annotations

import asyncio
import functools
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery, Task

from sessionary.runs import Producer, RunsSettings
from sessionary.runs.celery import register

BROKER = "amqp://guest:guest@127.0.0.1:5672//"
#: short, so that a killed worker's run is retried within seconds
SETTINGS = RunsSettings(lease_ttl=timedelta(seconds=2))


def make_app(queue: str, store: str) -> tuple[Celery, Task[[str], None]]:
    """An app whose tasks go to `queue` and whose runs are on `store`, and its `execute_run`
    (whose result is kept, on the `rpc://` backend: a test waits for a task to be done)."""
    app = Celery("sessionary-tests", broker=BROKER, backend="rpc://")
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=60,  # the queues of results (rpc://) go a minute after their last use
    )
    execute_run = register(
        app, store=store, handler=f"{__name__}:answer", settings=SETTINGS, ignore_result=False
    )
    return app, execute_run


@functools.cache
def _from_environment() -> Celery:
    app, _ = make_app(os.environ["SESSIONARY_CELERY_QUEUE"], os.environ["SESSIONARY_CELERY_STORE"])
    return app


def __getattr__(name: str) -> Celery:
    """`app`, the worker's (made on first access: the test process imports this module too,
    without that environment)."""
    if name == "app":
        return _from_environment()
    raise AttributeError(name)


def _record_call(calls: Path) -> int:
    """Add this process's id to the file of calls; how many calls it holds now."""
    with calls.open("a") as file:
        file.write(f"{os.getpid()}\n")
    return len(calls.read_text().splitlines())


async def answer(producer: Producer, input: dict[str, Any]) -> dict[str, int]:
    """The run handler: notes each call in the file `input["calls"]` (a line per call, its
    process id), emits `input["chunks"]` chunks and returns how many. With `hang_first`, its
    first call emits one chunk and hangs, for the test to kill its process."""
    call = _record_call(Path(input["calls"]))
    if input.get("hang_first") and call == 1:
        await producer.emit("chunk", {"n": "hanging", "pid": os.getpid()})
        await asyncio.Event().wait()
    for n in range(input["chunks"]):
        await producer.emit("chunk", {"n": n, "pid": os.getpid()})
    return {"chunks": input["chunks"]}
