"""/track holds a bounded amount of work in flight: past its byte budget a batch is answered
503 `overloaded` with Retry-After, so concurrent large batches cannot grow the process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.service import PeakRss, Service

KEY = "shop-project-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1024 * 1024


def batch(tag: str, size: int = 1000) -> bytes:
    """A valid batch of `size` events of about 1.9 KB each."""
    return orjson.dumps(
        [
            {
                "name": "screen_view",
                "device_id": f"{tag}-{n % 50}",
                "event_id": f"{tag}-{n}",
                "path": f"/{n}",
                "properties": {"text": "p" * 1800},
            }
            for n in range(size)
        ]
    )


async def test_past_the_budget_a_batch_is_answered_503_overloaded(tmp_path: Path) -> None:
    settings = Settings(
        store="memory://",
        reaper={"enabled": False},
        analytics={
            "sink": f"sqlite:///{tmp_path / 'sink.db'}",
            "jobs": False,
            "projects": {"shop": {"key": KEY}},
            "max_in_flight": 1 * MIB,
        },
    )
    app = create_app(settings)
    body = batch("a", 300)  # ~570 KB: one fits, two do not
    release = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield body[:1000]
        await release.wait()  # the first batch is in flight, its body half read
        yield body[1000:]

    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        headers = {**AUTH, "Content-Length": str(len(body))}
        first = asyncio.create_task(client.post("/api/v1/track", headers=headers, content=slowly()))
        await asyncio.sleep(0.1)  # it reads the first part, then waits for the rest
        second = await client.post("/api/v1/track", headers=AUTH, content=body)
        assert second.status_code == 503
        assert second.headers["Retry-After"] == "1"
        assert second.json()["error"] == "overloaded"
        small = await client.post("/api/v1/track", headers=AUTH, content=batch("s", 10))
        assert small.status_code == 202  # what still fits the budget goes through
        release.set()
        assert (await first).status_code == 202
        again = await client.post("/api/v1/track", headers=AUTH, content=body)
        assert again.status_code == 202
        assert again.json()["accepted"] == 300


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(
        tmp_path,
        f'store = "sqlite:///{tmp_path / "store.db"}"\n'
        "[reaper]\nenabled = false\n"
        f'[analytics]\nsink = "sqlite:///{tmp_path / "sink.db"}"\njobs = false\n'
        f'[analytics.projects.shop]\nkey = "{KEY}"\n',
    )
    running.start()
    yield running
    running.stop()


def test_100_concurrent_large_batches_keep_the_process_under_its_ceiling(
    service: Service,
) -> None:
    bodies = [batch(f"b{n}") for n in range(100)]
    assert all(1.8 * MIB < len(b) < 2 * MIB for b in bodies)
    statuses: list[int] = []

    async def send_all() -> None:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=service.url, timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.post("/api/v1/track", headers=AUTH, content=b) for b in bodies)
            )
        statuses.extend(answer.status_code for answer in answers)
        for answer in answers:
            if answer.status_code == 503:
                assert answer.json()["error"] == "overloaded"
                assert answer.headers["Retry-After"] == "1"

    with PeakRss(service) as peak:
        asyncio.run(send_all())
    assert set(statuses) <= {202, 503}
    assert statuses.count(202) >= 4  # 8 MiB of 1.9 MB batches at a time, at the least
    # the ceiling: about 10 x max_in_flight (80 MiB); without the budget, 1.3 GiB
    assert peak.grown < 120, f"grew by {peak.grown:.0f} MiB (from {peak.before:.0f})"
