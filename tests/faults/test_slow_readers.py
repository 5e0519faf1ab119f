"""Readers of event streams that stop reading hold a bounded amount of the process's memory,
are disconnected after the send timeout, and do not slow the others down.

`sessionary serve` runs in a process of its own on a private redis-server; the test writes a
run's events into the same store as a worker would, and reads them over raw sockets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from sessionary import connect
from sessionary.runs import Runs
from sessionary.runs.settings import RunsSettings, RunsUser
from tests.servers import RedisServer
from tests.service import PeakRss, Service

KEY = "alice-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BASE = "/api/v1/conversations"
SEND_TIMEOUT_S = 2
CHUNK = "x" * 8000
CHUNKS = 1024  # 8 MB of events


@pytest.fixture
def service(private_redis: RedisServer, tmp_path: Path) -> Iterator[Service]:
    running = Service(
        tmp_path,
        f'store = "{private_redis.url}"\n'
        "[analytics]\nenabled = false\n"
        f'[runs]\nstream_send_timeout = "{SEND_TIMEOUT_S}s"\n'
        f'users = [{{ key = "{KEY}", subject = "alice" }}]\n',
    )
    running.start()
    yield running
    running.stop()


@pytest_asyncio.fixture
async def runs(private_redis: RedisServer) -> AsyncIterator[Runs]:
    store = await connect(private_redis.url)
    yield Runs(store, RunsSettings(users=[RunsUser(key=KEY, subject="alice")]))
    await store.close()


async def finished_run(service: Service, runs: Runs, chunks: int = CHUNKS) -> str:
    """A run with `chunks` events of 8 KB, ended; the path of its event stream."""
    async with httpx.AsyncClient(base_url=service.url, headers=AUTH) as client:
        conversation = (await client.post(BASE)).json()["conversationId"]
        run = (await client.post(f"{BASE}/{conversation}/runs")).json()["runId"]
    async with runs.producer(run) as producer:
        for n in range(0, chunks, 64):
            await asyncio.gather(*(producer.emit("chunk", CHUNK) for _ in range(64)))
            del n
        await producer.complete({"chunks": chunks})
    return f"{BASE}/{conversation}/runs/{run}/events"


def stalled_reader(service: Service, path: str) -> socket.socket:
    """A reader that asks for the stream and never reads (a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", service.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n".encode())
    return sock


def drain(sock: socket.socket, seconds: float) -> tuple[int, bool]:
    """Read what the socket holds: (bytes, whether the server had closed it)."""
    sock.settimeout(seconds)
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except (TimeoutError, ConnectionResetError):
        return total, False
    return total, True


async def test_200_stalled_readers_of_an_8_mb_run_are_bounded_and_cut(
    service: Service, runs: Runs
) -> None:
    path = await finished_run(service, runs)
    with PeakRss(service) as peak:
        stalled = [stalled_reader(service, path) for _ in range(200)]
        started = time.monotonic()
        # meanwhile a reader that reads gets the whole run, promptly
        async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=30) as client:
            whole = await client.get(path)
            took = time.monotonic() - started
            health = await client.get("/healthz")
        assert whole.text.count("event: chunk") == CHUNKS
        assert "event: end" in whole.text
        assert took < 20  # it shares the CPU with the 200 others filling their buffers
        assert health.status_code == 200
        await asyncio.sleep(SEND_TIMEOUT_S + 2)  # past the send timeout: they are cut
    try:
        for sock in stalled:
            received, closed = drain(sock, 5)
            assert closed, "a stalled reader was not disconnected"
            assert received < 2_000_000  # what the buffers held when it was cut, not the run
    finally:
        for sock in stalled:
            sock.close()
    assert peak.grown < 120, f"grew by {peak.grown:.0f} MiB from {peak.before:.0f}"
    # an expected cut: one warning per reader, no error of the server's
    log = service.log.read_text()
    assert log.count("reader took nothing for 2.0 s: disconnected") == 200
    assert "ASGI callable" not in log
    assert "ERROR" not in log, log[:2000]


async def test_the_hub_keeps_a_bounded_tail_and_a_follower_far_behind_reads_the_store() -> None:
    from sessionary.logs import _BUFFER_BYTES

    store = await connect("memory://")
    try:
        log = store.namespace("log", idle_ttl=timedelta(hours=1))
        session = await log.create()
        fast: list[Any] = []
        slow: list[Any] = []
        resume = asyncio.Event()

        async def follow(into: list[Any], pause: asyncio.Event | None) -> None:
            async for event in log.follow(session.id):
                into.append(event.data)
                if pause is not None and len(into) == 1:
                    await pause.wait()  # far behind while 3 MB are appended

        readers = [
            asyncio.create_task(follow(fast, None)),
            asyncio.create_task(follow(slow, resume)),
        ]
        await log.append(session.id, "e", 0)
        for n in range(1, 51):
            await log.append(session.id, "e", f"{n}" + 60_000 * "y")  # 50 x 60 KB
            await asyncio.sleep(0)
        (watch,) = store._hub._watches.values()
        assert watch.size <= _BUFFER_BYTES
        resume.set()
        await log.append(session.id, "end", None, final=True)
        await asyncio.wait_for(asyncio.gather(*readers), 10)
        expected = [0, *(f"{n}" + 60_000 * "y" for n in range(1, 51)), None]
        assert fast == expected
        assert slow == expected  # no gap: what the hub no longer kept came from the store
    finally:
        await store.close()
