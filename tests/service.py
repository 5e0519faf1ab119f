"""A server of the test's own: `sessionary serve` as a process (`Service`), to measure it from
outside (its RSS, its sockets) or to abuse it with raw sockets; or an app on a real socket in the
test's event loop (`serving`). And what a client reads of an event stream (`parse_sse`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn

from tests.servers import free_port


class Service:
    """`sessionary serve` with `config` (TOML lines; the port is added), on a free port."""

    def __init__(self, directory: Path, config: str) -> None:
        self.port = free_port()
        self.path = directory / "sessionary.toml"
        self.log = directory / "serve.log"  # what the server printed (its tracebacks, say)
        self.path.write_text(f'port = {self.port}\nlog_level = "warning"\n{config}')
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sessionary", "serve", "--config", str(self.path)],
                stdout=log,
                stderr=log,
                env={k: v for k, v in os.environ.items() if not k.startswith("SESSIONARY_")},
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sessionary serve did not become ready")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        """The process's resident memory now, in MiB."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


class PeakRss:
    """The service's largest RSS while the block runs (sampled by a thread every 20 ms), and
    how much it grew over what it was before."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.before = self.peak = service.rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.service.rss_mb())
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def grown(self) -> float:
        return self.peak - self.before


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[str]:
    """The app of `config` on a real socket (uvicorn, in this event loop); yields its base URL."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.01)
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        await task


def parse_sse(text: str) -> list[dict[str, str]]:
    """Each SSE message as its fields (a comment's text under "")."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = f"{fields[name]}\n{value}" if name in fields else value
        if fields:
            messages.append(fields)
    return messages


def events_in(text: str) -> list[dict[str, str]]:
    """The messages that are events (not a comment, a heartbeat or a bare retry)."""
    return [m for m in parse_sse(text) if "event" in m]
