"""Producing runs from Celery, for applications that already run Celery workers: a task that
executes a run with the application's handler (see `sessionary.runs.worker`), in the Celery
worker's process.

    # myapp/tasks.py, imported by the web side and by the Celery workers alike
    from celery import Celery
    from sessionary.runs.celery import register

    app = Celery("myapp", broker="amqp://guest:guest@127.0.0.1:5672//")
    app.conf.worker_prefetch_multiplier = 1
    execute_run = register(app, store="redis://127.0.0.1:6379/0", handler="myapp.answers:answer")

    # the web side, after `run = await runs.start(conversation_id, owner, retries=1)`:
    execute_run.delay(run.id)

    $ celery -A myapp.tasks worker --pool prefork --concurrency 8

- The task produces the run through `Worker.execute`, so a run is produced once however many
  times its message is delivered: a delivery while another worker holds the run waits for its
  end. A run that ended before its message came (cancelled) makes the task a no-op, and so
  does one gone from the store (past its retention).
- A worker process killed mid-run: `acks_late` with `reject_on_worker_lost` puts the message
  back on the queue instead of dropping it. The delivery that follows waits until the dead
  worker's lease lapses; a run started with `retries=N` then goes back to `queued` (a `retry`
  event in the same event log) and this delivery produces it; without retries it ends as
  `error`. Each worker process sweeps the runs' leases (`Runs.watch_leases`) for this, so it
  happens even where no `sessionary serve` runs.
- Set `worker_prefetch_multiplier = 1`: a process then reserves only the message it works on,
  and a run never waits behind a long one in a busy process while another process idles.
- The store unreachable as the task begins (`StoreUnavailable`): Celery retries the task,
  within 1 s, 2 s, 4 s... (jittered) up to a minute apart, for as long as it takes: the run
  waits, it is not lost. (Once the handler runs, an outage is the producer's to ride out, as
  in any worker: `sessionary.runs.service`.)
- A run started with the `enqueue` policy behind another run of its conversation waits for its
  turn inside its task, holding a worker process meanwhile.
- The task's result is None and is not stored (`ignore_result`): a run's result, and its
  events, are read from the run. Keyword arguments of `register` beyond its own are Celery's
  task options, and override these.
- Each worker process has one store (opened on its first task, and again in a forked child:
  see `sessionary.sync`) with one `Runs` and one `Worker` on it. The handler, given as
  "package.module:function", is imported on the first task, so that the web side, which
  imports the same module to send tasks, does not import it (nor whatever it needs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from sessionary.extras import needs

with needs("celery", "sessionary.runs.celery"):
    from celery import Celery, Task

from sessionary.errors import StoreUnavailable
from sessionary.runs.service import Runs
from sessionary.runs.settings import RunsSettings
from sessionary.runs.worker import Handler, Worker, load_handler
from sessionary.store import Store
from sessionary.sync import SyncStore, connect_sync

__all__ = ["TASK_NAME", "TASK_OPTIONS", "register"]

#: the task's name unless `register` is told another (the web side and the workers must agree)
TASK_NAME = "sessionary.runs.execute"

#: the Celery options `register` gives the task (see the module's docstring for why each)
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (StoreUnavailable,),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
    "ignore_result": True,
}


class _Executor:
    """One registration's producing side in this process: the `Worker` on the process's
    store, made on the store's loop by the first task that needs it, and made again for the
    new store of a forked child. `Runs` subscribes to its store's `expired` events, so one per
    task would pile up subscriptions (and sweepers): one per store."""

    def __init__(self, handler: str | Handler, settings: RunsSettings | None, name: str | None):
        self._handler = handler
        self._settings = settings
        self._name = name
        #: the store this process's worker is on, the worker, and its lease sweeper (kept so
        #: that the task is not collected)
        self._bound: tuple[Store, Worker, asyncio.Task[None]] | None = None

    def worker(self, store: Store) -> Worker:
        """On the store's loop: the worker on `store`."""
        bound = self._bound
        if bound is not None and bound[0] is store:
            return bound[1]
        handler = self._handler if callable(self._handler) else load_handler(self._handler)
        runs = Runs(store, self._settings)
        worker = Worker(runs, handler, name=self._name)
        sweeper = asyncio.get_running_loop().create_task(
            runs.watch_leases(), name="sessionary-celery-leases"
        )
        self._bound = (store, worker, sweeper)
        return worker


def register(
    app: Celery,
    *,
    store: str | SyncStore,
    handler: str | Handler,
    settings: RunsSettings | None = None,
    name: str | None = None,
    task_name: str = TASK_NAME,
    **options: Any,
) -> Task[[str], None]:
    """The task that executes a run (`execute_run.delay(run.id)`), registered on `app`.

    `store`: a store URL, or a `SyncStore` (for what a URL does not say, such as encryption
    keys, or to share one with other code of the process); nothing is opened before the first
    task, so the web side, which only sends, opens nothing. `handler`: `async def
    handler(producer, input) -> result`, or its "package.module:function". `settings`: the
    runs' settings (the lease, above all), as the web side has them. `name`: the worker's name
    in the runs' events and the logs (default: host name and process id). `options`: Celery
    task options, over `TASK_OPTIONS`."""
    sync_store = connect_sync(store) if isinstance(store, str) else store
    executor = _Executor(handler, settings, name)

    def execute_run(run_id: str) -> None:
        """Produce the run `run_id` with the handler, unless it is done or ended already."""
        sync_store.run(lambda async_store: executor.worker(async_store).execute(run_id))

    # (options given as a dict match every overload of `app.task`: say which one this is)
    decorate = cast(
        "Callable[[Callable[[str], None]], Task[[str], None]]",
        app.task(name=task_name, **{**TASK_OPTIONS, **options}),
    )
    return decorate(execute_run)
