"""A server of the test's own: `sessionary serve` as a process (`Service`), to measure it from
outside (its RSS, its sockets) or to abuse it with raw sockets; or an app on a real socket in the
test's event loop (`serving`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
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
