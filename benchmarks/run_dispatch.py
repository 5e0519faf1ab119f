"""Runs dispatched and completed per second, with a handler that does nothing: through Celery
(`sessionary.runs.celery`) and through `sessionary worker`, against a bare Celery round trip.

    python benchmarks/run_dispatch.py [--runs 1000] [--concurrency 4] [--dispatchers 8]
                                      [--rounds 3] [--backends sqlite,redis]
                                      [--broker amqp://guest:guest@127.0.0.1:5672//]
                                      [--url redis://127.0.0.1:6379/9] [--smoke]

Each measurement is `--runs` items dispatched from this process, timed from the first dispatch
to the last completion; each number is the median of interleaved rounds (this VM's speed
drifts). Every kind of worker runs `--concurrency` at once, started (and warmed up) before the
rounds, all of them from the start, on the RabbitMQ of `--broker` and per backend a store of
its own (SQLite in a temporary directory, Redis under a unique key prefix, deleted after):

* bare Celery round trip (the baseline): a task that does nothing, `.delay()`ed `--runs`
  times, each result waited for on the `rpc://` backend; `celery worker --pool prefork`.
* sessionary runs through Celery: `runs.start` then `execute_run.delay(run.id)` (the task of
  `register`: acks late, its result ignored), complete at the run's `end` event, which this
  process follows (`Runs.events`); the same kind of Celery worker, with the store.
* sessionary worker: `runs.start` with `dispatch = "queue"` (the run is on the store's work
  queue when it returns), complete at the run's `end` event; `sessionary worker --store`.

Sessionary runs are started by `--dispatchers` tasks at once, each in a conversation of its
own made before the timing; both Celery apps reserve one message per process at a time
(`worker_prefetch_multiplier = 1`, as sessionary.runs.celery advises).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from celery import Celery, Task
from kombu import Queue
from rich.console import Console
from rich.table import Table

import sessionary
from run_dispatch_app import make_app
from sessionary import Store
from sessionary.logs import LogEvent
from sessionary.runs import Runs, RunsSettings
from shared import forget_redis_keys

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
BROKER = os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
PREFIX = f"bench:dispatch:{os.getpid()}:"
OWNER = "bench-user"
WITHIN_S = 300.0  # the longest a measurement may take before it is called stuck
BARE = "bare Celery round trip"
CELERY = "sessionary runs through Celery"
QUEUE = "sessionary worker"


class Processes:
    """Worker processes, each in a process group of its own (a Celery worker's children too),
    all killed at the end; their output goes to files, shown if a measurement fails."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = self.directory / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd=HERE,  # where `sessionary worker` finds run_dispatch_app
                env={**os.environ, "PYTHONPATH": str(HERE), **env},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((process, log))

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for _, log in self.started)

    def stop(self) -> None:
        for process, _ in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@dataclass
class Backend:
    """One store, the Celery app and the `Runs` that dispatch to its workers."""

    name: str
    url: str
    queue: str  # the Celery queue of this backend's Celery worker
    store: Store
    app: Celery
    bare: Task[[], None]
    execute_run: Task[[str], None]
    runs: Runs  # dispatch "none": its runs go to Celery
    queued: Runs  # dispatch "queue": its runs go to `sessionary worker`


def bare_round_trips(task: Task[[], None], n: int) -> float:
    """Tasks/s: `n` bare tasks sent and their results waited for (all in one thread: the
    `rpc://` backend answers the thread that sent)."""
    started = time.perf_counter()
    results = [task.delay() for _ in range(n)]
    for result in results:
        result.get(timeout=WITHIN_S)
    return n / (time.perf_counter() - started)


async def until_end(runs: Runs, run_id: str) -> str:
    """The run's final status, once it ended."""
    async for event in runs.events(run_id):
        if isinstance(event, LogEvent) and event.final:
            return str(event.data["status"])
    raise RuntimeError(f"the log of run {run_id} ended without its end event")


async def dispatched(
    runs: Runs, n: int, dispatchers: int, send: Callable[[str], object] | None
) -> float:
    """Runs/s: `n` runs started (each then handed to `send`, if given) by `dispatchers` tasks,
    until every one of them completed."""
    conversations = [(await runs.create_conversation(OWNER)).id for _ in range(n)]
    pending = iter(conversations)
    followers: list[asyncio.Task[str]] = []

    async def dispatcher() -> None:
        for conversation_id in pending:
            run = await runs.start(conversation_id, OWNER)
            if send is not None:
                send(run.id)
            followers.append(asyncio.create_task(until_end(runs, run.id)))

    started = time.perf_counter()
    async with asyncio.timeout(WITHIN_S):
        await asyncio.gather(*(dispatcher() for _ in range(dispatchers)))
        statuses = await asyncio.gather(*followers)
    took = time.perf_counter() - started
    if set(statuses) != {"completed"}:
        raise RuntimeError(f"runs ended {sorted(set(statuses))}, not all completed")
    return n / took


async def measure(backend: Backend, what: str, n: int, dispatchers: int) -> float:
    if what == BARE:
        return await asyncio.to_thread(bare_round_trips, backend.bare, n)
    if what == CELERY:
        return await dispatched(backend.runs, n, dispatchers, backend.execute_run.delay)
    return await dispatched(backend.queued, n, dispatchers, None)


def store_urls(directory: str, names: list[str]) -> Iterator[tuple[str, str]]:
    for name in names:
        if name == "sqlite":
            yield name, f"sqlite:///{directory}/dispatch.db"
        else:
            yield name, f"{REDIS_URL}?prefix={PREFIX}"


async def open_backend(
    name: str, url: str, broker: str, concurrency: int, processes: Processes
) -> Backend:
    """The backend's store, apps and `Runs`, its Celery worker and its sessionary worker
    started."""
    queue = f"bench-dispatch-{uuid.uuid4().hex[:12]}"
    app, bare, execute_run = make_app(broker, queue, url)
    store = await sessionary.connect(url)
    processes.start(
        f"celery-{name}",
        [
            str(BIN / "celery"),
            "--app",
            "run_dispatch_app:app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--queues",
            queue,
            "--hostname",
            f"{queue}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ],
        {"BENCH_CELERY_BROKER": broker, "BENCH_CELERY_QUEUE": queue, "BENCH_CELERY_STORE": url},
    )
    processes.start(
        f"sessionary-worker-{name}",
        [
            str(BIN / "sessionary"),
            "worker",
            "--store",
            url,
            "--handler",
            "run_dispatch_app:noop",
            "--concurrency",
            str(concurrency),
        ],
        {},
    )
    return Backend(
        name,
        url,
        queue,
        store,
        app,
        bare,
        execute_run,
        Runs(store),
        Runs(store, RunsSettings(dispatch="queue")),
    )


async def close_backend(backend: Backend) -> None:
    await backend.store.close()
    with backend.app.connection_for_write() as connection:
        Queue(backend.queue).bind(connection.default_channel).delete()
    backend.app.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs (or tasks) per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="each worker's, at once")
    parser.add_argument("--dispatchers", type=int, default=8, help="runs started at once")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--broker", default=BROKER, help="the Celery broker (RabbitMQ)")
    parser.add_argument(
        "--smoke", action="store_true", help="CI size: 20 runs, concurrency 2, one round"
    )
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.concurrency, args.rounds = 20, 2, 1
    paths = (BARE, CELERY, QUEUE)
    found: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        processes = Processes(Path(directory))
        backends: list[Backend] = []
        try:
            for name, url in store_urls(directory, args.backends.split(",")):
                backends.append(
                    await open_backend(name, url, args.broker, args.concurrency, processes)
                )
            for backend in backends:  # warm up: workers started, connected, handler imported
                for what in paths:
                    await measure(backend, what, 2 * args.concurrency, args.dispatchers)
            for _ in range(args.rounds):
                for backend in backends:
                    for what in paths:
                        rate = await measure(backend, what, args.runs, args.dispatchers)
                        found.setdefault((what, backend.name), []).append(rate)
        except BaseException:
            print(processes.logs(), file=sys.stderr)
            raise
        finally:
            processes.stop()
            for backend in backends:
                await close_backend(backend)
            if "redis" in args.backends:
                await forget_redis_keys(REDIS_URL, PREFIX)

    print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, {args.runs} per measurement, worker concurrency "
        f"{args.concurrency}, {args.dispatchers} dispatchers"
    )
    bare = statistics.median(
        rate for (what, _), rates in found.items() if what == BARE for rate in rates
    )
    table = Table(title=f"runs/s, dispatched and completed (median of {args.rounds})")
    for column in ("path", "store", "runs/s", f"vs {BARE}"):
        table.add_column(column, justify="left" if column in ("path", "store") else "right")
    table.add_row(BARE, "-", f"{bare:,.0f}", "1.00x")
    for what in (CELERY, QUEUE):
        for backend in backends:
            rate = statistics.median(found[(what, backend.name)])
            table.add_row(what, backend.name, f"{rate:,.0f}", f"{rate / bare:.2f}x")
    Console(width=200).print(table)


if __name__ == "__main__":
    asyncio.run(main())
