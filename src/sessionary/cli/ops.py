"""Running the service and its chores: serve, reap, vacuum, migrate, rekey, ping.

Every mistake an operator makes is one line on stderr naming it and its fix, never a
traceback: bad settings, a bad store URL, a port in use exit with status 2 (as click's usage
errors); a store that does not answer exits with 1. Reports go to stderr as well, where
progress bars are; only what a script reads (`ping`'s "ok") goes to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from sessionary.cli import DURATION, STORE_HELP
from sessionary.errors import BadStoreURL, StoreUnavailable
from sessionary.extras import needs
from sessionary.outage import OutageLog, repeat
from sessionary.reaper import Sweep, sweep
from sessionary.sealing import RekeyReport
from sessionary.store import SECRETS_NAMESPACE, Namespace, Store, connect, without_password

log = logging.getLogger("sessionary.cli")

if TYPE_CHECKING:
    from sessionary.analytics import VacuumReport
    from sessionary.counters import Counters
    from sessionary.playground.legacy import MigrationReport
    from sessionary.web.settings import Settings


class OperatorError(click.ClickException):
    """A mistake of the operator's (the settings, a store URL, a port): one line naming it
    and its fix, exit status 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__("; ".join(line for line in message.splitlines() if line))


def _settings(config: str | None, **flags: Any) -> Settings:
    from sessionary.web.settings import SettingsError, load_settings

    try:
        return load_settings(config, **flags)
    except SettingsError as exc:
        raise OperatorError(f"bad settings: {exc}") from None


@contextlib.contextmanager
def _one_line(
    mistakes: tuple[type[Exception], ...] = (), failures: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """What goes wrong in a command, in one line: a bad store URL or one of `mistakes` is
    the operator's to fix (exit 2); the store not answering, the machine refusing, or one of
    `failures` is the moment's (exit 1)."""
    operators: tuple[type[Exception], ...] = (BadStoreURL, *mistakes)
    moments: tuple[type[Exception], ...] = (StoreUnavailable, OSError, *failures)
    try:
        yield
    except operators as exc:
        raise OperatorError(str(exc)) from None
    except moments as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="A sessionary.toml (flags and SESSIONARY_* environment variables override it).",
)
store_option = click.option("--store", help=STORE_HELP)


async def _connect(settings: Settings, *, answering: bool = True) -> Store:
    """The store the settings name, with their encryption keys (if any), once it is known
    not to refuse its URL and (if `answering`, as a command done at once wants) to answer:
    one line then, not the outage log's warning before it (`Store.verify`)."""
    store = await connect(settings.store, encryption_keys=settings.encryption())
    try:
        await store.verify(answering=answering)
    except BaseException:
        await store.close()
        raise
    return store


@click.command()
@store_option
@click.option("--host", help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option(
    "--workers",
    help="Serving processes on the port: a number, or 'auto' for one per core (default 1).",
)
@click.option("--listen-fd", type=int, hidden=True)  # a worker of `serve --workers`: the
@click.option("--ready-fd", type=int, hidden=True)  # socket it serves, its supervisor's channel
@config_option
def serve(
    store: str | None,
    host: str | None,
    port: int | None,
    workers: str | None,
    listen_fd: int | None,
    ready_fd: int | None,
    config: str | None,
) -> None:
    """Run the HTTP service: admin API, playground, runs, /healthz, /readyz, /metrics, /docs.
    Says on stderr, once it serves, where it stores, what it serves and where the docs are."""
    import socket

    from sessionary.web.app import create_app
    from sessionary.web.log_format import say
    from sessionary.web.server import CannotListen
    from sessionary.web.server import serve as run
    from sessionary.web.settings import SettingsError
    from sessionary.web.workers import as_worker, worker_count

    settings = _settings(config, store=store, host=host, port=port, workers=workers)
    count = worker_count(settings.workers)
    if listen_fd is None and count > 1:
        _supervise(settings, count, {"store": store, "host": host, "port": port, "config": config})
        return
    # ValueError: a setting the store cannot honour (a session limit it cannot keep)
    with _one_line(mistakes=(SettingsError, CannotListen, ValueError)):
        app = create_app(settings)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, once everything is closed
            if listen_fd is None:
                run(app, settings, lambda: say(_serving(settings), log, settings.log_format))
            else:  # a worker: its supervisor speaks
                assert ready_fd is not None
                run(app, settings, as_worker(ready_fd), socket.socket(fileno=listen_fd))


def _supervise(settings: Settings, count: int, flags: dict[str, str | int | None]) -> None:
    """`serve --workers N` (N > 1): the port bound here, N workers serving it, each a
    `sessionary serve` of the same flags, settings and environment (sessionary.web.workers)."""
    import os
    import signal
    import sys

    from sessionary.http.metrics import MULTIPROCESS_DIR
    from sessionary.web.log_format import say, use_json_logs
    from sessionary.web.server import CannotListen, listening_sockets
    from sessionary.web.workers import Supervisor, shared_metrics

    def command(listen_fd: int, ready_fd: int) -> list[str]:
        given = [f"--{name}={value}" for name, value in flags.items() if value is not None]
        fds = [f"--listen-fd={listen_fd}", f"--ready-fd={ready_fd}"]
        return [sys.executable, "-m", "sessionary", "serve", *given, *fds]

    if settings.log_format == "json":
        use_json_logs(settings.log_level)
    else:
        logging.basicConfig(format="%(levelname)s:  %(message)s", level=settings.log_level.upper())
    with _one_line(mistakes=(CannotListen,)):  # one socket per worker: see its module
        sockets = listening_sockets(settings.host, settings.port, count)
    with contextlib.ExitStack() as closing:
        for sock in sockets:
            closing.enter_context(sock)
        temporary = closing.enter_context(shared_metrics())

        def started() -> None:
            shared = os.environ[MULTIPROCESS_DIR]
            made = " (made for them, removed at exit)" if temporary else ""
            workers = f"sessionary: {count} worker processes, their metrics summed in {shared}"
            say(f"{_serving(settings)}\n{workers}{made}", log, settings.log_format)

        supervisor = Supervisor(sockets, command, started)
        status = supervisor.run()
    if supervisor.stopping == signal.SIGTERM:  # cleaned up: end as one process would
        signal.raise_signal(signal.SIGTERM)
    if status:
        raise SystemExit(status)


def _serving(settings: Settings) -> str:
    """What `serve` says once it serves: where it stores (and where the analytics sink is),
    what it serves, where the docs and the console are."""
    from sessionary.web.server import base_url

    keys = len(settings.api_keys)
    features = [f"admin API ({keys or 'no'} key{'' if keys == 1 else 's'})"]
    for name, enabled in (
        ("playground", settings.playground.enabled),
        ("runs", settings.runs.enabled),
        ("analytics", settings.analytics.enabled),
        ("reaper", settings.reaper.enabled),
    ):
        if enabled:
            features.append(name)
    url = base_url(settings)
    lines = [f"sessionary: storing in {_where(settings.store)}"]
    if settings.analytics.enabled:
        lines.append(
            f"sessionary: analytics sessions and events in {_where(settings.analytics.sink)}"
        )
    lines += [
        f"sessionary: serving {', '.join(features)} on {url}",
        f"sessionary: API docs at {url}/docs",
    ]
    if settings.console.enabled:
        signing_in = "sign in with an admin API key" if keys else "add an admin API key first"
        lines.append(f"sessionary: console at {url}/console ({signing_in})")
    return "\n".join(lines)


def _where(store: str) -> str:
    """A store's or sink's URL fit to print: without its password; an SQLite file's absolute
    path."""
    from sessionary.backends.sqlite import parse_url

    if store.startswith("sqlite:"):
        path, _ = parse_url(store)
        return path if path == ":memory:" else str(Path(path).resolve())
    return without_password(store)


@click.command()
@store_option
@config_option
@click.option(
    "--every", type=DURATION, help="Keep sweeping at this interval (like '30s'); default: once."
)
@click.option(
    "--analytics",
    is_flag=True,
    help="Also close idle analytics sessions (emitting session_end) and drain to the sink.",
)
def reap(store: str | None, config: str | None, every: timedelta | None, analytics: bool) -> None:
    """Expire due sessions (each exactly once, however many reapers run) and sweep finished
    counters, in every configured namespace."""
    from sessionary.web.log_format import use_json_logs

    settings = _settings(config, store=store)
    json_logs = settings.log_format == "json"
    if json_logs:  # no progress bars then: its reports are records
        use_json_logs(settings.log_level)
    with _one_line(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_reap(settings, every, analytics, Console(stderr=True, quiet=json_logs)))


async def _reap(
    settings: Settings,
    every: timedelta | None,
    analytics: bool,
    console: Console,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Once, or (with `every`) until interrupted, riding out store outages as the service's
    reaper does (backing off, saying so once per outage)."""
    from sessionary.web.app import declare

    store = await _connect(settings, answering=every is None)  # else rides out its outage
    declared = declare(settings, store)
    try:
        if analytics:
            if declared.analytics is None:
                raise click.ClickException("analytics is disabled in the settings")
            await declared.open_sink(settings)
        namespaces, groups = declared.namespaces, declared.groups

        async def once() -> None:
            found = await _sweep_once(
                list(namespaces.values()),
                groups,
                settings.reaper.batch,
                console,
                transient=every is not None,
            )
            json_logs = settings.log_format == "json"
            if json_logs:
                log.info("reaped", extra={"expired": found.expired, "swept": found.counters})
            if analytics and declared.analytics is not None:
                closed = await declared.analytics.reap(settings.reaper.batch)
                drained = await declared.analytics.drain()
                console.print(f"analytics: closed {closed} sessions, drained {drained} entries")
                if json_logs:
                    log.info("analytics reaped", extra={"closed": closed, "drained": drained})

        if every is None:
            await once()
        else:
            outage = OutageLog(log, "sessionary reap", settle=0)
            await repeat(once, every.total_seconds(), outage, sleep=sleep)
    finally:
        await declared.close_sink()
        await store.close()


@click.command()
@store_option
@config_option
@click.option(
    "--older-than", type=DURATION, default="7d", show_default=True, help="Forget state this old."
)
def vacuum(store: str | None, config: str | None, older_than: timedelta) -> None:
    """Clean analytics state: close sessions idle longer than --older-than (emitting the
    session_end owed), forget old device states, orphaned index entries and pointers, and
    event ids past the duplicate window; then drain to the sink. Prints what it cleaned."""
    settings = _settings(config, store=store)
    with _one_line():
        report = asyncio.run(_vacuum(settings, older_than))
    click.echo(
        f"closed {report.closed} sessions, forgot {report.states} device states, "
        f"{report.index} index entries, {report.pointers} profile pointers, "
        f"{report.dedup} event ids",
        err=True,  # where `reap` reports
    )


async def _vacuum(settings: Settings, age: timedelta) -> VacuumReport:
    from sessionary.web.app import declare

    store = await _connect(settings)
    declared = declare(settings, store)
    try:
        if declared.analytics is None:
            raise click.ClickException("analytics is disabled in the settings")
        await declared.open_sink(settings)
        report = await declared.analytics.vacuum(age)
        await declared.analytics.drain()
        return report
    finally:
        await declared.close_sink()
        await store.close()


async def _sweep_once(
    namespaces: list[Namespace],
    groups: list[Counters],
    batch: int,
    console: Console,
    *,
    transient: bool,
) -> Sweep:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,.0f} removed"),
    )
    with Progress(*columns, console=console, transient=transient) as progress:
        tasks: dict[str, TaskID] = {}

        def advance(name: str, n: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"reaping {name}", total=None)
            progress.update(tasks[name], advance=n)

        found = await sweep(namespaces, groups, batch=batch, progress=advance)
    expired = ", ".join(f"{k} {v}" for k, v in found.expired.items()) or "none"
    swept = ", ".join(f"{k} {v}" for k, v in found.counters.items()) or "none"
    console.print(f"expired: {expired}", soft_wrap=True)
    console.print(f"counters swept: {swept}", soft_wrap=True)
    return found


@click.command()
@click.option(
    "--from-legacy-playground",
    "legacy",
    required=True,
    metavar="REDIS_URL",
    help="The Redis holding the original product's playground:session:* keys.",
)
@click.option("--pattern", help="Which legacy keys to read (default: playground:session:*).")
@click.option("--delete-legacy", is_flag=True, help="Delete each legacy key once migrated.")
@store_option
@config_option
def migrate(
    legacy: str, pattern: str | None, delete_legacy: bool, store: str | None, config: str | None
) -> None:
    """Bring the original product's playground sessions into the playground namespace,
    keeping tokens, creation times, remaining TTLs, used searches and indexed repos.
    Running it twice changes nothing."""
    with needs("redis", "sessionary migrate"):  # the legacy sessions are in a Redis
        from redis.exceptions import RedisError

    settings = _settings(config, store=store)
    with _one_line(failures=(RedisError,)):
        report = asyncio.run(_migrate(settings, legacy, pattern, delete_legacy))
    click.echo(
        f"migrated {report.migrated}, already there {report.already_there}, "
        f"expired {report.expired}, skipped {len(report.skipped)}"
    )
    for key, why in report.skipped[:20]:
        click.echo(f"  skipped {key}: {why}")


async def _migrate(
    settings: Settings, legacy_url: str, pattern: str | None, delete_legacy: bool
) -> MigrationReport:
    from redis.asyncio import Redis

    from sessionary.playground.legacy import LEGACY_PATTERN, count_legacy, migrate_legacy

    pattern = pattern or LEGACY_PATTERN

    store = await _connect(settings)
    legacy = Redis.from_url(legacy_url)
    try:
        name = settings.playground.namespace
        namespace = store.namespace(name, absolute_ttl=settings.playground.session_ttl)
        total = await count_legacy(legacy, pattern)
        with Progress(
            TextColumn("migrating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        ) as progress:
            task = progress.add_task("migrating", total=total)
            return await migrate_legacy(
                legacy,
                namespace,
                store.counters(name),
                pattern=pattern,
                delete_legacy=delete_legacy,
                progress=lambda: progress.advance(task),
            )
    finally:
        await legacy.aclose()
        await store.close()


@click.command()
@click.option(
    "--namespace",
    "names",
    multiple=True,
    help="Rekey this namespace (repeatable); default: every namespace the settings declare, "
    "and the store's shared secrets.",
)
@click.option("--batch", type=click.IntRange(1), default=100, show_default=True)
@store_option
@config_option
def rekey(names: tuple[str, ...], batch: int, store: str | None, config: str | None) -> None:
    """Re-seal every session under the current (first) encryption key, and seal those stored
    in clear: run it after putting a new key first, then drop the old key. Safe while the
    service runs (a concurrent update wins; the rekey reads again) and resumable (a rerun
    skips what is current). Prints the counts of each namespace."""
    settings = _settings(config, store=store)
    if not settings.encryption_keys:
        raise OperatorError(
            "rekey needs encryption keys: set encryption_keys in the settings, or "
            "SESSIONARY_ENCRYPTION_KEYS (see docs/encryption.md)"
        )
    with _one_line(failures=(ValueError,)):
        reports = asyncio.run(_rekey(settings, names, batch, Console(stderr=True)))
    for name, report in reports.items():
        click.echo(f"{name}: {report}")
    if any(report.unreadable for report in reports.values()):
        click.echo(
            "unreadable sessions were left as they are: add the key that sealed them to "
            "encryption_keys and rerun, or let them expire (see docs/encryption.md)"
        )
    if any(report.busy for report in reports.values()):
        click.echo("busy sessions kept changing meanwhile: rerun to finish them")


async def _rekey(
    settings: Settings, names: tuple[str, ...], batch: int, console: Console
) -> dict[str, RekeyReport]:
    from sessionary.web.app import declare

    store = await _connect(settings)
    try:
        declared = declare(settings, store).namespaces
        chosen = list(names) or [*declared, SECRETS_NAMESPACE]
        reports = {}
        for name in chosen:
            # a rekey keeps each session's expiry whatever the policy: any one opens it
            namespace = declared.get(name) or store.namespace(name, absolute_ttl=timedelta(days=1))
            reports[name] = await _rekey_namespace(namespace, batch, console)
        return reports
    finally:
        await store.close()


async def _rekey_namespace(namespace: Namespace, batch: int, console: Console) -> RekeyReport:
    """One namespace's rekey under a progress bar (its total: the live sessions counted
    first, so a bar of a busy namespace may end a little off)."""
    total = await namespace.count()
    with Progress(
        TextColumn(f"rekeying {namespace.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(namespace.name, total=total)
        return await namespace.rekey(
            batch=batch,
            progress=lambda report: progress.update(task, completed=report.examined),
        )


@click.command()
@store_option
@config_option
def ping(store: str | None, config: str | None) -> None:
    """Check that the store answers (exit 1 if not, 2 if its URL is wrong)."""
    settings = _settings(config, store=store)

    async def run() -> None:
        opened = await _connect(settings)
        try:
            await opened.ping()
        finally:
            await opened.close()

    with _one_line():
        asyncio.run(run())
    click.echo(f"ok: {without_password(settings.store)}")
