"""Producing runs in this process: a `Worker` hands each run it is given to the application's
handler, `async def handler(producer, input) -> result`, each in its own task.

    worker = Worker(runs, my_handler)
    run = await runs.start(conversation_id, owner)
    worker.submit(run)              # returns at once; the run streams as the handler emits
    ...
    await worker.close()            # at shutdown: runs still going end as `error`

The handler emits with `producer.emit(...)`, checks `producer.cancelled` between chunks and
returns the run's result (or calls `producer.complete`/`fail` itself). An exception fails the
run with its message. `sessionary serve` runs one when `runs.handler` names a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from sessionary.runs.model import Run, RunBusy, RunFinished
from sessionary.runs.service import Producer, Runs

log = logging.getLogger("sessionary.runs")

Handler = Callable[[Producer, Any], Awaitable[Any]]


def load_handler(path: str) -> Handler:
    """The handler at `package.module:function`; ValueError saying what is wrong otherwise."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"a run handler is named 'package.module:function', not {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import the run handler's module {module_name!r}: {exc}") from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise ValueError(f"{module_name!r} has no function {attribute!r}")
    return handler  # type: ignore[no-any-return]


def _default_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.:@-]", "-", f"{socket.gethostname()}-{os.getpid()}")[:128]


class Worker:
    def __init__(self, runs: Runs, handler: Handler, *, name: str | None = None) -> None:
        self.runs = runs
        self.handler = handler
        self.name = name or _default_name()
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, run: Run) -> asyncio.Task[None]:
        """Produce `run` in the background (once its turn comes, if it was enqueued)."""
        task = asyncio.get_running_loop().create_task(
            self.produce(run), name=f"sessionary-run-{run.id[:12]}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def produce(self, run: Run) -> None:
        """Produce `run` now: whatever happens, it ends (or was ended by someone else)."""
        try:
            async with self.runs.producer(run.id, self.name) as producer:
                result = await self.handler(producer, run.input)
                if not producer.done:
                    await producer.complete(result)
        except RunFinished as ended:  # cancelled before its turn, or while it ran
            log.info("run %s... ended before its handler did: %s", run.id[:12], ended)
        except RunBusy:
            log.info("run %s... is another worker's", run.id[:12])
        except Exception:  # the producer failed the run with this error; the log says more
            log.exception("the handler of run %s... failed", run.id[:12])

    @property
    def running(self) -> int:
        """How many runs this worker is producing (or waiting to)."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop every run in progress (each ends as `error`, its readers told at once)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
