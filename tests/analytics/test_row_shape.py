"""The row shapes (`sessionary.sessionize.shape`) are what every layout is derived from; where
one cannot be derived (the Lua of the Redis backend), it is held to them here."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from sessionary.analytics.sink import SESSION_SHAPE, sink_from_url
from sessionary.backends.redis import analytics
from sessionary.sessionize import (
    OPEN_SESSION_SHAPE,
    SESSION_ROW_SHAPE,
    Field,
    Hit,
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
