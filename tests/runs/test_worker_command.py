"""`sessionary worker` at its edges, each through a real process: what it says (one error
line, never a traceback) when it cannot start, what its startup line shows (never the store's
password), and SIGTERM: a run in progress finishes within the grace; one longer than the grace
is stopped, retried by another worker if it has a retry left, else ended as `error`; the
process exits 0 either way."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import redis

from sessionary import connect
from sessionary.logs import LogEvent
from sessionary.runs import Run, Runs, RunsSettings
from tests.runs.workers import ROOT, SESSIONARY, Workers, worker_config
from tests.servers import RedisServer, eventually

LEASE = timedelta(seconds=2)
STOPPED = "the worker was stopped mid-run"
RELEASED = "tests.runs.workers:until_released"


def error_line(*args: str, exit_code: int) -> str:
    """Run `sessionary worker ARGS` to its end: the one `Error:` line it printed."""
    ended = subprocess.run(
        [str(SESSIONARY), "worker", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ended.returncode == exit_code, ended.stderr
    assert "Traceback" not in ended.stderr, ended.stderr
    errors = [line for line in ended.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, ended.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "name the run handler: --handler package.module:function"),
        (("--handler", "nope"), "a run handler is named 'package.module:function', not 'nope'"),
        (
            ("--handler", "missing.module:fn"),
            "cannot import the run handler's module 'missing.module': No module named 'missing'",
        ),
        (("--handler", "os:nothing"), "'os' has no function 'nothing'"),
        (("--handler", "os:getcwd"), "os:getcwd is not an async function"),
        (("--handler", RELEASED, "--grace", "soon"), "Invalid value for '--grace':"),
        (("--handler", RELEASED, "--concurrency", "0"), "Invalid value for '--concurrency'"),
    ],
)
def test_a_worker_that_cannot_start_says_why_in_one_line(
    args: tuple[str, ...], expected: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    line = error_line("--store", store, *args, exit_code=2)
    assert expected in line


async def test_the_startup_line_names_the_worker_store_and_handler_but_no_password(
    private_redis: RedisServer, workers: Workers
) -> None:
    with redis.Redis(port=private_redis.port) as admin:
        admin.config_set("requirepass", "secret")
    url = f"redis://:secret@127.0.0.1:{private_redis.port}/0"
    worker = workers.start("w-start", "--store", url, "--handler", RELEASED)
    line = await worker.started()
    assert line.startswith("worker w-start: runs of "), line
    assert f"redis://:***@127.0.0.1:{private_redis.port}/0" in line, line
    assert f"with {RELEASED}" in line, line
    worker.terminate()
    assert await worker.exited() == 0, worker.stderr
    assert "secret" not in worker.stderr
    assert "Traceback" not in worker.stderr


@pytest_asyncio.fixture
async def runs(shared_url: str) -> AsyncIterator[Runs]:
    store = await connect(shared_url)
    try:
        yield Runs(store, RunsSettings(dispatch="queue", lease_ttl=LEASE))
    finally:
        await store.close()


async def start_blocked(runs: Runs, owner: str, release: Path, retries: int = 0) -> Run:
    """A run of a conversation of its own, which `until_released` holds until `release`."""
    conversation = await runs.create_conversation(owner)
    return await runs.start(
        conversation.id, owner, input={"release": str(release)}, retries=retries
    )


async def log_of(runs: Runs, run_id: str) -> list[LogEvent]:
    return (await runs.runs.read(run_id)).events


async def until_its_first_chunk(runs: Runs, run: Run) -> None:
    async with asyncio.timeout(30):
        async for event in runs.events(run.id):
            if isinstance(event, LogEvent) and event.type == "chunk":
                return


async def test_sigterm_lets_a_run_in_progress_finish_within_the_grace(
    runs: Runs, shared_url: str, tmp_path: Path, workers: Workers
) -> None:
    release = tmp_path / "release"
    config = worker_config(tmp_path, LEASE)
    worker = workers.start(
        "wa", "--store", shared_url, "--config", str(config), "--handler", RELEASED
    )
    await worker.started()
    run = await start_blocked(runs, "alice", release)
    await until_its_first_chunk(runs, run)
    worker.terminate()
    await eventually(
        lambda: "stopping: 1 runs going on get 0:00:30 to end" in worker.stderr,
        30,
        "the worker did not hear SIGTERM",
    )
    assert (await runs.get(run.id)).status == "running"  # stopping, the run still going
    release.touch()
    assert await worker.exited() == 0, worker.stderr
    done = await runs.get(run.id)
    assert (done.status, done.result) == ("completed", {"worker": "wa", "attempt": 1})
    assert [e.type for e in await log_of(runs, run.id)] == ["status", "status", "chunk", "end"]
    assert "Traceback" not in worker.stderr


async def test_sigterm_stops_a_run_longer_than_the_grace(
    runs: Runs, shared_url: str, tmp_path: Path, workers: Workers
) -> None:
    """Once the grace is over, the run with a retry left is `queued` again at once (not a
    lease later) and another worker completes it, continuing its log; the one without ends
    as `error`."""
    release = tmp_path / "release"
    config = worker_config(tmp_path, LEASE)
    args = ("--store", shared_url, "--config", str(config), "--handler", RELEASED)
    first = workers.start("wa", *args, "--grace", "1s", "--concurrency", "2")
    await first.started()
    retried = await start_blocked(runs, "alice", release, retries=1)
    failed = await start_blocked(runs, "bob", release)
    await until_its_first_chunk(runs, retried)
    await until_its_first_chunk(runs, failed)
    terminated_ms = runs.store.clock.now_ms()
    first.terminate()
    assert await first.exited() == 0, first.stderr
    assert "Traceback" not in first.stderr

    back = await runs.get(retried.id)
    retry = (await log_of(runs, retried.id))[-1]
    assert (back.status, back.attempt) == ("queued", 1)
    assert (retry.type, retry.data) == ("retry", {"attempt": 2, "retries": 1, "error": STOPPED})
    assert retry.ts - terminated_ms >= 1000  # the grace was given
    ended = await runs.get(failed.id)
    end = (await log_of(runs, failed.id))[-1]
    assert (ended.status, ended.error) == ("error", STOPPED)
    assert (end.type, end.data) == ("end", {"status": "error", "error": STOPPED})
    assert end.ts - terminated_ms >= 1000

    release.touch()
    second = workers.start("wb", *args)
    await second.started()

    async def completed() -> bool:
        return (await runs.get(retried.id)).status == "completed"

    await eventually(completed, 30, "the retried run was not completed by the second worker")
    assert (await runs.get(retried.id)).result == {"worker": "wb", "attempt": 2}
    assert [(e.type, e.data.get("worker")) for e in await log_of(runs, retried.id)] == [
        ("status", None),
        ("status", "wa"),
        ("chunk", "wa"),
        ("retry", None),
        ("status", "wb"),
        ("chunk", "wb"),
        ("end", None),
    ]
    second.terminate()
    assert await second.exited() == 0, second.stderr
