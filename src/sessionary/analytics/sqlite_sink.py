"""`sqlite:///path.db`: the default analytics sink, one SQLite file in WAL mode.

Every statement runs on one connection owned by one worker thread, off the event loop; calls
queue up for that thread, so they never overlap. A `write` is one `BEGIN IMMEDIATE`
transaction: all of its rows are stored, or none.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

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
    column,
    create_table,
    page_args,
    page_of,
    records_of,
    session_values,
    span,
    sql_literal,
    stats_of,
    timeline,
)
from sessionary.errors import sqlite_unavailable
from sessionary.sessionize import Field, OutboxEntry, SessionRow

T = TypeVar("T")

#: the SQLite type of each kind of value (`sessionary.sessionize.Field.kind`); properties,
#: the one bytes field, are the text of a JSON object
_TYPES = {str: "TEXT", int: "INTEGER", bool: "INTEGER", bytes: "TEXT"}
_EVENTS = create_table(
    "analytics_events", EVENT_SHAPE, _TYPES, ("project_id", "event_id"), " WITHOUT ROWID"
)
_SESSIONS_TABLE = create_table(
    "analytics_sessions", SESSION_SHAPE, _TYPES, ("id",), " WITHOUT ROWID"
)
_SCHEMA = f"""{_EVENTS};
{_SESSIONS_TABLE};
CREATE INDEX IF NOT EXISTS analytics_sessions_by_start
    ON analytics_sessions (project_id, started_at, id);
"""
#: the event columns that may be NULL, each bound as 0 when it is (see `records_of`)
_NULLABLE = frozenset(
    {"session_id", "device_id", "profile_id", "path", "referrer"}
    | {"utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"}
)
_INSERT_EVENT = (
    f"INSERT INTO analytics_events ({', '.join(EVENT_COLUMNS)}) VALUES ("
    + ", ".join("NULLIF(?, 0)" if name in _NULLABLE else "?" for name in EVENT_COLUMNS)
    + ") ON CONFLICT DO NOTHING"
)
_UPSERT_SESSION = (
    f"INSERT INTO analytics_sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SESSION_COLUMNS))}) ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in SESSION_COLUMNS[1:])
    + " WHERE excluded.version > analytics_sessions.version"
)
# ?1 project, started_at >= ?2, ?3 device or NULL, ?4 profile or NULL, below (?5, ?6)
_SESSIONS = (
    f"SELECT {', '.join(SESSION_FIELDS)} FROM analytics_sessions "
    "WHERE project_id = ?1 AND started_at >= ?2 AND (started_at, id) < (?5, ?6) "
    "AND (?3 IS NULL OR device_id = ?3) AND (?4 IS NULL OR profile_id = ?4) "
    "ORDER BY started_at DESC, id DESC LIMIT ?7"
)
_SPAN = "FROM analytics_sessions WHERE project_id = ?1 AND started_at >= ?2 AND started_at < ?3"
_TOTALS = (
    "SELECT count(*), count(*) FILTER (WHERE is_bounce), "
    "coalesce(sum(duration_ms), 0), coalesce(sum(event_count), 0), "
    f"min(started_at), max(started_at) {_SPAN}"
)
# ?4 the bucket width: started_at floored to a multiple of it (a negative time too)
_BUCKETS = (
    "SELECT started_at - (started_at % ?4 + ?4) % ?4 AS bucket, count(*), "
    f"count(*) FILTER (WHERE is_bounce) {_SPAN} GROUP BY bucket"
)
_TOP_PATHS = (
    "SELECT {path}, count(*) " + _SPAN + " AND {path} IS NOT NULL "
    "GROUP BY {path} ORDER BY count(*) DESC, {path} LIMIT 10"
)
_TOP_ENTRY_PATHS = _TOP_PATHS.format(path="entry_path")
_TOP_EXIT_PATHS = _TOP_PATHS.format(path="exit_path")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.executescript(_SCHEMA)
        if _additions(conn):  # tables an older version made: their new columns, under the lock
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _additions(conn):
                    conn.execute(statement)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def _declare(f: Field) -> str:
    return column(f, _TYPES)


def _literal(value: object) -> str:
    return sql_literal(value, ("0", "1"))


def _additions(conn: sqlite3.Connection) -> list[str]:
    """The ALTER TABLEs that add the columns the tables lack (`add_columns`)."""
    return [
        statement
        for table, fields in TABLES
        for statement in add_columns(
            table,
            (name for _, name, *_ in conn.execute(f"PRAGMA table_info({table})")),
            fields,
            _declare,
            _literal,
            if_not_exists=False,  # SQLite has no ADD COLUMN IF NOT EXISTS: the lock instead
        )
    ]


def _write(
    events: list[tuple[object, ...]], sessions: list[SessionRow], conn: sqlite3.Connection
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT_EVENT, events)
        conn.executemany(_UPSERT_SESSION, map(session_values, sessions))
    except BaseException:
        if conn.in_transaction:  # some errors roll back by themselves
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _fetch(sql: str, args: Sequence[object], conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(sql, args).fetchall()


def _stats(
    project_id: str,
    start: int | None,
    end: int | None,
    interval: Interval,
    conn: sqlite3.Connection,
) -> Stats:
    args = (project_id, *span(start, end))
    conn.execute("BEGIN")  # every query sees one snapshot
    try:
        [totals] = conn.execute(_TOTALS, args).fetchall()
        line = timeline(interval, start, end, *totals[4:])
        buckets = conn.execute(_BUCKETS, (*args, line[1])).fetchall() if totals[0] else []
        return stats_of(
            totals,
            line,
            buckets,
            conn.execute(_TOP_ENTRY_PATHS, args).fetchall(),
            conn.execute(_TOP_EXIT_PATHS, args).fetchall(),
        )
    finally:
        conn.execute("COMMIT")


class SqliteSink:
    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._executor = executor  # its one thread uses the connection
        self._conn = conn

    @classmethod
    async def open(cls, path: str) -> SqliteSink:
        """Open (creating if missing) the database file at `path` and its tables."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn)
        except sqlite3.Error as exc:  # disk full, I/O error, locked: StoreUnavailable
            if (failure := sqlite_unavailable("analytics sink", exc)) is None:
                raise
            raise failure from exc

    async def write(self, entries: Sequence[OutboxEntry]) -> None:
        events, sessions = records_of(entries, absent=0, flags=(0, 1))
        await self._run(partial(_write, events, sessions))

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
        args = (project_id, first, device_id, profile_id, below_ts, below_id, fetch)
        return page_of(await self._run(partial(_fetch, _SESSIONS, args)), limit)

    async def stats(
        self, project_id: str, *, start: int | None, end: int | None, interval: Interval = "day"
    ) -> Stats:
        return await self._run(partial(_stats, project_id, start, end, interval))

    async def close(self) -> None:
        await self._run(sqlite3.Connection.close)
        self._executor.shutdown()
