"""The analytics sinks failing: a PostgreSQL connection lost under the sink, an SQLite sink on
a full disk. Each failure is `StoreUnavailable` (so the drainer backs off and logs once, and
the routes answer 503), never a raw driver error; the sink works again by itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from sessionary import StoreUnavailable
from sessionary.analytics.postgres_sink import PostgresSink
from sessionary.analytics.sink import Sink, sink_from_url
from sessionary.sessionize import Hit, OutboxEntry, Placement, SessionRow
from tests.analytics.test_sinks import PG_URL

ROW = SessionRow(
    "s1", "p", "d1", None, 1000, 1000, 1, 1, "/", "/",
    None, None, None, None, None, None, 0, 1, False,
)  # fmt: skip


def batch(n: int, size: int = 0) -> list[OutboxEntry]:
    """An outbox entry of `n` new events (each with `size` bytes of properties)."""
    properties = b'{"p":"' + b"x" * size + b'"}'
    hits = [
        Hit(uuid.uuid4().hex, "click", 1000 + i, 2000, ("d1",), True, properties=properties)
        for i in range(n)
    ]
    places = [Placement("joined", "s1", "d1")] * n
    return [OutboxEntry(f"o{n}", "p", hits, places, [ROW], [], [])]


@pytest_asyncio.fixture
async def pg_sink() -> AsyncIterator[tuple[Sink, str]]:
    name = f"fault_{uuid.uuid4().hex[:10]}"
    sink = await sink_from_url(f"{PG_URL}?schema={name}&application_name={name}")
    yield sink, name
    await sink.close()
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await admin.close()


async def test_a_postgres_connection_lost_under_the_sink_is_store_unavailable(
    pg_sink: tuple[Sink, str],
) -> None:
    sink, name = pg_sink
    assert isinstance(sink, PostgresSink)
    await sink.write(batch(3))
    admin = await asyncpg.connect(PG_URL)
    try:
        async with admin.transaction():  # hold the sink's write mid-flight, then cut it off
            await admin.execute(f"LOCK TABLE {name}.analytics_events IN ACCESS EXCLUSIVE MODE")
            writing = asyncio.ensure_future(sink.write(batch(4)))
            for _ in range(1000):  # until it waits on the lock (10 s at most)
                if await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                    "AND wait_event_type = 'Lock'",
                    name,
                ):
                    break
                await asyncio.sleep(0.01)
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",  # the sink's own connections, no one else's
                name,
            )
            assert killed >= 1
            with pytest.raises(StoreUnavailable, match="PostgreSQL"):
                await writing
    finally:
        await admin.close()
    await sink.write(batch(4))  # the pool connects afresh: no restart
    page = await sink.sessions("p")
    assert [row.id for row in page.sessions] == ["s1"]


async def fill(sink: Sink) -> None:
    for _ in range(200):
        await sink.write(batch(20, 1000))


async def test_an_sqlite_sink_on_a_full_disk_is_store_unavailable(tiny_disk: Path) -> None:
    sink = await sink_from_url(f"sqlite:///{tiny_disk / 'sink.db'}")
    try:
        with pytest.raises(StoreUnavailable, match="full"):
            await fill(sink)
        assert (await sink.stats("p", start=None, end=None)).sessions == 1  # reads go on
    finally:
        await sink.close()
