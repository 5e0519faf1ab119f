"""`sessionary worker`: execute queued runs with the application's handler, on any machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import timedelta

import click

from sessionary.cli import DURATION, STORE_HELP
from sessionary.cli.ops import OperatorError, _connect, _one_line, _settings
from sessionary.errors import SessionaryError
from sessionary.http.metrics import Metrics, MetricsDirError
from sessionary.runs import Runs
from sessionary.runs.worker import Handler, Worker, load_handler
from sessionary.store import without_password
from sessionary.web.log_format import say, use_json_logs
from sessionary.web.settings import Settings

log = logging.getLogger("sessionary.worker")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@click.command()
@click.option(
    "--handler",
    metavar="PKG.MODULE:FUNCTION",
    help="The run handler, `async def handler(producer, input) -> result` (default: [runs] "
    "handler of --config). Imported from the current directory too.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=4,
    show_default=True,
    help="How many runs this worker executes at once.",
)
@click.option("--name", help="This worker's name in runs and logs (default: host-pid).")
@click.option(
    "--grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help="On SIGTERM or Ctrl-C: how long the runs going on may take to end before they are "
    "stopped (each is retried if it has a retry left, else ends as error).",
)
@click.option("--store", help=STORE_HELP)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="A sessionary.toml (its [runs] lease_ttl and the store's encryption keys count here).",
)
def worker(
    handler: str | None,
    concurrency: int,
    name: str | None,
    grace: timedelta,
    store: str | None,
    config: str | None,
) -> None:
    """Execute runs from the store's `runs` queue (runs started with `[runs] dispatch =
    "queue"`), `--concurrency` at a time, until SIGTERM or Ctrl-C. Any number of workers, on
    any machines sharing the store: each run is executed by one worker at a time."""
    settings = _settings(config, store=store)
    path = handler or settings.runs.handler
    if path is None:
        raise OperatorError("name the run handler: --handler package.module:function")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # as `python -m` and uvicorn: the application's own modules
    try:
        function = load_handler(path)
    except ValueError as exc:
        raise OperatorError(f"--handler: {exc}") from None
    if settings.log_format == "json":
        use_json_logs(settings.log_level)
    else:
        logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    with _one_line(mistakes=(MetricsDirError,), failures=(SessionaryError,)):
        asyncio.run(_work(settings, function, path, name, concurrency, grace))


async def _work(
    settings: Settings,
    handler: Handler,
    path: str,
    name: str | None,
    concurrency: int,
    grace: timedelta,
) -> None:
    # a store that is down may come up: the worker waits for it, as `serve` does; one that
    # refuses its URL is a mistake to fix now
    # what it executes counts in the service's /metrics when both share a
    # PROMETHEUS_MULTIPROC_DIR (a worker serves no HTTP of its own)
    metrics = Metrics()
    opened = await _connect(settings, answering=False)
    url = settings.store
    try:
        runs = Runs(opened, settings.runs)
        executor = Worker(runs, handler, name=name, metrics=metrics)
        say(
            f"worker {executor.name}: runs of {without_password(url)}, {concurrency} at a time, "
            f"with {path} (lease {settings.runs.lease_ttl}); SIGTERM or Ctrl-C stops it",
            log,
            settings.log_format,
        )
        loop = asyncio.get_running_loop()
        stopping: asyncio.Task[None] | None = None

        def stop() -> None:
            nonlocal stopping
            if stopping is None:
                log.info("stopping: %d runs going on get %s to end", executor.running, grace)
                stopping = loop.create_task(executor.stop(grace))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        # this worker also sweeps the run leases, so a dead worker's run ends (or is
        # retried) within the lease bound even when no `sessionary serve` runs
        sweeping = loop.create_task(runs.watch_leases(), name="sessionary-run-leases")
        try:
            await executor.consume(concurrency)
            if stopping is not None:
                await stopping
        finally:
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
    finally:
        metrics.leave()
        await opened.close()
