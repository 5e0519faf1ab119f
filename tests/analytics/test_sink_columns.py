"""A sink opening on tables an older version made adds the columns of the fields added since
(`sessionary.analytics.sink.add_columns`), so adding a field to a row is one edit for a deployed
sink too. Each sink runs on a real database, as in tests/analytics/test_sinks.py: SQLite, a
PostgreSQL schema of the test's own, a ClickHouse database of its own on the private 18.16
server, and chdb's current engine in-process."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import MISSING, astuple, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from sessionary.analytics import postgres_sink, sqlite_sink
from sessionary.analytics.clickhouse_sink import (
    ClickHouseSink,
    Transport,
    _column,
    _default,
    ddl,
)
from sessionary.analytics.sink import (
    EVENT_COLUMNS,
    EVENT_SHAPE,
    SESSION_COLUMNS,
    SESSION_SHAPE,
    EventRow,
    Sink,
    add_columns,
    column,
    missing_columns,
    rows_of,
    session_values,
    sink_from_url,
    sql_literal,
)
from sessionary.sessionize import Hit, OutboxEntry, Placement, SessionRow, names, shape
from tests.analytics.clickhouse import ChdbTransport, in_database, rows
from tests.servers import ClickHouseServer

PG_URL = os.environ.get("ANALYTICS_PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLES = {"analytics_events": EVENT_SHAPE, "analytics_sessions": SESSION_SHAPE}

#: the columns an older version's tables lack, in both tables (optional: they read as NULL)
ADDED = ("referrer", "utm_content")


def older(schema: str, lacking: Sequence[str]) -> list[str]:
    """The statements of the current DDL `schema` (a sink's) as a version without the columns
    `lacking` had them: the lines declaring those left out."""
    kept = "\n".join(
        line for line in schema.splitlines() if line.strip().split(" ")[0] not in lacking
    )
    kept = re.sub(r",(\s*\))", r"\1", kept)  # the last column's comma, when it was left out
    return [statement for statement in kept.split(";") if statement.strip()]


@dataclass
class Db:
    """A database before any sink opened on it."""

    ddl: str  # the current sink's CREATE TABLEs
    flags: tuple[str, str]  # False and True as literals of its bool columns
    sql: Callable[[str], Awaitable[list[tuple[Any, ...]]]]  # a statement on its own connection
    open: Callable[[], Awaitable[Sink]]  # the sink on it (closed by the fixture)
    columns_of: str  # a SELECT of the names of the columns of {table}
    transport: Transport | None = None  # ClickHouse's, to it (closed by the fixture)


@pytest_asyncio.fixture(params=["sqlite", "postgres", "clickhouse", "chdb"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    opened: list[Sink] = []
    system_columns = (
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = '{table}'"
    )
    if request.param == "sqlite":
        path = tmp_path / "analytics.db"

        def run(statement: str) -> list[tuple[Any, ...]]:
            with closing(sqlite3.connect(path)) as conn, conn:
                return conn.execute(statement).fetchall()

        async def sql(statement: str) -> list[tuple[Any, ...]]:
            return await asyncio.to_thread(run, statement)

        async def open_sqlite() -> Sink:
            opened.append(sink := await sink_from_url(f"sqlite:///{path}"))
            return sink

        columns = "SELECT name FROM pragma_table_info('{table}')"
        try:
            yield Db(sqlite_sink._SCHEMA, ("0", "1"), sql, open_sqlite, columns)
        finally:
            for sink in opened:
                await sink.close()
        return
    if request.param == "postgres":
        schema = f"test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path = {schema}")

        async def pg_sql(statement: str) -> list[tuple[Any, ...]]:
            if not statement.lstrip().startswith("SELECT"):
                await conn.execute(statement)
                return []
            return [tuple(record) for record in await conn.fetch(statement)]

        async def open_pg() -> Sink:
            opened.append(sink := await sink_from_url(f"{PG_URL}?schema={schema}"))
            return sink

        columns = (
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = '{table}'"
        )
        try:
            yield Db(postgres_sink._SCHEMA, ("FALSE", "TRUE"), pg_sql, open_pg, columns)
        finally:
            for sink in opened:
                await sink.close()
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await conn.close()
        return
    if request.param == "clickhouse":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        database = f"test_{uuid.uuid4().hex[:12]}"
        http = in_database(server.url, database)

        async def open_ch() -> Sink:
            url = server.url.rsplit("/", 1)[0] + f"/{database}"
            opened.append(sink := await sink_from_url(url))
            return sink

        await http.query(f"CREATE DATABASE {database}", database=False)
        try:
            yield Db(ddl(), ("0", "1"), partial(rows, http), open_ch, system_columns, http)
        finally:
            for sink in opened:
                await sink.close()
            await http.query(f"DROP DATABASE IF EXISTS {database}", database=False)
            await http.close()
        return
    transport = ChdbTransport(tmp_path / "chdb")

    async def open_chdb() -> Sink:
        return await ClickHouseSink.on(transport)  # each over the one session, closed once

    try:
        yield Db(ddl(), ("0", "1"), partial(rows, transport), open_chdb, system_columns, transport)
    finally:
        await transport.close()


async def create_older(db: Db, lacking: Sequence[str]) -> None:
    for statement in older(db.ddl, lacking):
        await db.sql(statement)


async def insert(db: Db, table: str, values: dict[str, object], lacking: Sequence[str]) -> None:
    """A row by plain SQL, as the older version stored it (without the columns `lacking`)."""
    kept = {name: value for name, value in values.items() if name not in lacking}
    literals = ", ".join(sql_literal(value, db.flags) for value in kept.values())
    await db.sql(f"INSERT INTO {table} ({', '.join(kept)}) VALUES ({literals})")


async def columns(db: Db, table: str) -> set[str]:
    return {name for (name,) in await db.sql(db.columns_of.format(table=table))}


OLD_SESSION = SessionRow(
    "s0", "p", "d0", "u0", 1000, 2000, 3, 2, "/a", "/b", "https://old.example", "src", "med",
    "camp", "term", "cont", 50, 4, True,
)  # fmt: skip
OLD_EVENT = EventRow(
    "p", "e0", "click", 1500, 1600, "s0", "d0", "u0", "/a", "https://old.example", "src", "med",
    "camp", "term", "cont", 50, b'{"old":1}', False,
)  # fmt: skip
NEW_SESSION = SessionRow(
    "s1", "p", "d1", "u1", 5000, 9000, 2, 1, "/x", "/y", "https://new.example", "s", "m", "c",
    "t", "content", 700, 2, False,
)  # fmt: skip
NEW_HIT = Hit(
    "n1", "purchase", 9000, 9100, ("d1",), False, "u1", "/y", "https://new.example", "s", "m",
    "c", "t", "content", 700, b'{"k":[1,2]}',
)  # fmt: skip
NEW_ENTRY = OutboxEntry(
    "b", "p", [NEW_HIT], [Placement("joined", "s1", "d1")], [NEW_SESSION], [], []
)


async def event_of(db: Db, event_id: str) -> EventRow:
    """The stored event row, read back by plain SQL."""
    [record] = await db.sql(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM analytics_events WHERE event_id = '{event_id}'"
    )
    *values, properties, late = record
    return EventRow(*(*values, orjson.dumps(orjson.loads(properties)), bool(late)))


async def test_a_sink_adds_the_columns_an_older_version_lacked(db: Db) -> None:
    await create_older(db, ADDED)
    for table in TABLES:
        assert ADDED[0] not in await columns(db, table)
    old_session = dict(zip(SESSION_COLUMNS, session_values(OLD_SESSION), strict=True))
    await insert(db, "analytics_sessions", old_session, ADDED)
    await insert(
        db, "analytics_events", dict(zip(EVENT_COLUMNS, astuple(OLD_EVENT), strict=True)), ADDED
    )

    sink = await db.open()
    for table, fields in TABLES.items():
        assert await columns(db, table) == set(names(fields))
    # the rows stored before read with the new columns NULL
    read = replace(OLD_SESSION, referrer=None, utm_content=None)
    assert (await sink.sessions("p")).sessions == [read]
    assert await event_of(db, "e0") == replace(OLD_EVENT, referrer=None, utm_content=None)

    # a full row stores and reads back every field
    await sink.write([NEW_ENTRY])
    assert (await sink.sessions("p")).sessions == [NEW_SESSION, read]
    [new_event], _ = rows_of([NEW_ENTRY])
    assert new_event.utm_content == "content"
    assert await event_of(db, "n1") == new_event

    # opening again finds every column there and adds nothing
    again = await db.open()
    assert (await again.sessions("p")).sessions == [NEW_SESSION, read]


async def test_sinks_opening_at_once_add_each_column_once(db: Db) -> None:
    await create_older(db, ADDED)
    await asyncio.gather(db.open(), db.open())
    for table, fields in TABLES.items():
        assert await columns(db, table) == set(names(fields))


class Racing:
    """A transport on which another sink adds each column just before this one does."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.raced = 0

    async def query(self, sql: str, data: bytes | None = None) -> bytes:
        if sql.startswith("ALTER TABLE"):
            await self.inner.query(sql)
            self.raced += 1
        return await self.inner.query(sql, data)

    async def close(self) -> None:
        pass  # the fixture's


@pytest.mark.parametrize("db", ["clickhouse", "chdb"], indirect=True)
async def test_a_column_another_clickhouse_sink_added_meanwhile_is_no_failure(db: Db) -> None:
    """18.16 has no ADD COLUMN IF NOT EXISTS: the sink looks again when an ADD COLUMN fails."""
    await create_older(db, ADDED)
    assert db.transport is not None
    racing = Racing(db.transport)
    await ClickHouseSink.on(racing)
    assert racing.raced == 2 * len(ADDED)
    for table, fields in TABLES.items():
        assert await columns(db, table) == set(names(fields))


async def test_a_missing_column_without_a_default_stops_the_sink_at_open(db: Db) -> None:
    """is_bounce is derived (SESSION_SHAPE), with no default: an older table lacking it is the
    operator's to mend, and nothing is added (the events' columns neither) until then."""
    await create_older(db, (*ADDED, "is_bounce"))
    with pytest.raises(ValueError, match="lacks column") as raised:
        await db.open()
    message = str(raised.value)
    assert message.startswith(
        "the sink table analytics_sessions lacks column is_bounce, which has no default: "
        "add it by hand (ALTER TABLE analytics_sessions ADD COLUMN is_bounce "
    )
    assert "\n" not in message
    for table in TABLES:
        assert not {*ADDED, "is_bounce"} & await columns(db, table)


# -- the helper, with defaults ----------------------------------------------------------------


@dataclass
class Later:
    """A row whose fields after `id` were added later, each with a default (or optional)."""

    id: str
    note: str | None = None
    flag: bool = False
    label: str = "it's"
    count: int = field(default_factory=lambda: 7)
    properties: bytes = b"{}"
    since: str | None = "v2"


SQLITE_TYPES = {str: "TEXT", int: "INTEGER", bool: "INTEGER", bytes: "TEXT"}
PG_TYPES = {str: "TEXT", int: "BIGINT", bool: "BOOLEAN", bytes: "JSONB"}
#: what the row stored before the columns were added reads as
DEFAULTS: tuple[object, ...] = ("old", None, False, "it's", 7, {}, "v2")


def test_a_shape_carries_each_fields_default() -> None:
    assert [f.default for f in shape(Later)] == [MISSING, None, False, "it's", 7, b"{}", "v2"]
    assert [(f.name, f.default) for f in SESSION_SHAPE[-2:]] == [
        ("duration_ms", MISSING),
        ("is_bounce", MISSING),
    ]


def test_missing_columns_are_the_fields_a_table_lacks_in_shape_order() -> None:
    fields = shape(Later)
    assert missing_columns(["since", "id", "flag", "other"], fields) == [
        fields[1], fields[3], fields[4], fields[5],
    ]  # fmt: skip
    assert missing_columns(names(fields), fields) == []


def test_added_columns_get_their_fields_defaults_on_sqlite() -> None:
    statements = add_columns(
        "t",
        ["id"],
        shape(Later),
        lambda f: column(f, SQLITE_TYPES),
        lambda value: sql_literal(value, ("0", "1")),
        if_not_exists=False,
    )
    assert statements == [
        "ALTER TABLE t ADD COLUMN note TEXT DEFAULT NULL",
        "ALTER TABLE t ADD COLUMN flag INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE t ADD COLUMN label TEXT NOT NULL DEFAULT 'it''s'",
        "ALTER TABLE t ADD COLUMN count INTEGER NOT NULL DEFAULT 7",
        "ALTER TABLE t ADD COLUMN properties TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE t ADD COLUMN since TEXT DEFAULT 'v2'",
    ]
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES ('old')")
        for statement in statements:
            conn.execute(statement)
        [(*row, properties, since)] = conn.execute("SELECT * FROM t").fetchall()
    assert (*row, orjson.loads(properties), since) == DEFAULTS


async def test_added_columns_get_their_fields_defaults_on_postgres() -> None:
    statements = add_columns("t", ["id"], shape(Later), lambda f: column(f, PG_TYPES), sql_literal)
    flag = "ALTER TABLE t ADD COLUMN IF NOT EXISTS flag BOOLEAN NOT NULL DEFAULT FALSE"
    assert statements[1] == flag
    schema = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}")
        await conn.execute("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)")
        await conn.execute("INSERT INTO t VALUES ('old')")
        for statement in statements:
            await conn.execute(statement)
        [record] = await conn.fetch("SELECT * FROM t")
        assert (*record[:5], orjson.loads(record[5]), record[6]) == DEFAULTS
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def test_added_columns_get_their_fields_defaults_on_chdb(tmp_path: Path) -> None:
    statements = add_columns("t", ["id"], shape(Later), _column, _default, if_not_exists=False)
    assert statements[:2] == [
        "ALTER TABLE t ADD COLUMN note Nullable(String) DEFAULT NULL",
        "ALTER TABLE t ADD COLUMN flag UInt8 DEFAULT 0",
    ]
    transport = ChdbTransport(tmp_path)
    try:
        await transport.query("CREATE TABLE t (id String) ENGINE = MergeTree ORDER BY id")
        await transport.query("INSERT INTO t VALUES ('old')")
        for statement in statements:
            await transport.query(statement)
        [record] = orjson.loads(await transport.query("SELECT * FROM t FORMAT JSONCompact"))["data"]
    finally:
        await transport.close()
    assert (*record[:5], orjson.loads(record[5]), record[6]) == DEFAULTS


def test_a_missing_field_without_a_default_is_an_error_naming_table_column_and_fix() -> None:
    @dataclass
    class Row:
        id: str
        score: int  # neither optional nor with a default
        note: str | None = None

    with pytest.raises(ValueError) as raised:
        add_columns(
            "analytics_sessions", ["id"], shape(Row), lambda f: column(f, SQLITE_TYPES), sql_literal
        )
    assert str(raised.value) == (
        "the sink table analytics_sessions lacks column score, which has no default: add it by "
        "hand (ALTER TABLE analytics_sessions ADD COLUMN score INTEGER NOT NULL DEFAULT <the "
        "value of the stored rows>)"
    )
