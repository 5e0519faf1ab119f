"""The row shapes (`sessionary.sessionize.shape`) are what every layout is derived from; where
one cannot be derived (the Lua of the Redis backend), it is held to them here."""

from __future__ import annotations

import re
import sqlite3
import struct
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from sessionary import ManualClock, connect
from sessionary.analytics import Sessionizer, TrackEvent
from sessionary.analytics.sink import SESSION_SHAPE, sink_from_url
from sessionary.backends.redis import analytics
from sessionary.sessionize import (
    OPEN_SESSION_SHAPE,
    SESSION_ROW_SHAPE,
    Field,
    Hit,
    OutboxEntry,
    compact_hit_values,
    hit_values,
    hits_of,
    names,
    shape,
)

LUA = Path(analytics.__file__).with_name("analytics.lua")


def test_the_lua_row_writes_the_fields_in_the_order_python_reads_them() -> None:
    """analytics.lua's `row` states its order in two lines; analytics.py reads a row in the
    order it derives from SessionRow. Between them, every field but the project (known to the
    reader): a field added to SessionRow fails here until `row` writes it."""
    text = LUA.read_text()
    found = {
        kind: tuple(line.split())
        for kind, line in re.findall(r"^-- row (strings|numbers): (.*)$", text, re.MULTILINE)
    }
    assert found == {"strings": analytics.ROW_STRINGS, "numbers": analytics.ROW_NUMBERS}
    assert sorted((*found["strings"], *found["numbers"], "project_id")) == sorted(
        names(SESSION_ROW_SHAPE)
    )


def test_a_shape_is_its_dataclass_fields_with_their_types() -> None:
    @dataclass
    class Row:
        a: str
        b: int | None
        c: tuple[str, ...]
        d: bytes = b""

    assert shape(Row) == (
        Field("a", str, optional=False),
        Field("b", int, optional=True),
        Field("c", tuple, optional=False),
        Field("d", bytes, optional=False),
    )

    @dataclass
    class Odd:
        e: float

    with pytest.raises(TypeError, match=r"Odd\.e"):
        shape(Odd)


async def test_the_sqlite_sink_table_has_a_column_per_field(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    sink = await sink_from_url(f"sqlite:///{path}")
    await sink.close()
    with closing(sqlite3.connect(path)) as db:
        columns = db.execute(
            "SELECT name, type, [notnull] FROM pragma_table_info(?)", ("analytics_sessions",)
        ).fetchall()
    expected = [
        (f.name, "TEXT" if f.kind is str else "INTEGER", int(not f.optional)) for f in SESSION_SHAPE
    ]
    assert columns == expected


def test_the_lua_state_has_a_slot_for_every_field_of_an_open_session() -> None:
    """A device state in Redis is an array with literal indices (analytics.lua, stated in one
    line): each field of OpenSession has one, in its order (the 6 of attribution in one), so
    a field added to OpenSession fails here until the script keeps it."""
    [line] = re.findall(r"^-- state session: (.*)$", LUA.read_text(), re.MULTILINE)
    slots = re.findall(r"(\d+) (\{[^}]*\}|\w+)", line)
    assert [int(at) for at, _ in slots] == list(range(4, 4 + len(slots)))
    fields = [name for _, held in slots for name in held.strip("{}").split()]
    assert fields == list(names(OPEN_SESSION_SHAPE))


def test_a_hit_saved_before_a_field_was_added_reads_with_the_field_at_its_default() -> None:
    hit = Hit("e1", "purchase", 5, 6, ("d1",), True, "p1", revenue=250, properties=b"\xff")
    [full] = hits_of([compact_hit_values(hit)])
    assert full == hit
    *older, _revenue, _properties = hit_values(hit)  # as if saved before those two existed
    assert hits_of([older, hit_values(hit)]) == [
        Hit("e1", "purchase", 5, 6, ("d1",), True, "p1"),
        hit,
    ]


def test_the_lua_says_the_widths_of_the_rows_it_writes() -> None:
    [widths] = re.findall(r"^local ROW_WIDTHS = '(\d+ \d+)'$", LUA.read_text(), re.MULTILINE)
    assert widths == f"{len(analytics.ROW_STRINGS)} {len(analytics.ROW_NUMBERS)}"


async def test_redis_outbox_rows_of_another_version_read_by_their_widths(
    redis_url: str, redis_client: Redis
) -> None:
    """An outbox entry says how many strings and numbers its rows have (`w`): rows a newer
    version wrote (a field more of each) read as this version's fields; rows an older one
    wrote, lacking fields without a default, are an error that names them (never shifted)."""
    clock = ManualClock(1_700_000_000_000)
    store = await connect(redis_url, clock=clock)
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
        [written] = await sessionizer.backend.outbox("p", 10)
        key = store.backend.analytics.keys("p")[7]  # type: ignore[attr-defined]
        [(entry_id, fields)] = await redis_client.xrange(key)
        assert fields[b"w"] == b"12 6"
        strings, numbers = len(analytics.ROW_STRINGS), len(analytics.ROW_NUMBERS)
        e = orjson.loads(fields[b"e"])
        flat, packed = e[3], list(struct.unpack(f"<{len(fields[b'n']) // 8}d", fields[b"n"]))
        rows = [flat[i : i + strings] for i in range(0, len(flat), strings)]
        values = [packed[i : i + numbers] for i in range(0, len(packed), numbers)]
        assert len(rows) == len(values) == 3

        def entry(widths: bytes, rows: list[list[Any]], values: list[list[float]]) -> OutboxEntry:
            flat_values = [v for row in values for v in row]
            again = {
                **fields,
                b"e": orjson.dumps([*e[:3], [s for row in rows for s in row], *e[4:]]),
                b"n": struct.pack(f"<{len(flat_values)}d", *flat_values),
                b"w": widths,
            }
            return analytics._entry("p", [entry_id, again])

        newer = entry(
            f"{strings + 1} {numbers + 1}".encode(),
            [[*row, "a newer field"] for row in rows],
            [[*row, 7.0] for row in values],
        )
        assert newer == written
        with pytest.raises(ValueError, match=r"without a default: .*'closed'"):
            entry(f"{strings - 1} {numbers}".encode(), [row[:-1] for row in rows], values)
        with pytest.raises(ValueError, match=r"without a default: .*'version'"):
            entry(f"{strings} {numbers - 1}".encode(), rows, [row[:-1] for row in values])
    finally:
        await store.close()
