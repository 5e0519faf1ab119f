"""Real `sessionary worker` processes for the tests, and the run handlers they load
(`--handler tests.runs.workers:chunks`): every chunk a handler emits names the worker and the
attempt that produced it, so a run's log tells who held it when."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from sessionary.runs import Producer
from tests.servers import eventually

ROOT = Path(__file__).resolve().parents[2]
SESSIONARY = Path(sys.executable).with_name("sessionary")
#: chunks of `chunks`, and the pause before each: runs are in flight when a worker is killed
CHUNKS = 4
CHUNK_PAUSE_S = 0.025


def worker_config(directory: Path, lease: timedelta) -> Path:
    """A sessionary.toml giving the workers this run lease (`--config`)."""
    config = directory / "sessionary.toml"
    config.write_text(f'[runs]\nlease_ttl = "{int(lease.total_seconds() * 1000)}ms"\n')
    return config


def signed(producer: Producer, **data: Any) -> dict[str, Any]:
    """A chunk's data, signed by its producer's worker and attempt."""
    return {"worker": producer.worker, "attempt": producer.attempt, **data}


async def chunks(producer: Producer, input: Any) -> dict[str, Any]:
    """`CHUNKS` chunks, `CHUNK_PAUSE_S` apart."""
    for n in range(CHUNKS):
        await asyncio.sleep(CHUNK_PAUSE_S)
        await producer.emit("chunk", signed(producer, n=n))
    return signed(producer)


async def until_released(producer: Producer, input: Any) -> dict[str, Any]:
    """One chunk, then nothing until the file `input["release"]` exists: a run as long as
    the test wants, with no guess at how long that is."""
    await producer.emit("chunk", signed(producer, n=0))
    release = Path(input["release"])
    # the test process creates the file: no asyncio.Event reaches across processes
    while not await asyncio.to_thread(release.exists):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return signed(producer)


class WorkerProcess:
    """`sessionary worker --name NAME ...args`, run from the checkout (so it imports
    `tests.runs.workers`), in a process group of its own so that `kill` leaves nothing
    behind; its stderr goes to a file, read with `stderr`."""

    def __init__(self, directory: Path, name: str, *args: str) -> None:
        self.name = name
        self.log = directory / f"{name}.stderr"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [str(SESSIONARY), "worker", "--name", name, *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=output,
                start_new_session=True,
            )

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    async def started(self, within: float = 30) -> str:
        """The startup line, once the worker printed it."""
        await eventually(
            lambda: f"worker {self.name}: " in self.stderr or self.process.poll() is not None,
            within,
            f"{self.name} did not start",
        )
        assert self.process.poll() is None, f"{self.name} exited:\n{self.stderr}"
        return next(line for line in self.stderr.splitlines() if line.startswith("worker "))

    async def exited(self, within: float = 60) -> int:
        """The exit code, once the process ended."""
        await eventually(
            lambda: self.process.poll() is not None, within, f"{self.name} did not exit"
        )
        return self.process.wait()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process group (a no-op once it is gone), and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


class Workers:
    """The worker processes one test started (the `workers` fixture kills them all)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def start(self, name: str, *args: str) -> WorkerProcess:
        process = WorkerProcess(self.directory, name, *args)
        self.started.append(process)
        return process
