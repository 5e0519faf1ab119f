"""The ClickHouse sink beyond the suite every sink passes (tests/analytics/test_sinks.py): the
same traffic answers the same on ClickHouse (the 18.16 server and chdb's current engine) as on
SQLite; what the server's failures become; the DDL it prints; the URL; its inserts."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from sessionary import ManualClock, connect
from sessionary.analytics import Sessionizer, TrackEvent
from sessionary.analytics.clickhouse_sink import (
    Body,
    ClickHouseError,
    ClickHouseSink,
    HttpTransport,
    ddl,
    literal,
)
from sessionary.analytics.sink import SessionsPage, Sink, sink_from_url
from sessionary.errors import StoreUnavailable
from sessionary.sessionize import Hit, OutboxEntry, Placement, SessionRow
from tests.analytics.clickhouse import ChdbTransport, in_database, rows
from tests.servers import ClickHouseServer, free_port

DAY = 86_400_000


def database_url(server: ClickHouseServer, database: str) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{database}"


async def ch(
    server: ClickHouseServer, sql: str, database: str = "default"
) -> list[tuple[object, ...]]:
    """A statement on the server (rows of a SELECT), outside the sink."""
    transport = in_database(server.url, database)
    try:
        return await rows(transport, sql)
    finally:
        await transport.close()


@pytest_asyncio.fixture
async def database(clickhouse_server: ClickHouseServer) -> AsyncIterator[str]:
    """A database of the test's own on the session's server, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    await ch(clickhouse_server, f"DROP DATABASE IF EXISTS {name}")


# -- the same traffic, the same answers -------------------------------------------------------


class Retrying:
    """Hands each write to every sink, twice to those that are not transactional (a drainer
    that crashed after writing and before acknowledging)."""

    def __init__(self, sinks: Sequence[Sink], twice: Sequence[Sink]) -> None:
        self.sinks, self.twice = sinks, twice

    async def write(self, entries: Sequence[OutboxEntry]) -> None:
        for sink in self.sinks:
            await sink.write(entries)
        for sink in self.twice:
            await sink.write(entries)


async def traffic(seed: int, sink: Retrying) -> None:
    """Three days of a random site's events (devices coming back, late and duplicate events,
    profiles, paths), sessionized on a memory store and drained in small steps (so sessions
    are written again and again, their start moving back), every session reaped at the end."""
    rng = random.Random(seed)
    clock = ManualClock(1_700_000_000_000)
    store = await connect("memory://", clock=clock)
    sessionizer = Sessionizer(store)
    sessionizer.sink = sink  # type: ignore[assignment]  # it only writes
    try:
        start = clock.now_ms()
        for step in range(40):
            now = start + step * 2 * 3_600_000  # a batch every 2 h: three days and more
            clock.advance(now - clock.now_ms())
            batch = []
            for _ in range(rng.randint(5, 60)):
                device = f"d{rng.randint(0, 40)}"
                raw: dict[str, object] = {
                    "name": rng.choice(["screen_view", "screen_view", "click", "purchase"]),
                    "device_id": device,
                    "timestamp": now - rng.randint(0, 50 * 60_000),  # up to 50 min late
                    "path": rng.choice(["/", "/a", "/b", "/Z", "/café", None]),
                    "event_id": f"e{rng.randint(0, 3000)}",  # some are duplicates
                }
                if rng.random() < 0.2:
                    raw["profile_id"] = f"u{rng.randint(0, 5)}"
                if rng.random() < 0.1:
                    raw["revenue"] = rng.randint(1, 5000)
                batch.append(TrackEvent.parse({k: v for k, v in raw.items() if v is not None}))
            await sessionizer.ingest("p", batch)
            await sessionizer.drain(limit=rng.randint(1, 4))
        clock.advance(DAY)
        await sessionizer.reap()
        await sessionizer.drain(limit=3)
    finally:
        await store.close()


async def every_page(sink: Sink, **filters: object) -> list[SessionsPage]:
    pages, after = [], None
    while True:
        page = await sink.sessions("p", limit=17, after=after, **filters)  # type: ignore[arg-type]
        pages.append(page)
        if page.next is None:
            return pages
        after = page.next


@pytest.mark.parametrize("seed", [1])
async def test_the_same_traffic_answers_the_same_as_on_sqlite(
    seed: int, tmp_path: Path, clickhouse_server: ClickHouseServer, database: str
) -> None:
    sqlite = await sink_from_url(f"sqlite:///{tmp_path / 'analytics.db'}")
    server = await sink_from_url(database_url(clickhouse_server, database))
    chdb = await ClickHouseSink.on(ChdbTransport(tmp_path / "chdb"))
    try:
        await traffic(seed, Retrying([sqlite, server, chdb], [server, chdb]))
        start = 1_700_000_000_000
        ranges = [
            (None, None, "day"), (None, None, "hour"), (start, start + DAY, "hour"),
            (start + DAY // 3, start + 2 * DAY + 5, "day"), (start + DAY, None, "day"),
            (None, start + DAY, "hour"), (start + 5 * DAY, start + 6 * DAY, "day"),
        ]  # fmt: skip
        expected = [await sqlite.stats("p", start=a, end=b, interval=i) for a, b, i in ranges]
        assert expected[0].sessions > 50  # the traffic is not trivial
        assert sum(b.bounces for b in expected[0].sessions_over_time) > 0
        for other in (server, chdb):
            assert [await other.stats("p", start=a, end=b, interval=i) for a, b, i in ranges] == (
                expected
            )
            for filters in ({}, {"device_id": "d3"}, {"profile_id": "u1"}, {"start": start + DAY}):
                assert await every_page(other, **filters) == await every_page(sqlite, **filters)
    finally:
        for sink in (sqlite, server, chdb):
            await sink.close()


# -- what the server's failures become ------------------------------------------------------


async def test_a_server_out_of_reach_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await sink_from_url(f"clickhouse://default@127.0.0.1:{free_port()}/analytics")


async def test_a_server_that_stops_and_comes_back(tmp_path: Path) -> None:
    """While the server is down every call is a StoreUnavailable (the drainer backs off, the
    routes answer 503); once it is back the retried write stores each row once."""
    server = ClickHouseServer(tmp_path)
    server.start()
    sink = await sink_from_url(database_url(server, "analytics"))
    try:
        entries = await drained_entries()
        await sink.write(entries[:1])
        server.stop()
        with pytest.raises(StoreUnavailable):
            await sink.write(entries)
        with pytest.raises(StoreUnavailable):
            await sink.stats("p", start=None, end=None)
        with pytest.raises(StoreUnavailable):
            await sink.sessions("p")
        server.start()
        await sink.write(entries)
        await sink.write(entries)
        [[events, ids]] = await ch(
            server, "SELECT count(), uniqExact(event_id) FROM analytics_events FINAL", "analytics"
        )
        assert events == ids == sum(len(e.hits) + len(e.started) + len(e.ended) for e in entries)
        assert (await sink.stats("p", start=None, end=None)).sessions == 3
    finally:
        await sink.close()
        server.stop()


async def drained_entries() -> list[OutboxEntry]:
    """The outbox of three sessions of one project, opened and then closed."""
    clock = ManualClock(1_700_000_000_000)
    store = await connect("memory://", clock=clock)
    try:
        sessionizer = Sessionizer(store)
        now = clock.now_ms()
        await sessionizer.ingest(
            "p",
            [
                TrackEvent.parse({"name": "screen_view", "device_id": f"d{i}", "timestamp": now})
                for i in range(3)
            ],
        )
        clock.advance(DAY)
        await sessionizer.reap()
        entries = await sessionizer.backend.outbox("p", 100)
        assert len(entries) == 2
        return entries
    finally:
        await store.close()


async def test_a_refused_user_is_unavailable_with_the_servers_words(
    clickhouse_server: ClickHouseServer,
) -> None:
    url = clickhouse_server.url.replace("default@", "default:wrong@")
    with pytest.raises(StoreUnavailable, match="password"):
        await sink_from_url(url)


class Misspelling(ChdbTransport):
    """Sends SELEC for SELECT: a statement of ours the engine refuses."""

    async def query(self, sql: str, data: Body | None = None) -> bytes:
        return await super().query(sql.replace("SELECT", "SELEC"), data)


async def test_a_statement_of_ours_the_server_refuses_is_a_bug_raised_as_it_is(
    tmp_path: Path,
) -> None:
    sink = await ClickHouseSink.on(Misspelling(tmp_path))
    try:
        with pytest.raises(ClickHouseError, match="Syntax error") as raised:
            await sink.stats("p", start=None, end=None)
        assert raised.value.code == 62
    finally:
        await sink.close()


# -- the inserts, the DDL, the URL ---------------------------------------------------------------


class Counting(ChdbTransport):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.inserts: list[int] = []  # the rows of each INSERT

    async def query(self, sql: str, data: Body | None = None) -> bytes:
        if data is not None:
            assert not isinstance(data, bytes)
            pieces = [piece async for piece in data]
            self.inserts.append(len(orjson.loads(b"[" + b"".join(pieces) + b"]")))
            data = b"".join(pieces)
        return await super().query(sql, data)


@pytest.mark.parametrize(
    ("batches", "inserts"),
    [
        (20, [500, 20 * 500 + 500]),  # the sessions; the events and the starts
        (24, [500, 12 * 500, 12 * 500 + 500]),  # the events in two halves, the starts first
        (1, [500, 500 + 500]),
    ],
)
async def test_a_write_is_few_inserts_however_many_entries(
    tmp_path: Path, batches: int, inserts: list[int]
) -> None:
    """What ClickHouse wants: few inserts of many rows (each insert is a part on disk): one
    of the sessions, one of the events, or two of them past 10,000 (parsed at once)."""
    transport = Counting(tmp_path)
    sink = await ClickHouseSink.on(transport)
    clock = ManualClock(1_700_000_000_000)
    store = await connect("memory://", clock=clock)
    try:
        sessionizer = Sessionizer(store, sink=sink)
        now = clock.now_ms()
        for batch in range(batches):
            await sessionizer.ingest(
                "p",
                [
                    TrackEvent.parse(
                        {"name": "screen_view", "device_id": f"d{i}", "timestamp": now + batch}
                    )
                    for i in range(500)
                ],
            )
        assert await sessionizer.drain() == batches
        assert sorted(transport.inserts) == inserts
        assert (await sink.stats("p", start=None, end=None)).sessions == 500
    finally:
        await store.close()
        await sink.close()


async def test_the_printed_ddl_makes_the_tables_the_sink_makes(
    clickhouse_server: ClickHouseServer, database: str
) -> None:
    made = await sink_from_url(database_url(clickhouse_server, database))
    await made.close()
    printed = f"{database}_printed"
    await ch(clickhouse_server, f"CREATE DATABASE {printed}")
    try:
        for statement in ddl().split(";"):
            if statement.strip():
                await ch(clickhouse_server, statement, printed)
        for table in ("analytics_events", "analytics_sessions"):
            [[ours]] = await ch(clickhouse_server, f"SHOW CREATE TABLE {database}.{table}")
            [[theirs]] = await ch(clickhouse_server, f"SHOW CREATE TABLE {printed}.{table}")
            assert str(theirs).replace(printed, database) == ours
    finally:
        await ch(clickhouse_server, f"DROP DATABASE IF EXISTS {printed}")


@pytest.mark.parametrize(
    "text", ["it's", "back\\slash", "'; DROP TABLE analytics_sessions; --", "\\'", "ünï\ncode"]
)
async def test_values_reach_the_queries_as_literals(text: str, tmp_path: Path) -> None:
    transport = ChdbTransport(tmp_path)
    sink = await ClickHouseSink.on(transport)
    try:
        page = await sink.sessions(text, device_id=text, profile_id=text)
        assert page.sessions == []
        assert (await sink.stats(text, start=None, end=None)).sessions == 0
        body = await transport.query(f"SELECT {literal(text)} FORMAT JSONCompact")
        assert orjson.loads(body)["data"] == [[text]]
    finally:
        await sink.close()


@pytest.mark.parametrize(
    ("url", "base", "database"),
    [
        ("clickhouse://h/analytics", "http://h:8123", "analytics"),
        ("clickhouse://u:p%40ss@h:9000", "http://h:9000", "default"),
        ("clickhouses://u@h/db_1", "https://h:8443", "db_1"),
    ],
)
async def test_the_url(url: str, base: str, database: str) -> None:
    transport = HttpTransport(url)
    try:
        assert (str(transport._client.base_url).rstrip("/"), transport.database) == (base, database)
    finally:
        await transport.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [("clickhouse://h/bad-name", "the database is an identifier"), ("clickhouse:///db", "not")],
)
async def test_a_bad_url_says_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        await sink_from_url(url)


async def test_a_write_of_duplicates_only_inserts_its_sessions(
    clickhouse_server: ClickHouseServer, database: str, tmp_path: Path
) -> None:
    """Hits that are all duplicates make an insert with no rows (both releases take it); the
    sessions of the entry are still written."""
    row = SessionRow(
        "s1", "p", "d1", None, 1000, 1000, 1, 1, "/", "/",
        None, None, None, None, None, None, 0, 2, False,
    )  # fmt: skip
    duplicate = Hit("e1", "screen_view", 1000, 1000, ("d1",))
    entry = OutboxEntry("o1", "p", [duplicate], [Placement("duplicate")], [row], [], [])
    for sink in (
        await sink_from_url(database_url(clickhouse_server, database)),
        await ClickHouseSink.on(ChdbTransport(tmp_path)),
    ):
        try:
            await sink.write([entry])
            assert (await sink.sessions("p")).sessions == [row]
            assert (await sink.stats("p", start=None, end=None)).sessions == 1
        finally:
            await sink.close()
