"""`clickhouse://user:password@host:8123/database` (`clickhouses://` for TLS, port 8443 by
default): the analytics sink on ClickHouse, over its HTTP interface.

The tables (`ddl()` prints them, for operators who create their own) are made on first use:

* `analytics_events`, a `ReplacingMergeTree` partitioned by month and ordered by (project_id,
  timestamp, event_id). An event's key never changes between writes of it (a retried drain
  hands over the same rows), so a retried write is a second copy of the same key, which
  ClickHouse folds into one when it merges the parts, and at once in a query with `FINAL`.
  Count with `SELECT count() FROM analytics_events FINAL`.
* `analytics_sessions`, a `ReplacingMergeTree(version)` ordered by (project_id, id): each
  write of a session adds its row, and the row of greatest version is the session. Every
  query here reads that row per session (`LIMIT 1 BY id`, newest version first), so the
  answers are exact before the parts merge, and an older row written late never wins. Not
  partitioned: a session's start may move earlier (a late event before it), and rows of one
  session in two partitions would never merge. `VersionedCollapsingMergeTree(sign, version)`,
  which the analytics products use, is not idempotent: a retried insert's rows cancel
  nothing and count twice, on 18.16 and on current releases alike, even after `FINAL`.

Tables an older version made get the columns of the fields added since when the sink opens
(`sessionary.analytics.sink.add_columns`): `ALTER TABLE ... ADD COLUMN`, each at its field's
default, which the rows stored before read as.

A write is few large inserts (JSONEachRow), as ClickHouse wants, for all the entries the
drainer hands over (up to 500 ingest batches, each up to 1,000 events): one of the sessions, and
one of the events, or two halves past 10,000 of them, which the server parses at once. They run
at the same time, and each is sent in pieces made while the server parses the piece before.
The inserts are not one transaction (ClickHouse has none); a write that fails part way is
retried whole, which the engines make harmless. The stats read the latest rows in one query
for the totals and the buckets (so the buckets add up to the totals); the top paths are two
more queries, which may see sessions written in between.

Why the HTTP interface with httpx, not a ClickHouse client library: the official async client
(clickhouse-connect) cannot talk to the 18.16 server Debian ships (its first query reads a
column of `system.settings` that release lacks), and the sink needs three calls, each one HTTP
POST. The SQL is separate from the transport (`Transport`), so the tests run the same
statements on a current ClickHouse in-process (chdb) as well as on the server.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import orjson

from sessionary.analytics.sink import (
    EVENT_COLUMNS,
    EVENT_SHAPE,
    SESSION_COLUMNS,
    SESSION_FIELDS,
    SESSION_SHAPE,
    TABLES,
    Interval,
    SessionsPage,
    Stats,
    add_columns,
    events_of,
    latest_rows,
    page_args,
    page_of,
    span,
    stats_of,
    timeline,
)
from sessionary.errors import StoreUnavailable
from sessionary.sessionize import DUPLICATE, Field, OutboxEntry, SessionRow, compiled

#: ClickHouse's type of each kind of value (`sessionary.sessionize.Field.kind`); properties, the
#: one bytes field, are the JSON text. No DateTime64 (18.16 lacks it): times are ms, as
#: everywhere in sessionary.
_TYPES = {str: "String", int: "Int64", bool: "UInt8", bytes: "String"}
#: a ReplacingMergeTree's version column is unsigned on 18.16
_OVERRIDES = {"version": "UInt64"}


def _column(f: Field) -> str:
    kind = _OVERRIDES.get(f.name, _TYPES[f.kind])
    return f"{f.name} {f'Nullable({kind})' if f.optional else kind}"


def _columns(fields: Sequence[Field]) -> str:
    return ",\n    ".join(_column(f) for f in fields)


_EVENTS_TABLE = f"""CREATE TABLE IF NOT EXISTS analytics_events (
    {_columns(EVENT_SHAPE)}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(timestamp, 1000), 'UTC'))
ORDER BY (project_id, timestamp, event_id)"""
_SESSIONS_TABLE = f"""CREATE TABLE IF NOT EXISTS analytics_sessions (
    {_columns(SESSION_SHAPE)}
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, id)"""


def ddl() -> str:
    """The statements that create the sink's tables (in the database the URL names)."""
    return f"{_EVENTS_TABLE};\n\n{_SESSIONS_TABLE};\n"


_INSERT_EVENTS = f"INSERT INTO analytics_events ({', '.join(EVENT_COLUMNS)}) FORMAT JSONEachRow"
_INSERT_SESSIONS = (
    f"INSERT INTO analytics_sessions ({', '.join(SESSION_COLUMNS)}) FORMAT JSONEachRow"
)
#: the session rows of a project, the latest version of each (a subquery: {project} a literal)
_LATEST = (
    f"(SELECT {', '.join(SESSION_COLUMNS)} FROM analytics_sessions "
    "WHERE project_id = {project} ORDER BY id, version DESC LIMIT 1 BY id)"
)
_IN_SPAN = "started_at >= {first} AND started_at < {last}"
_SESSIONS = (
    f"SELECT {', '.join(SESSION_FIELDS)} FROM {_LATEST} "
    "WHERE started_at >= {first} "
    "AND (started_at < {below_ts} OR (started_at = {below_ts} AND id < {below_id})){filters} "
    "ORDER BY started_at DESC, id DESC LIMIT {fetch}"
)
# per bucket ({width} ms, floored, a negative time too): the sessions, bounces, summed
# durations and events, and the first and last start; the totals are the buckets' sums
_BUCKETS = (
    "SELECT started_at - (started_at % {width} + {width}) % {width} AS bucket, count(), "
    "countIf(is_bounce = 1), sum(duration_ms), sum(event_count), min(started_at), "
    f"max(started_at) FROM {_LATEST} WHERE {_IN_SPAN} GROUP BY bucket"
)
_TOP_PATHS = (  # ties by path in byte order: UTF-8's is code point order, as on SQLite
    "SELECT assumeNotNull({path}) AS path, count() AS n FROM " + _LATEST + " WHERE "
    f"{_IN_SPAN} AND isNotNull({{path}}) GROUP BY path ORDER BY n DESC, path LIMIT 10"
)
#: what every request asks of the server: 64-bit integers as JSON numbers
SETTINGS = {"output_format_json_quote_64bit_integers": "0"}


def literal(value: str | int | None) -> str:
    """`value` as a ClickHouse literal (18.16 has no server-side query parameters)."""
    if value is None:
        return "NULL"
    if type(value) is int:
        return str(value)
    assert isinstance(value, str)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def _additions(transport: Transport) -> list[str]:
    """The ALTER TABLEs that add the columns the tables lack (`add_columns`): those of the
    fields added since an older version made them. All are checked before any is added (a
    missing column without a default is the operator's to add)."""
    existing = {}
    for table, _ in TABLES:
        # a row per column, its name first, on 18.16 and on current releases alike
        described = await _unavailable_on_failure(
            transport.query(f"DESCRIBE TABLE {table} FORMAT JSONCompact")
        )
        existing[table] = [row[0] for row in _rows(described)]
    return [
        statement
        for table, fields in TABLES
        for statement in add_columns(
            table,
            existing[table],
            fields,
            _column,
            _default,
            if_not_exists=False,  # 18.16 lacks it (see `ClickHouseSink.on`)
        )
    ]


def _default(value: object) -> str:
    """A field's default as a literal of its column: a bool is UInt8 here, bytes (the
    properties) the JSON text."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, bytes):
        value = value.decode()
    if value is None or isinstance(value, str | int):
        return literal(value)
    raise TypeError(f"a column's default is None, a bool, an int, a str or bytes, not {value!r}")


class ClickHouseError(Exception):
    """An exception the ClickHouse server answered with (`code` its error code, when given)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, text: str) -> ClickHouseError:
        """The error of a server's message ("Code: 62, e.displayText() = DB::Exception: ...")."""
        found = re.search(r"Code: (\d+)", text)
        return cls(text.strip()[:2000], int(found[1]) if found else None)


#: error codes that mean we asked something wrong (a bug of ours: raised as they are, a 500
#: with its traceback); every other failure is the server's state (unreachable, refusing the
#: user, read-only, out of memory, too many parts, a table dropped under us, a materialized
#: view that fails): StoreUnavailable, so the drainer backs off and the routes answer 503.
_OUR_BUGS = frozenset({
    16,  # NO_SUCH_COLUMN_IN_TABLE
    26, 27,  # CANNOT_PARSE_QUOTED_STRING, CANNOT_PARSE_INPUT_ASSERTION_FAILED
    36,  # BAD_ARGUMENTS
    42, 43, 44, 46, 47,  # arguments, types, columns, functions, identifiers
    53,  # TYPE_MISMATCH
    62,  # SYNTAX_ERROR
    117,  # INCORRECT_DATA
})  # fmt: skip


#: the rows of an INSERT: whole, or in pieces as they are made
Body = bytes | AsyncIterable[bytes]


class Transport(Protocol):
    """How statements reach a ClickHouse: `query` runs `sql` (with `data`, the rows of an
    INSERT ... FORMAT, after it) and returns the response body; a refusal by the server is a
    `ClickHouseError`, a server out of reach is a `StoreUnavailable`."""

    async def query(self, sql: str, data: Body | None = None) -> bytes: ...

    async def close(self) -> None: ...


class HttpTransport:
    """The server's HTTP interface (https for `clickhouses://`), by httpx."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("clickhouse", "clickhouses") or not parts.hostname:
            raise ValueError(
                f"a ClickHouse sink URL is clickhouse://user:pw@host:8123/db, not {url!r}"
            )
        tls = parts.scheme == "clickhouses"
        port = parts.port or (8443 if tls else 8123)
        database = parts.path.strip("/") or "default"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
            raise ValueError(
                f"the database is an identifier ([A-Za-z_][A-Za-z0-9_]*), not {database!r}"
            )
        self.database = database
        user = unquote(parts.username) if parts.username else "default"
        password = unquote(parts.password) if parts.password else ""
        self._client = httpx.AsyncClient(
            base_url=f"{'https' if tls else 'http'}://{parts.hostname}:{port}",
            auth=httpx.BasicAuth(user, password),
            timeout=timeout,
            limits=httpx.Limits(max_connections=4),
        )
        self._where = f"{parts.hostname}:{port}"

    async def query(self, sql: str, data: Body | None = None, *, database: bool = True) -> bytes:
        params = dict(SETTINGS)
        if database:
            params["database"] = self.database
        if data is not None:
            params["query"] = sql
        try:
            response = await self._client.post(
                "/", params=params, content=sql.encode() if data is None else data
            )
        except httpx.TransportError as exc:  # refused, lost, timed out
            raise StoreUnavailable(
                f"the ClickHouse analytics sink at {self._where} is unreachable: {exc!r}"
            ) from exc
        if response.status_code != 200:
            raise ClickHouseError.of(response.text)
        return response.content

    async def close(self) -> None:
        await self._client.aclose()


def _rows(body: bytes) -> list[list[Any]]:
    data: list[list[Any]] = orjson.loads(body)["data"]
    return data


class ClickHouseSink:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @classmethod
    async def connect(cls, url: str) -> ClickHouseSink:
        """The sink of the URL (see the module), its database and tables created if missing."""
        transport = HttpTransport(url)
        try:
            await _unavailable_on_failure(
                transport.query(
                    f"CREATE DATABASE IF NOT EXISTS {transport.database}", database=False
                )
            )
            return await cls.on(transport)
        except BaseException:
            await transport.close()
            raise

    @classmethod
    async def on(cls, transport: Transport) -> ClickHouseSink:
        """The sink over `transport`, its tables created if missing, and the columns they
        lack added (tables an older version made: the fields added since, at their defaults)."""
        for statement in (_EVENTS_TABLE, _SESSIONS_TABLE):
            await _unavailable_on_failure(transport.query(statement))
        for statement in await _additions(transport):
            try:
                await _unavailable_on_failure(transport.query(statement))
            except (ClickHouseError, StoreUnavailable):
                # 18.16 has no ADD COLUMN IF NOT EXISTS: a sink opening at the same time may
                # have added the column since we looked (DUPLICATE_COLUMN, or 18.16's code 44)
                if statement in await _additions(transport):
                    raise
        return cls(transport)

    async def _query(self, sql: str) -> list[list[Any]]:
        return _rows(
            await _unavailable_on_failure(self._transport.query(f"{sql} FORMAT JSONCompact"))
        )

    async def write(self, entries: Sequence[OutboxEntry]) -> None:
        """The events' insert and the sessions' at once (each insert has a cost of its own on
        the server, writing a part, which the other overlaps); either failing fails the write,
        after both are done."""
        inserts = []
        for part in _halves(entries):
            if any(_has_events(entry) for entry in part):  # an empty INSERT is refused
                inserts.append(self._transport.query(_INSERT_EVENTS, _event_pieces(part)))
        sessions = latest_rows(entries)
        if sessions:
            body = _pieces(session_objects(sessions))
            inserts.append(self._transport.query(_INSERT_SESSIONS, body))
        done = await asyncio.gather(*map(_unavailable_on_failure, inserts), return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome

    async def sessions(
        self,
        project_id: str,
        *,
        start: int | None = None,
        end: int | None = None,
        device_id: str | None = None,
        profile_id: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> SessionsPage:
        first, below_ts, below_id, fetch = page_args(start, end, after, limit)
        filters = "".join(
            f" AND {name} = {literal(value)}"
            for name, value in (("device_id", device_id), ("profile_id", profile_id))
            if value is not None
        )
        records = await self._query(
            _SESSIONS.format(
                project=literal(project_id),
                first=first,
                below_ts=below_ts,
                below_id=literal(below_id),
                filters=filters,
                fetch=fetch,
            )
        )
        return page_of(records, limit)

    async def stats(
        self, project_id: str, *, start: int | None, end: int | None, interval: Interval = "day"
    ) -> Stats:
        first, last = span(start, end)
        where = {"project": literal(project_id), "first": first, "last": last}
        line = timeline(interval, None, None, None, None)  # checks the interval
        buckets = await self._query(_BUCKETS.format(width=line[1], **where))
        sessions = sum(row[1] for row in buckets)
        totals = (
            sessions,
            sum(row[2] for row in buckets),
            sum(row[3] for row in buckets),
            sum(row[4] for row in buckets),
        )
        earliest = min((row[5] for row in buckets), default=None)
        latest = max((row[6] for row in buckets), default=None)
        line = timeline(interval, start, end, earliest, latest)
        entry_paths = await self._query(_TOP_PATHS.format(path="entry_path", **where))
        exit_paths = await self._query(_TOP_PATHS.format(path="exit_path", **where))
        return stats_of(totals, line, [row[:3] for row in buckets], entry_paths, exit_paths)

    async def close(self) -> None:
        await self._transport.close()


#: the dicts of session rows, of `SESSION_COLUMNS` (a comprehension compiled from them)
session_objects: Callable[[Iterable[SessionRow]], list[dict[str, Any]]] = compiled(
    "rows",
    "[{" + ", ".join(f"{name!r}: r.{name}" for name in SESSION_COLUMNS) + "} for r in rows]",
    {},
)


def each_row(objects: Sequence[dict[str, Any]]) -> bytes:
    """The rows as JSONEachRow: an object each (None as null, a bool as true / false, which a
    UInt8 column takes), commas between them, which that format accepts (18.16 refuses the
    brackets of an array around them): one orjson call for them all drains 1.7 times as fast
    as a call per row."""
    return orjson.dumps(objects)[1:-1]


#: rows per piece of an insert's body (about 2 MB of events)
CHUNK = 5000


def _halves(entries: Sequence[OutboxEntry]) -> list[Sequence[OutboxEntry]]:
    """`entries` in two inserts when they hold more than two pieces of hits (the server parses
    each insert on a thread of its own), else in one."""
    total = sum(len(entry.hits) for entry in entries)
    if total <= 2 * CHUNK:
        return [entries]
    seen = 0
    for at, entry in enumerate(entries):
        seen += len(entry.hits)
        if seen * 2 >= total:
            return [entries[: at + 1], entries[at + 1 :]]
    return [entries]


def _has_events(entry: OutboxEntry) -> bool:
    """Whether `entry` makes an event row: a hit but a duplicate, a start or an end."""
    return bool(entry.started or entry.ended) or any(
        status != DUPLICATE for status, _, _ in entry.placements
    )


async def _event_pieces(entries: Sequence[OutboxEntry]) -> AsyncIterator[bytes]:
    """The event rows of `entries` as the body of one INSERT, made and sent about CHUNK rows
    at a time: the server parses a piece (it reads a body as it arrives) while the next is
    made, and the event loop is never held longer than a piece takes."""
    group: list[OutboxEntry] = []
    size = 0
    sent = False
    for at, entry in enumerate(entries, 1):
        group.append(entry)
        size += len(entry.hits)
        if size < CHUNK and at < len(entries):
            continue
        events = events_of(group, dicts=True)
        if events:
            if sent:
                yield b","
            yield each_row(events)
            sent = True
        group, size = [], 0


async def _pieces(objects: Sequence[dict[str, Any]]) -> AsyncIterator[bytes]:
    """`each_row` of `objects`, CHUNK rows a piece (see `_event_pieces`)."""
    for start in range(0, len(objects), CHUNK):
        if start:
            yield b","
        yield each_row(objects[start : start + CHUNK])


_T = TypeVar("_T")


async def _unavailable_on_failure(call: Awaitable[_T]) -> _T:
    """Await `call`; a server's refusal that is not a bug of ours becomes StoreUnavailable."""
    try:
        return await call
    except ClickHouseError as exc:
        if exc.code in _OUR_BUGS:
            raise
        raise StoreUnavailable(f"the ClickHouse analytics sink failed: {exc}") from exc
