"""Producing runs in this process: a `Worker` hands each run it is given to the application's
handler, `async def handler(producer, input) -> result`, each in its own task.

    worker = Worker(runs, my_handler)
    run = await runs.start(conversation_id, owner)
    worker.submit(run)              # returns at once; the run streams as the handler emits
    ...
    await worker.close()            # at shutdown: runs still going are retried, else `error`

The handler emits with `producer.emit(...)`, checks `producer.cancelled` between chunks and
returns the run's result (or calls `producer.complete`/`fail` itself). An exception fails the
run with its message. `sessionary serve` runs one when `runs.handler` names a handler.

A worker on any machine takes runs from the store's `runs` work queue instead (runs started
with `dispatch="queue"`; `sessionary worker` is this):

    await Worker(runs, my_handler).consume(concurrency=4)   # until cancelled

It claims up to `concurrency` runs at a time under a queue lease of `lease_ttl`, renewed with
the run's own lease while the run goes on, and acks each once the run ended. A worker killed
mid-run: its run's lease lapses and the run errors, or goes back to `queued` if it has a
retry left (`Runs.start(retries=N)`); its queue item's lease lapses too, and the next claim
(any worker's, at most `lease_ttl / 4` later) executes it again, continuing its event log.
Exactly one producer holds a run at a time (the run's lease); a second delivery of a run
that another worker is executing waits for it to end or be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from sessionary.errors import StoreUnavailable
from sessionary.logs import LogEvent
from sessionary.outage import Backoff, unless_cancelled
from sessionary.queues import WorkItem
from sessionary.runs.model import TERMINAL, Run, RunBusy, RunFinished, RunNotFound
from sessionary.runs.service import Producer, Runs

log = logging.getLogger("sessionary.runs")

Handler = Callable[[Producer, Any], Awaitable[Any]]

#: a queue lease this short releases the item: the next claim takes it
_RELEASE = timedelta(milliseconds=1)


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
    if not (
        inspect.iscoroutinefunction(handler)
        or inspect.iscoroutinefunction(getattr(handler, "__call__", None))  # noqa: B004
    ):
        raise ValueError(f"{path} is not an async function: write `async def {attribute}(...)`")
    return handler  # type: ignore[no-any-return]


def _default_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.:@-]", "-", f"{socket.gethostname()}-{os.getpid()}")[:128]


class RunMetrics(Protocol):
    """What a worker reports of the runs it executes (`sessionary.http.metrics.Metrics`)."""

    def run_started(self) -> None: ...

    def run_ended(self, outcome: str) -> None:
        """`outcome`: the producer's (`Producer.outcome`), or "ended_elsewhere" (cancelled,
        or failed by the lease sweep, while it ran) or "lost" (its lease lapsed)."""


class Worker:
    def __init__(
        self,
        runs: Runs,
        handler: Handler,
        *,
        name: str | None = None,
        metrics: RunMetrics | None = None,
    ) -> None:
        self.runs = runs
        self.handler = handler
        self.name = name or _default_name()
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()  # `stop` was called: claim nothing more

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
        await self._produce(run)

    async def _produce(self, run: Run) -> bool:
        """Produce `run`: False if another producer held it (nothing was done)."""
        producer = self.runs.producer(run.id, self.name)
        try:
            async with producer:
                if self.metrics is not None:
                    self.metrics.run_started()
                try:
                    result = await self.handler(producer, run.input)
                except RunBusy:
                    if not producer.lost:
                        raise
                    log.warning("run %s...: this worker lost its lease mid-run", run.id[:12])
                    return True
                if not producer.done:
                    await producer.complete(result)
        except RunFinished as ended:  # cancelled before its turn, or while it ran
            log.info("run %s... ended before its handler did: %s", run.id[:12], ended)
        except RunBusy:
            log.info("run %s... is another worker's", run.id[:12])
            return False
        except Exception:  # the producer failed the run with this error; the log says more
            log.exception("the handler of run %s... failed", run.id[:12])
        finally:
            if self.metrics is not None and producer.attempt:  # it began executing it
                lost = "lost" if producer.lost else "ended_elsewhere"
                self.metrics.run_ended(producer.outcome or lost)
        return True

    async def execute(self, run_id: str) -> None:
        """Produce the run if it is still to be done, and return once it ended (by this
        worker or any other) or is gone. While another producer holds it, wait: it ends, or
        its lease lapses and the run is retried, and then this worker may take it."""
        while True:
            try:
                run = await self.runs.get(run_id)
            except RunNotFound:
                return
            if run.status in TERMINAL:
                return
            if run.status == "queued" and await self._produce(run):
                return
            # running under another producer's lease: follow until it ends or is retried
            async for event in self.runs.events(run_id, after=run.cursor):
                if isinstance(event, LogEvent) and (
                    event.final or event.type in ("retry", "status")
                ):
                    break

    async def consume(self, concurrency: int = 1) -> None:
        """Execute runs from the `runs` work queue, up to `concurrency` at once, until `stop`
        (it returns when the runs going on ended) or cancelled (the runs going on are
        stopped, as `close` says). A store outage pauses the claiming (again after 1 s, 2 s,
        4 s... up to a lease's renewal period); the runs going on ride it out as their
        producers do."""
        if concurrency < 1:
            raise ValueError("a worker's concurrency is at least 1")
        queue = self.runs.queue
        lease = self.runs.settings.lease_ttl
        idle = self.runs.lease_check_every  # lapsed items are claimed again this soon
        backoff = Backoff(1.0, lease.total_seconds() / 3)
        try:
            while not self._stopping.is_set():
                if len(self._tasks) >= concurrency:
                    await self._until_stopping(
                        asyncio.wait(list(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                    )
                    continue
                try:
                    items = await queue.claim(
                        self.name, lease, limit=concurrency - len(self._tasks)
                    )
                    if not items:
                        await self._until_stopping(queue.wait(idle))
                except StoreUnavailable:
                    unless_cancelled()
                    await self._until_stopping(asyncio.sleep(backoff.next()))
                    continue
                backoff.reset()
                for item in items:
                    task = asyncio.get_running_loop().create_task(
                        self._work(item), name=f"sessionary-run-{item.id[:12]}"
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            if self._tasks:
                await asyncio.wait(list(self._tasks))
        except asyncio.CancelledError:
            await self.close()
            raise

    async def _until_stopping(self, waiting: Awaitable[object]) -> None:
        """Await `waiting`, or less: until `stop` is called."""
        if self._stopping.is_set():
            return
        work = asyncio.ensure_future(waiting)
        stopping = asyncio.get_running_loop().create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, stopping):
                task.cancel()
            await asyncio.gather(work, stopping, return_exceptions=True)
        if work.done() and not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

    async def stop(self, grace: timedelta) -> None:
        """Claim nothing more; give the runs going on `grace` to end, then stop them (each
        goes back to `queued` if it has a retry left, else ends as `error`; its queue item
        is released for the next claim). `consume` returns once they are done."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace.total_seconds())
        await self.close()

    async def _work(self, item: WorkItem) -> None:
        """Execute the run of a claimed item, holding the item while it goes on, then ack."""
        queue = self.runs.queue
        holding = asyncio.get_running_loop().create_task(self._hold(item), name="sessionary-hold")
        try:
            await self.execute(item.id)
        except asyncio.CancelledError:
            # stopped: the run ended, or went back to `queued` for a retry; either way the
            # next claim may have the item at once (it acks an ended run, executes the other)
            with contextlib.suppress(StoreUnavailable):
                await queue.renew(item.id, self.name, _RELEASE)
            raise
        finally:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
        try:
            await queue.ack(item.id, self.name)
        except StoreUnavailable:  # its lease lapses; the next claim finds the run ended
            log.warning("run %s...: could not ack its queue item", item.id[:12])

    async def _hold(self, item: WorkItem) -> None:
        """Renew the item's queue lease every third of a lease while its run goes on."""
        queue = self.runs.queue
        lease = self.runs.settings.lease_ttl
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                if not await queue.renew(item.id, self.name, lease):
                    return  # another worker claimed it: its run is safe under the run lease
            except StoreUnavailable:
                unless_cancelled()

    @property
    def running(self) -> int:
        """How many runs this worker is producing (or waiting to)."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop every run in progress (each is retried if it has a retry left, else ends as
        `error`; its readers are told at once)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
