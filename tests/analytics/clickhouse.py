"""ClickHouse for the tests: the sink's `Transport` on chdb (the current ClickHouse engine
in-process, so the sink's DDL and queries are proven on a current release as well as on the
18.16 server Debian ships: tests/analytics/test_sinks.py runs every sink test on both), and
statements on either outside the sink (`rows`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from chdb import session as chdb_session

from sessionary.analytics.clickhouse_sink import (
    SETTINGS,
    Body,
    ClickHouseError,
    HttpTransport,
    Transport,
)


class ChdbTransport:
    """A chdb session on a directory of its own (chdb runs one query at a time: a lock)."""

    def __init__(self, directory: Path) -> None:
        self._session = chdb_session.Session(str(directory))
        for name, value in SETTINGS.items():
            self._session.query(f"SET {name} = {value}")
        self._lock = asyncio.Lock()

    def version(self) -> str:
        return str(self._session.query("SELECT version()", "CSV").bytes().decode().strip('"\n'))

    def _run(self, sql: str, data: bytes | None) -> bytes:
        text = sql if data is None else f"{sql}\n{data.decode()}"
        try:
            result = self._session.query(text)
        except Exception as exc:  # chdb's ChdbError (a RuntimeError): the server's message
            raise ClickHouseError.of(str(exc)) from exc
        return bytes(result.bytes())

    async def query(self, sql: str, data: Body | None = None) -> bytes:
        if data is not None and not isinstance(data, bytes):
            data = b"".join([piece async for piece in data])
        async with self._lock:
            return await asyncio.to_thread(self._run, sql, data)

    async def close(self) -> None:
        self._session.close()


async def rows(transport: Transport, statement: str) -> list[tuple[Any, ...]]:
    """`statement` through `transport`: the rows of a SELECT, SHOW or DESCRIBE, else []."""
    if not statement.lstrip().startswith(("SELECT", "SHOW", "DESCRIBE")):
        await transport.query(statement)
        return []
    body = await transport.query(f"{statement} FORMAT JSONCompact")
    return [tuple(row) for row in orjson.loads(body)["data"]]


def in_database(url: str, database: str) -> HttpTransport:
    """A transport to the server of the sink URL `url`, in `database`."""
    return HttpTransport(url.rsplit("/", 1)[0] + f"/{database}")
