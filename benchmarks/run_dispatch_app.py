"""The Celery application and the run handler of benchmarks/run_dispatch.py (a helper, not a
benchmark). The benchmark makes its own app with `make_app` to send tasks; its Celery workers
find theirs as `app`, made from the environment; `sessionary worker` loads `noop`:

    BENCH_CELERY_BROKER=amqp://... BENCH_CELERY_QUEUE=<queue> BENCH_CELERY_STORE=<store url> \\
        celery -A run_dispatch_app:app worker --pool prefork --queues <queue>
    sessionary worker --store <store url> --handler run_dispatch_app:noop
"""

from __future__ import annotations

import functools
import os
from typing import Any

from celery import Celery, Task

from sessionary.runs import Producer
from sessionary.runs.celery import register


async def noop(producer: Producer, input: Any) -> None:
    """The run handler: nothing to produce, so a run costs only its dispatch and its states."""


def bare() -> None:
    """The bare Celery task: nothing to do, so it costs only Celery's round trip."""


def make_app(
    broker: str, queue: str, store: str
) -> tuple[Celery, Task[[], None], Task[[str], None]]:
    """An app whose tasks go to `queue`, its bare task (results on `rpc://`, waited for) and its
    `execute_run` (as `register` makes it: its result is the run's, in the store). Both under
    `worker_prefetch_multiplier = 1`, as sessionary.runs.celery advises."""
    app = Celery("sessionary-bench", broker=broker, backend="rpc://")
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=60,  # the queues of results (rpc://) go a minute after their last use
    )
    bare_task: Task[[], None] = app.task(name="bench.bare")(bare)
    execute_run = register(app, store=store, handler=noop)
    return app, bare_task, execute_run


@functools.cache
def _from_environment() -> Celery:
    app, _, _ = make_app(
        os.environ["BENCH_CELERY_BROKER"],
        os.environ["BENCH_CELERY_QUEUE"],
        os.environ["BENCH_CELERY_STORE"],
    )
    return app


def __getattr__(name: str) -> Celery:
    """`app`, the workers' (made on first access: the benchmark imports this module too)."""
    if name == "app":
        return _from_environment()
    raise AttributeError(name)
