"""The analytics sinks: `rows_of`, then each SQL sink on a real database.

Every sink test runs on SQLite (a file in the test's tmp dir), on PostgreSQL
(`ANALYTICS_PG_TEST_URL`, default postgresql://postgres@127.0.0.1:5432/test, a URL without a
query string) and on ClickHouse twice: a private clickhouse-server (Debian's, 18.16; the
`clickhouse_server` fixture) over HTTP, and the current engine in-process (chdb, the same
statements through `ChdbTransport`). A PostgreSQL test gets a schema of its own (the sink's
`schema` URL parameter), a ClickHouse test a database of its own, dropped afterwards; when a
server is down the test fails, it is never skipped.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from sessionary.analytics.clickhouse_sink import ClickHouseSink
from sessionary.analytics.sink import (
    Bucket,
    EventRow,
    Sink,
    Stats,
    TooManyBuckets,
    rows_of,
    sink_from_url,
)
from sessionary.errors import InvalidCursor
from sessionary.sessionize import Hit, OutboxEntry, Placement, SessionRow
from tests.analytics.clickhouse import ChdbTransport, in_database, rows
from tests.servers import ClickHouseServer

PG_URL = os.environ.get("ANALYTICS_PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")


def hit(event_id: str, ts: int, name: str = "screen_view", **fields: Any) -> Hit:
    fields.setdefault("devices", ("d1",))
    fields.setdefault("received_at", ts + 10)
    return Hit(event_id, name, ts, **fields)


BASE = SessionRow(
    "s1", "p", "d1", None, 1000, 1000, 1, 1, "/", "/",
    None, None, None, None, None, None, 0, 1, False,
)  # fmt: skip


def session(sid: str, started_at: int = 1000, **fields: Any) -> SessionRow:
    fields.setdefault("ended_at", started_at)
    return replace(BASE, id=sid, started_at=started_at, **fields)


def entry(
    *sessions: SessionRow,
    hits: Sequence[tuple[Hit, Placement]] = (),
    started: Sequence[tuple[str, int]] = (),
    ended: Sequence[tuple[str, int]] = (),
) -> OutboxEntry:
    return OutboxEntry(
        "e", "p", [h for h, _ in hits], [p for _, p in hits], list(sessions),
        list(started), list(ended),
    )  # fmt: skip


S1 = session(
    "s1", 1000, ended_at=1500, profile_id="u1", event_count=2, entry_path="/a", exit_path="/b",
    referrer="https://ref.example", utm_source="news", revenue=500, version=2,
)  # fmt: skip
S1_CLOSED = replace(S1, version=3, closed=True)


def sample() -> list[OutboxEntry]:
    """An ingest batch that opened s1 (with a late, a duplicate and an unattached hit), then
    the reaper's step that closed it."""
    hits = [
        (
            hit("a", 1000, path="/a", referrer="https://ref.example", utm_source="news",
                received_at=5000),
            Placement("joined", "s1", "d1"),
        ),
        (
            hit("b", 1500, "click", path="/b", profile_id="u2", revenue=500,
                properties=b'{"k":1}', received_at=5001),
            Placement("joined", "s1", "d1"),
        ),
        (hit("c", 100, path="/c"), Placement("late", None, "d1")),
        (hit("a", 1000), Placement("duplicate")),
        (hit("e", 1200, "signup", devices=(), profile_id="u9"), Placement("unattached")),
    ]  # fmt: skip
    return [entry(S1, hits=hits, started=[("s1", 999)]), entry(S1_CLOSED, ended=[("s1", 1501)])]


def event(event_id: str, name: str, ts: int, received_at: int, **fields: Any) -> EventRow:
    row = EventRow(
        "p", event_id, name, ts, received_at, None, None, None, None, None,
        None, None, None, None, None, 0, b"{}", False,
    )  # fmt: skip
    return replace(row, **fields)


def test_rows_of() -> None:
    first, reaped = sample()
    older = entry(replace(S1, version=1, event_count=99), session("s2"))
    events, sessions = rows_of([first, reaped, older])
    marker = {
        "session_id": "s1", "device_id": "d1", "profile_id": "u1",
        "referrer": "https://ref.example", "utm_source": "news",
    }  # fmt: skip
    assert events == [
        event("a", "screen_view", 1000, 5000, session_id="s1", device_id="d1", profile_id="u1",
              path="/a", referrer="https://ref.example", utm_source="news"),
        event("b", "click", 1500, 5001, session_id="s1", device_id="d1", profile_id="u2",
              path="/b", revenue=500, properties=b'{"k":1}'),
        event("c", "screen_view", 100, 110, device_id="d1", path="/c", late=True),
        event("e", "signup", 1200, 1210, profile_id="u9"),
        event("s1/start", "session_start", 999, 5000, path="/a", **marker),
        event("s1/end", "session_end", 1501, 1501, path="/b", **marker),
    ]  # fmt: skip
    assert sessions == [S1_CLOSED, session("s2")]


@pytest.mark.parametrize("url", ["mysql://localhost/db", "sqlite://relative.db", "analytics.db"])
async def test_sink_from_url_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="an analytics sink URL is"):
        await sink_from_url(url)


# -- the sinks --------------------------------------------------------------------------------


@dataclass
class Db:
    sink: Sink
    sql: Callable[[str], Awaitable[list[tuple[Any, ...]]]]  # a statement on its own connection
    breaks: list[str]  # statements that make every insert into analytics_sessions fail
    mends: list[str]  # and undo that
    failure: str = "injected"  # what the failure of `breaks` says
    # a write is one transaction (all or nothing); on ClickHouse the retry makes it whole
    atomic: bool = True
    final: str = ""  # after a table's name: what reads its rows as stored (FINAL on ClickHouse)


#: makes every insert into analytics_sessions fail on ClickHouse: the view's SELECT runs on each
#: inserted block, after the block is stored (so a failed write may leave its rows behind)
CLICKHOUSE_BREAKS = [
    "CREATE MATERIALIZED VIEW fail ENGINE = Memory AS "
    "SELECT throwIf(version >= 0) AS injected FROM analytics_sessions"
]
CLICKHOUSE_MENDS = ["DROP TABLE fail"]
CLICKHOUSE_FAILURE = "throwIf|non zero|non-zero"


@pytest_asyncio.fixture(params=["sqlite", "postgres", "clickhouse", "chdb"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "clickhouse":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        database = f"test_{uuid.uuid4().hex[:12]}"
        sink = await sink_from_url(server.url.rsplit("/", 1)[0] + f"/{database}")
        transport = in_database(server.url, database)
        try:
            yield Db(sink, partial(rows, transport), CLICKHOUSE_BREAKS, CLICKHOUSE_MENDS,
                     CLICKHOUSE_FAILURE, False, " FINAL")  # fmt: skip
        finally:
            await sink.close()
            await transport.query(f"DROP DATABASE IF EXISTS {database}", database=False)
            await transport.close()
        return
    if request.param == "chdb":
        chdb = ChdbTransport(tmp_path / "chdb")
        sink = await ClickHouseSink.on(chdb)
        try:
            yield Db(sink, partial(rows, chdb), CLICKHOUSE_BREAKS, CLICKHOUSE_MENDS,
                     CLICKHOUSE_FAILURE, False, " FINAL")  # fmt: skip
        finally:
            await sink.close()
        return
    if request.param == "sqlite":
        path = tmp_path / "analytics.db"
        sink = await sink_from_url(f"sqlite:///{path}")

        def run(statement: str) -> list[tuple[Any, ...]]:
            with closing(sqlite3.connect(path)) as conn, conn:
                return conn.execute(statement).fetchall()

        async def sql(statement: str) -> list[tuple[Any, ...]]:
            return await asyncio.to_thread(run, statement)

        breaks = [
            "CREATE TRIGGER fail BEFORE INSERT ON analytics_sessions "
            "BEGIN SELECT RAISE(ABORT, 'injected'); END"
        ]
        try:
            yield Db(sink, sql, breaks, ["DROP TRIGGER fail"])
        finally:
            await sink.close()
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    sink = await sink_from_url(f"{PG_URL}?schema={schema}")
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})

    async def pg_sql(statement: str) -> list[tuple[Any, ...]]:
        return [tuple(record) for record in await conn.fetch(statement)]

    breaks = [
        "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$",
        "CREATE TRIGGER fail BEFORE INSERT ON analytics_sessions "
        "FOR EACH ROW EXECUTE FUNCTION fail()",
    ]
    try:
        yield Db(sink, pg_sql, breaks, ["DROP TRIGGER fail ON analytics_sessions"])
    finally:
        await sink.close()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def stored(db: Db) -> tuple[list[str], list[tuple[str, int]]]:
    events = await db.sql(f"SELECT event_id FROM analytics_events{db.final} ORDER BY event_id")
    sessions = await db.sql(f"SELECT id, version FROM analytics_sessions{db.final} ORDER BY id")
    return [e for (e,) in events], [(sid, version) for sid, version in sessions]


async def test_writing_twice_stores_each_row_once(db: Db) -> None:
    await db.sink.write(sample())
    await db.sink.write(sample())
    await db.sink.write(sample()[:1])
    assert await stored(db) == (["a", "b", "c", "e", "s1/end", "s1/start"], [("s1", 3)])
    assert (await db.sink.sessions("p")).sessions == [S1_CLOSED]
    [(late, properties)] = await db.sql(
        f"SELECT late, properties FROM analytics_events{db.final} WHERE event_id = 'c'"
    )
    assert (bool(late), properties) == (True, "{}")


async def test_an_older_session_row_never_replaces_a_newer_one(db: Db) -> None:
    await db.sink.write([entry(S1_CLOSED)])
    await db.sink.write([entry(replace(S1, event_count=99))])  # version 2
    assert (await db.sink.sessions("p")).sessions == [S1_CLOSED]
    newer = replace(S1_CLOSED, version=4, ended_at=2000)
    await db.sink.write([entry(newer)])
    assert (await db.sink.sessions("p")).sessions == [newer]


async def test_a_write_failing_half_way_stores_nothing_and_its_retry_stores_once(db: Db) -> None:
    for statement in db.breaks:
        await db.sql(statement)
    with pytest.raises(Exception, match=db.failure):  # the sessions insert, after the events
        await db.sink.write(sample())
    if db.atomic:
        assert await stored(db) == ([], [])
    else:  # the events' insert went through, and maybe the sessions' block
        events, sessions = await stored(db)
        assert events == ["a", "b", "c", "e", "s1/end", "s1/start"]
        assert sessions in ([], [("s1", 3)])
    for statement in db.mends:
        await db.sql(statement)
    await db.sink.write(sample())
    await db.sink.write(sample())
    assert await stored(db) == (["a", "b", "c", "e", "s1/end", "s1/start"], [("s1", 3)])


# newest first: h, g, f, then e, d, c, b (a tie at 2000, by id), then a
ROWS = [
    session("a", 1000, device_id="d2", profile_id="u1"),
    session("b", 2000),
    session("c", 2000, device_id="d2"),
    session("d", 2000, profile_id="u1"),
    session("e", 2000, device_id="d2"),
    session("f", 3000, profile_id="u1"),
    session("g", 4000, device_id="d2"),
    session("h", 5000),
    session("x", 3000, project_id="other"),
]


async def pages(db: Db, limit: int, **filters: Any) -> list[list[str]]:
    out: list[list[str]] = []
    after = None
    while True:
        page = await db.sink.sessions("p", limit=limit, after=after, **filters)
        out.append([row.id for row in page.sessions])
        if page.next is None:
            return out
        after = page.next


async def test_sessions_pages_newest_first(db: Db) -> None:
    await db.sink.write([entry(*ROWS)])
    assert await pages(db, 3) == [["h", "g", "f"], ["e", "d", "c"], ["b", "a"]]
    assert await pages(db, 100) == [["h", "g", "f", "e", "d", "c", "b", "a"]]
    assert await pages(db, 2, start=2000, end=4000) == [["f", "e"], ["d", "c"], ["b"]]
    assert await pages(db, 2, device_id="d2") == [["g", "e"], ["c", "a"]]
    assert await pages(db, 3, profile_id="u1") == [["f", "d", "a"]]
    assert await pages(db, 1, device_id="d2", profile_id="u1", end=2000) == [["a"]]
    assert await pages(db, 3, start=6000) == [[]]
    first = await db.sink.sessions("p", limit=3)
    assert first.sessions == [ROWS[7], ROWS[6], ROWS[5]]
    with pytest.raises(InvalidCursor):  # a 400 over HTTP
        await db.sink.sessions("p", after="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        await db.sink.sessions("p", limit=0)


async def test_stats(db: Db) -> None:
    await db.sink.write(
        [
            entry(
                session("a", 1000, entry_path="/home"),  # bounce, 0 ms
                session("b", 2000, ended_at=62_000, event_count=5, screen_view_count=3,
                        entry_path="/home"),
                session("c", 3000, screen_view_count=0, entry_path="/pricing"),  # a click only
                session("d", 4000, ended_at=34_000, event_count=2, entry_path="/blog"),
                session("e", 4000, entry_path=None),  # bounce, no entry path
                session("early", 999, entry_path="/home"),
                session("late", 5000, entry_path="/home"),
                session("x", 1000, project_id="other"),
            ),
            entry(*(session(f"q{i}", 1000, project_id="q", entry_path=f"/p{i:02}")
                    for i in range(12))),
            entry(session("q12", 1000, project_id="q", entry_path="/p11")),
        ]
    )  # fmt: skip
    assert await db.sink.stats("p", start=1000, end=5000) == Stats(
        sessions=5,
        bounce_rate=2 / 5,
        average_duration_ms=(60_000 + 30_000) / 5,
        events_per_session=(1 + 5 + 1 + 2 + 1) / 5,
        top_entry_paths=[("/home", 2), ("/blog", 1), ("/pricing", 1)],
        top_exit_paths=[("/", 5)],  # every row's (BASE)
        sessions_over_time=[Bucket(0, 5, 2)],  # [1000, 5000): the first UTC day's bucket
    )
    everything = await db.sink.stats("p", start=None, end=None)
    assert (everything.sessions, everything.top_entry_paths[0]) == (7, ("/home", 4))
    top = (await db.sink.stats("q", start=None, end=None)).top_entry_paths
    assert top == [("/p11", 2)] + [(f"/p{i:02}", 1) for i in range(9)]
    assert await db.sink.stats("p", start=6000, end=None) == Stats(0, 0.0, 0.0, 0.0, [], [], [])


async def test_top_exit_paths(db: Db) -> None:
    """Sessions by exit path (not entry path), most first, ties by path in code point order
    ("/Z" before "/a"), at most 10, none without an exit path, only those in the range."""
    exits = ["/thanks"] * 3 + ["/cart"] * 2 + ["/b", "/a", "/Z", None, None]
    await db.sink.write(
        [
            entry(
                *(session(f"s{n}", 1000 + n, entry_path="/in", exit_path=path)
                  for n, path in enumerate(exits)),
                session("before", 999, exit_path="/thanks"),
                session("after", 5000, exit_path="/b"),
                session("elsewhere", 1000, project_id="other", exit_path="/cart"),
            ),
            entry(*(session(f"q{i}", 1000, project_id="q", exit_path=f"/p{i:02}")
                    for i in range(12))),
            entry(session("q12", 1000, project_id="q", exit_path="/p11")),
        ]
    )  # fmt: skip
    stats = await db.sink.stats("p", start=1000, end=5000)
    assert stats.top_exit_paths == [("/thanks", 3), ("/cart", 2), ("/Z", 1), ("/a", 1), ("/b", 1)]
    assert stats.top_entry_paths == [("/in", 10)]
    everything = await db.sink.stats("p", start=None, end=None)
    assert everything.top_exit_paths == [
        ("/thanks", 4), ("/b", 2), ("/cart", 2), ("/Z", 1), ("/a", 1),
    ]  # fmt: skip
    top = (await db.sink.stats("q", start=None, end=None)).top_exit_paths
    assert top == [("/p11", 2)] + [(f"/p{i:02}", 1) for i in range(9)]


H, D = 3_600_000, 86_400_000
B = 20_000 * D  # 2024-10-04T00:00Z: a UTC midnight


async def test_sessions_over_time(db: Db) -> None:
    """Buckets of the sessions that started in the range, by their latest row, each UTC hour
    or day, empty ones included; the bounds given fix the buckets, else the sessions do."""
    moved = session("moved", B + 5 * D, event_count=2)  # its start moves back (rule 4)
    await db.sink.write(
        [
            entry(
                session("a", B),  # a bounce: one screen view
                session("b", B + 30 * 60_000, event_count=3),
                session("c0", B + 2 * H + 1),  # a bounce
                session("c", B + 2 * H + 5),  # a bounce
                session("d", B + 3 * H - 1, event_count=2),  # the last ms of hour 2
                session("e", B + D + 3 * H),  # a bounce, on day 1
                session("f", B + 3 * D, event_count=2),  # day 3: day 2 is empty
                moved,
                session("x", B + H, project_id="other"),
            ),
            entry(replace(moved, started_at=B + H, version=2)),  # the row counted: hour 1
        ]
    )  # fmt: skip
    everything = await db.sink.stats("p", start=None, end=None, interval="day")
    assert everything.sessions == 8
    assert everything.sessions_over_time == [
        Bucket(B, 6, 3), Bucket(B + D, 1, 1), Bucket(B + 2 * D, 0, 0), Bucket(B + 3 * D, 1, 0),
    ]  # fmt: skip
    by_hour = await db.sink.stats("p", start=None, end=None, interval="hour")
    busy = {0: (2, 1), 1: (1, 0), 2: (3, 2), 24 + 3: (1, 1), 72: (1, 0)}  # hour: (n, bounces)
    assert by_hour.sessions_over_time == [
        Bucket(B + k * H, *busy.get(k, (0, 0))) for k in range(73)
    ]
    # both bounds: every bucket of [from, to), the first the one holding `from`; c0 is in that
    # bucket but before `from`, e starts at `to`: neither counts
    bounded = await db.sink.stats("p", start=B + 2 * H + 5, end=B + D + 3 * H, interval="hour")
    assert bounded.sessions == 2
    assert bounded.sessions_over_time == [Bucket(B + 2 * H, 2, 1)] + [
        Bucket(B + k * H, 0, 0) for k in range(3, 27)
    ]
    # nothing started in the range: its buckets all the same, to the one before `to`
    assert (await db.sink.stats("p", start=B + D + 4 * H, end=B + 3 * D)).sessions_over_time == [
        Bucket(B + D, 0, 0), Bucket(B + 2 * D, 0, 0),
    ]  # fmt: skip
    # one bound: the sessions decide the other end
    assert (await db.sink.stats("p", start=B + D, end=None)).sessions_over_time == [
        Bucket(B + D, 1, 1), Bucket(B + 2 * D, 0, 0), Bucket(B + 3 * D, 1, 0),
    ]  # fmt: skip
    assert (await db.sink.stats("p", start=None, end=B + D)).sessions_over_time == [Bucket(B, 6, 3)]
    for start, end in ((B, B), (B + D, B)):  # an empty range
        assert (await db.sink.stats("p", start=start, end=end)).sessions_over_time == []
    assert (await db.sink.stats("nothing", start=None, end=None)).sessions_over_time == []


async def test_at_most_1000_buckets(db: Db) -> None:
    await db.sink.write([entry(session("a", B), session("b", B + 1000 * H))])
    assert len((await db.sink.stats("p", start=B, end=B + 1000 * D)).sessions_over_time) == 1000
    # a range wider than that: the buckets of the sessions' own span (totals still answer)
    wide = await db.sink.stats("p", start=B - 1000 * D, end=B + 1000 * D + 1)
    assert (wide.sessions, len(wide.sessions_over_time)) == (2, 42)
    assert wide.sessions_over_time[0] == Bucket(B, 1, 1)
    assert wide.sessions_over_time[-1] == Bucket(B + 41 * D, 1, 1)
    hourly = await db.sink.stats("p", start=B, end=B + 1000 * H, interval="hour")
    assert len(hourly.sessions_over_time) == 1000  # the range fits: every hour of it
    with pytest.raises(TooManyBuckets, match="coarser interval or a shorter range"):
        await db.sink.stats("p", start=B, end=B + 1001 * H + 1, interval="hour")
    with pytest.raises(TooManyBuckets, match="1001 hour buckets"):  # the sessions span them
        await db.sink.stats("p", start=None, end=None, interval="hour")
    assert len((await db.sink.stats("p", start=None, end=B + 1000 * H)).sessions_over_time) == 1
    assert len((await db.sink.stats("p", start=None, end=None)).sessions_over_time) == 42
