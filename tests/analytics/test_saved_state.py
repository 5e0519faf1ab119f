"""State saved by the version before the row shapes were derived (`sessionary.sessionize.shape`)
reads back as it did: its device states, pointers, remembered ids, watermark and outbox
entries, written here byte for byte as that version wrote them (by its own code, run on the
batches of `_BATCHES`), drain and extend exactly as state written by this version does."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from sessionary import ManualClock, Store, connect
from sessionary.sessionize import (
    Hit,
    IngestOutcome,
    OutboxEntry,
    Placement,
    Rules,
    SessionRow,
)

T = 1_700_000_000_000
PROJECT = "proj"


def _hit(event_id: str, name: str, ts: int, devices: tuple[str, ...], **fields: Any) -> Hit:
    return Hit(event_id, name, ts, ts, devices, **fields)


# the first two batches made the saved state; the third runs on it
_BATCHES: list[tuple[list[Hit], int, str]] = [
    (
        [
            _hit(
                "e1",
                "screen_view",
                T,
                ("d1",),
                profile_id="p1",
                path="/a",
                referrer="https://r.example/",
                utm_source="src",
                utm_medium="med",
                utm_campaign="camp",
                utm_term="term",
                utm_content="cont",
                properties=b'{"k":1}',
            ),
            _hit(
                "e2",
                "purchase",
                T + 1000,
                ("d1",),
                dedup=True,
                path="/b",
                revenue=250,
                properties=b"\xff\x00",
            ),
            _hit("e3", "screen_view", T + 2000, ("d2", "d3"), path="/c"),
        ],
        T + 5000,
        "s_a",
    ),
    (
        [
            _hit(
                "e4",
                "screen_view",
                T + 7_200_000,
                ("d1",),
                profile_id="p2",
                path="/d",
                utm_source="s2",
            )
        ],
        T + 7_200_500,
        "s_b",
    ),
]
_THIRD: tuple[list[Hit], int, str] = (
    [
        _hit("e5", "screen_view", T + 7_260_000, ("d1",), path="/e"),  # extends s_b0
        _hit("e6", "screen_view", T + 7_300_000, ("d3", "d2"), path="/f"),  # splits s_a2
        _hit("e7", "purchase", T + 7_270_000, (), profile_id="p2", revenue=100),  # joins s_b0
        _hit("e2", "purchase", T + 7_280_000, ("d1",), dedup=True),  # a duplicate
    ],
    T + 7_400_000,
    "s_c",
)

#: what the previous version left in SQLite: table -> its rows
SAVED_SQLITE: dict[str, list[tuple[Any, ...]]] = {
    "sz_devices": [
        (
            "proj",
            "d1",
            (
                b'[1700007200000,1700007200500,1700000001000,["s_b0",1700007200000,170000720000'
                b'0,1,1,0,1,"p2","/d","/d",null,"s2",null,null,null,null]]'
            ),
            "s_b0",
            1700007200000,
            1700007200500,
        ),
        (
            "proj",
            "d2",
            (
                b'[1700000002000,1700000005000,null,["s_a2",1700000002000,1700000002000,1,1,0,1'
                b',null,"/c","/c",null,null,null,null,null,null]]'
            ),
            "s_a2",
            1700000002000,
            1700000005000,
        ),
    ],
    "sz_pointers": [
        (
            "proj",
            "p2",
            "d1",
            "s_b0",
            1700007200000,
        ),
    ],
    "sz_seen": [
        (
            "proj",
            "e2",
            1700000005000,
        ),
    ],
    "sz_meta": [
        (
            "proj",
            1700007200000,
        ),
    ],
    "sz_outbox": [
        (
            1,
            "proj",
            (
                b'[[["e1","screen_view",1700000000000,1700000000000,["d1"],false,"p1","/a","htt'
                b'ps://r.example/","src","med","camp","term","cont",0,"{\\"k\\":1}"],["e2","pur'
                b'chase",1700000001000,1700000001000,["d1"],true,null,"/b",null,null,null,null,'
                b'null,null,250,["/wA="]],["e3","screen_view",1700000002000,1700000002000,["d2"'
                b',"d3"],false,null,"/c",null,null,null,null,null,null,0,"{}"]],[["joined","s_a'
                b'0","d1"],["joined","s_a0","d1"],["joined","s_a2","d2"]],[["s_a0","proj","d1",'
                b'"p1",1700000000000,1700000001000,2,1,"/a","/b","https://r.example/","src","me'
                b'd","camp","term","cont",250,2,false],["s_a2","proj","d2",null,1700000002000,1'
                b'700000002000,1,1,"/c","/c",null,null,null,null,null,null,0,1,false]],[["s_a0"'
                b',1699999999999],["s_a2",1700000001999]],[]]'
            ),
        ),
        (
            2,
            "proj",
            (
                b'[[["e4","screen_view",1700007200000,1700007200000,["d1"],false,"p2","/d",null'
                b',"s2",null,null,null,null,0,"{}"]],[["joined","s_b0","d1"]],[["s_a0","proj","'
                b'd1","p1",1700000000000,1700000001000,2,1,"/a","/b","https://r.example/","src"'
                b',"med","camp","term","cont",250,3,true],["s_b0","proj","d1","p2",170000720000'
                b'0,1700007200000,1,1,"/d","/d",null,"s2",null,null,null,null,0,1,false]],[["s_'
                b'b0",1700007199999]],[["s_a0",1700000001001]]]'
            ),
        ),
    ],
}

#: what it left in Redis: key (after the prefix) -> (type, value)
SAVED_REDIS: dict[str, tuple[str, Any]] = {
    "an:projects": (
        "set",
        {
            b"proj",
        },
    ),
    "{an:proj}:d": (
        "hash",
        {
            b"d2": (
                b"\x9f\xcf\x00\x00\x01\x8b\xcf\xe5o\xd0\xcf\x00\x00\x01\x8b\xcf\xe5{\x88\xc2"
                b"\xa4s_a2\xcf\x00\x00\x01\x8b\xcf\xe5o\xd0\xcf\x00\x00\x01\x8b\xcf\xe5o\xd0"
                b"\x01\x01\x00\x01\xc2\xa2/c\xa2/c\xc2\xc2"
            ),
            b"d1": (
                b"\x9f\xcf\x00\x00\x01\x8b\xd0SE\x00\xcf\x00\x00\x01\x8b\xd0SF\xf4\xcf\x00\x00"
                b"\x01\x8b\xcf\xe5k\xe8\xa4s_b0\xcf\x00\x00\x01\x8b\xd0SE\x00\xcf\x00\x00\x01"
                b"\x8b\xd0SE\x00\x01\x01\x00\x01\xa2p2\xa2/d\xa2/d\x96\xc2\xa2s2\xc2\xc2\xc2"
                b"\xc2\xc2"
            ),
        },
    ),
    "{an:proj}:i": (
        "zset",
        [
            (
                b"d2",
                1700000002000.0,
            ),
            (
                b"d1",
                1700007200000.0,
            ),
        ],
    ),
    "{an:proj}:o": (
        "stream",
        [
            {
                b"h": (
                    b'["e1","screen_view",1700000000000,1700000000000,"d1",false,"p1","/a","htt'
                    b'ps://r.example/","src","med","camp","term","cont",0,"{\\"k\\":1}","e2","p'
                    b'urchase",1700000001000,1700000001000,"d1",true,null,"/b",null,null,null,n'
                    b'ull,null,null,250,["/wA="],"e3","screen_view",1700000002000,1700000002000'
                    b',["d2","d3"],false,null,"/c",null,null,null,null,null,null,0,"{}"]'
                ),
                b"e": (
                    b'["1700000000000","111",["s_a0","d1","s_a0","d1","s_a2","d2"],["s_a0","d1"'
                    b',"p1","\\/a","\\/b","https:\\/\\/r.example\\/","src","med","camp","term",'
                    b'"cont",false,"s_a2","d2",null,"\\/c","\\/c",null,null,null,null,null,null'
                    b',false],["s_a0",-1,"s_a2",1999],{}]'
                ),
                b"n": (
                    b"\x00\x00\x80V\xfe\xbcxB\x00\x80\xbeV\xfe\xbcxB\x00\x00\x00\x00\x00\x00"
                    b"\x00@\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00@o@\x00\x00\x00\x00"
                    b"\x00\x00\x00@\x00\x00\xfdV\xfe\xbcxB\x00\x00\xfdV\xfe\xbcxB\x00\x00\x00"
                    b"\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00"
                    b"\x00\x00\x00\x00\x00\x00\x00\x00\xf0?"
                ),
            },
            {
                b"h": (
                    b'["e4","screen_view",1700007200000,1700007200000,"d1",false,"p2","/d",null'
                    b',"s2",null,null,null,null,0,"{}"]'
                ),
                b"e": (
                    b'["1700007200000","1",["s_b0","d1"],["s_a0","d1","p1","\\/a","\\/b","https'
                    b':\\/\\/r.example\\/","src","med","camp","term","cont",true,"s_b0","d1","p'
                    b'2","\\/d","\\/d",null,"s2",null,null,null,null,false],["s_b0",-1],["s_a0"'
                    b",-7198999]]"
                ),
                b"n": (
                    b"\x00\x00\x80V\xfe\xbcxB\x00\x80\xbeV\xfe\xbcxB\x00\x00\x00\x00\x00\x00"
                    b"\x00@\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00@o@\x00\x00\x00\x00"
                    b"\x00\x00\x08@\x00\x00P4\x05\xbdxB\x00\x00P4\x05\xbdxB\x00\x00\x00\x00\x00"
                    b"\x00\xf0?\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\x00\x00"
                    b"\x00\x00\x00\x00\x00\x00\xf0?"
                ),
            },
        ],
    ),
    "{an:proj}:p": (
        "hash",
        {
            b"p2": b"\x93\xa2d1\xa4s_b0\xcf\x00\x00\x01\x8b\xd0SE\x00",
        },
    ),
    "{an:proj}:s": (
        "zset",
        [
            (
                b"e2",
                1700000005000.0,
            ),
        ],
    ),
    "{an:proj}:w": (
        "string",
        b"1700007200000",
    ),
}


async def _run(store: Store, batch: tuple[list[Hit], int, str]) -> IngestOutcome:
    hits, now, nonce = batch
    return await store.sessionization.sessionize(PROJECT, Rules(), hits, now, nonce)


async def _outbox(store: Store) -> list[OutboxEntry]:
    """The outbox, its entry ids aside (each store numbers its own)."""
    entries = await store.sessionization.outbox(PROJECT, 100)
    return [dataclasses.replace(entry, id="") for entry in entries]


async def _same_as_fresh(
    saved: Store, fresh: Store, restore: Callable[[], Awaitable[None]]
) -> None:
    """`saved`, holding the saved state (`restore`), reads and extends it as `fresh`, which ran
    the same batches, does; and the third batch lands as the rules say."""
    for batch in _BATCHES:
        await _run(fresh, batch)
    await restore()
    before = await _outbox(saved)
    assert before == await _outbox(fresh)
    first = before[0]
    assert first.hits == _BATCHES[0][0]  # properties not UTF-8, two candidate devices
    assert first.placements[2] == Placement("joined", "s_a2", "d2")
    outcome = await _run(saved, _THIRD)
    assert outcome == await _run(fresh, _THIRD)
    assert (outcome.joined, outcome.duplicate, outcome.started, outcome.ended) == (3, 1, 1, 1)
    after = await _outbox(saved)
    assert after == await _outbox(fresh)
    assert after[:2] == before
    rows = {row.id: row for row in after[2].sessions}
    assert rows["s_b0"] == SessionRow(
        "s_b0", PROJECT, "d1", "p2", T + 7_200_000, T + 7_270_000, 3, 2, "/d", None, None,
        "s2", None, None, None, None, 100, 3, False,
    )  # fmt: skip
    assert rows["s_a2"] == SessionRow(
        "s_a2", PROJECT, "d2", None, T + 2000, T + 2000, 1, 1, "/c", "/c", None, None, None,
        None, None, None, 0, 2, True,
    )  # fmt: skip
    assert rows["s_c1"].started_at == T + 7_300_000
    for name in ("open_sessions", "watermark"):
        method = getattr(saved.sessionization, name)
        assert await method(PROJECT) == await getattr(fresh.sessionization, name)(PROJECT)


async def test_sqlite_state_saved_before_is_read(tmp_path: Path) -> None:
    path = tmp_path / "saved.db"
    await (await connect(f"sqlite:///{path}")).close()  # the tables

    async def restore() -> None:
        with sqlite3.connect(path) as db:
            for table, rows in SAVED_SQLITE.items():
                marks = ", ".join("?" * len(rows[0]))
                db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)

    saved = await connect(f"sqlite:///{path}", clock=ManualClock())
    fresh = await connect(f"sqlite:///{tmp_path / 'fresh.db'}", clock=ManualClock())
    try:
        await _same_as_fresh(saved, fresh, restore)
    finally:
        await saved.close()
        await fresh.close()


async def test_redis_state_saved_before_is_read(
    redis_url: str, redis_client: Redis, redis_prefix: str
) -> None:
    async def restore() -> None:
        for key, (kind, value) in SAVED_REDIS.items():
            name = redis_prefix + key
            if kind == "hash":
                await redis_client.hset(name, mapping=value)
            elif kind == "zset":
                await redis_client.zadd(name, dict(value))
            elif kind == "string":
                await redis_client.set(name, value)
            elif kind == "set":
                await redis_client.sadd(name, *value)
            else:
                assert kind == "stream"
                for fields in value:
                    await redis_client.xadd(name, fields)

    saved = await connect(redis_url, clock=ManualClock())
    fresh = await connect(
        redis_url.replace(redis_prefix, f"{redis_prefix}fresh:"), clock=ManualClock()
    )
    try:
        await _same_as_fresh(saved, fresh, restore)
    finally:
        await saved.close()
        await fresh.close()
