"""What the SQL sinks store, column by column, is what `rows_of` says, however they insert it.

The SQLite sink binds a missing text as 0 and reads it back with NULLIF(?, 0) (sqlite3 binds None
several times slower than an int): NULL must come back NULL, and the texts "0" and "" as
themselves. The PostgreSQL sink COPYs a write of `COPY_FROM` events or more through a temporary
table: it must store the same rows as the INSERT it uses for fewer, keep the first of two rows
with one key, and store nothing when the write fails. The ClickHouse sink (a replacing engine,
no transactions) keeps the last of two rows with one key, and a failed write retried stores
each row once. Every sink runs on a real database (the `db` fixture of test_sinks: SQLite in
the tmp dir, PostgreSQL in a schema of its own, ClickHouse in a database of its own).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from sessionary.analytics.postgres_sink import COPY_FROM
from sessionary.analytics.sink import EVENT_COLUMNS, rows_of, sink_from_url
from sessionary.sessionize import OutboxEntry, Placement
from tests.analytics.test_sinks import PG_URL, S1, Db, db, entry, hit

__all__ = ["db"]  # the fixture, imported to be used


def odd_texts() -> OutboxEntry:
    """Hits whose texts are missing, "0", "" and ordinary, in every text column."""
    texts = ("path", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term")
    hits = [
        (hit("none", 1000, profile_id=None, devices=()), Placement("unattached")),
        (
            hit("zeros", 1001, profile_id="0", utm_content="0", **dict.fromkeys(texts, "0")),
            Placement("joined", "s1", "0"),
        ),
        (
            hit("empty", 1002, profile_id="", utm_content="", **dict.fromkeys(texts, "")),
            Placement("late", None, ""),
        ),
        (
            hit("plain", 1003, profile_id="u", utm_content="c", **dict.fromkeys(texts, "t")),
            Placement("joined", "s1", "d1"),
        ),
    ]
    return entry(S1, hits=hits, started=[("s1", 999)])


def comparable(values: Any) -> tuple[Any, ...]:
    """A stored event row as `rows_of` has it: properties decoded, late a bool."""
    row = dict(zip(EVENT_COLUMNS, values, strict=True))
    properties = row["properties"]
    row["properties"] = orjson.loads(properties)
    row["late"] = bool(row["late"])
    return tuple(row.values())


async def stored_events(db: Db) -> list[tuple[Any, ...]]:
    found = await db.sql(f"SELECT {', '.join(EVENT_COLUMNS)} FROM analytics_events{db.final}")
    return sorted(comparable(values) for values in found)


def expected(entries: list[OutboxEntry]) -> list[tuple[Any, ...]]:
    events, _ = rows_of(entries)
    rows = [
        (*(getattr(row, name) for name in EVENT_COLUMNS[:-2]), row.properties, row.late)
        for row in events
    ]
    return sorted(comparable(row) for row in rows)


async def test_missing_zero_and_empty_texts_are_stored_as_they_are(db: Db) -> None:
    entries = [odd_texts()]
    await db.sink.write(entries)
    assert await stored_events(db) == expected(entries)
    nulls = await db.sql(
        f"SELECT event_id FROM analytics_events{db.final} WHERE utm_content IS NULL"
    )
    assert sorted(nulls) == [("none",), ("s1/start",)]  # SQL's NULL, not a text


def many(count: int, offset: int = 0) -> OutboxEntry:
    """`count` hits, every fifth without a session, some late, properties of their own."""
    hits = [
        (
            hit(f"e{offset + i}", 1000 + i, path=f"/p{i % 7}", properties=b'{"i":%d}' % i),
            Placement("joined", "s1", "d1") if i % 5 else Placement("late", None, "d1"),
        )
        for i in range(count)
    ]
    return entry(S1, hits=hits)


@pytest.mark.parametrize("count", [COPY_FROM - 1, COPY_FROM])
async def test_small_and_large_writes_store_the_same_rows(db: Db, count: int) -> None:
    entries = [many(count)]
    await db.sink.write(entries)
    await db.sink.write(entries)  # again: nothing more
    assert await stored_events(db) == expected(entries)


async def test_of_two_rows_with_one_key_in_one_large_write_one_is_stored(db: Db) -> None:
    """The first on the SQL sinks (ON CONFLICT DO NOTHING), the last on ClickHouse (its
    replacing engine's choice): a retry repeats a row whole, so either is idempotent."""
    first, second = many(COPY_FROM), many(COPY_FROM)
    second.hits[0].path = "/second"
    await db.sink.write([first, second])
    [(path,)] = await db.sql(f"SELECT path FROM analytics_events{db.final} WHERE event_id = 'e0'")
    assert path == ("/p0" if db.atomic else "/second")


async def test_a_large_write_failing_stores_nothing_or_its_retry_stores_once(db: Db) -> None:
    for statement in db.breaks:  # the sessions insert fails, after the events
        await db.sql(statement)
    with pytest.raises(Exception, match=db.failure):
        await db.sink.write([many(COPY_FROM)])
    if db.atomic:
        assert await db.sql("SELECT event_id FROM analytics_events") == []
    for statement in db.mends:
        await db.sql(statement)
    await db.sink.write([many(COPY_FROM)])
    assert await stored_events(db) == expected([many(COPY_FROM)])


async def test_a_role_that_may_not_create_temporary_tables_writes_without_copy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """TEMP revoked (a locked-down role): a large write goes by executemany instead, said
    once in the log, and stores what it would have."""
    name = f"notemp_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.execute(f"CREATE ROLE {name} LOGIN")
        await admin.execute(f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC")
        owner = await asyncpg.connect(PG_URL.rsplit("/", 1)[0] + f"/{name}")
        try:
            await owner.execute(f"GRANT ALL ON SCHEMA public TO {name}")
        finally:
            await owner.close()
        base = urlsplit(PG_URL)
        url = base._replace(netloc=f"{name}@{base.hostname}:{base.port or 5432}", path=f"/{name}")
        sink = await sink_from_url(url.geturl())
        try:
            await sink.write([many(COPY_FROM)])
            await sink.write([many(COPY_FROM, offset=COPY_FROM)])
            conn = await asyncpg.connect(url.geturl())
            try:
                stored = await conn.fetchval("SELECT count(*) FROM analytics_events")
            finally:
                await conn.close()
        finally:
            await sink.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()
    assert stored == 2 * COPY_FROM
    refusals = [r for r in caplog.records if "may not create temporary tables" in r.message]
    assert len(refusals) == 1
