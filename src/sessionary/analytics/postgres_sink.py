"""`postgresql://...` (or `postgres://...`): the analytics sink on PostgreSQL, with asyncpg.

The tables (times in ms as BIGINT, properties as JSONB) are created if missing. A `write` is
one transaction: all of its rows are stored, or none.

The URL is asyncpg's DSN, plus an optional `schema` query parameter (a lower-case identifier):
the tables live in that schema, created if missing (it becomes the connections'
`search_path`); without it they go where the server's `search_path` puts them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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
from sessionary.errors import StoreUnavailable
from sessionary.sessionize import Field, OutboxEntry

#: the PostgreSQL type of each kind of value (`sessionary.sessionize.Field.kind`); properties,
#: the one bytes field, are a JSON object
_TYPES = {str: "TEXT", int: "BIGINT", bool: "BOOLEAN", bytes: "JSONB"}
_EVENTS = create_table("analytics_events", EVENT_SHAPE, _TYPES, ("project_id", "event_id"))
_SESSIONS_TABLE = create_table("analytics_sessions", SESSION_SHAPE, _TYPES, ("id",))
_SCHEMA = f"""{_EVENTS};
{_SESSIONS_TABLE};
CREATE INDEX IF NOT EXISTS analytics_sessions_by_start
    ON analytics_sessions (project_id, started_at, id);
"""
#: the columns of a table where the sink's tables are (the schema that `_SCHEMA` made them in)
_COLUMNS_OF = (
    "SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = $1"
)
_INSERT_EVENT = (
    f"INSERT INTO analytics_events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(EVENT_COLUMNS) + 1))}) "
    "ON CONFLICT DO NOTHING"
)
_UPSERT_SESSION = (
    f"INSERT INTO analytics_sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(SESSION_COLUMNS) + 1))}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in SESSION_COLUMNS[1:])
    + " WHERE excluded.version > analytics_sessions.version"
)
log = logging.getLogger("sessionary.analytics")

#: From this many event rows a write COPYs them into a temporary table and inserts from there:
#: half the time per row of the INSERT's executemany for a drainer catching up (50,000 rows),
#: but a millisecond more for a few (benchmarks/analytics_parts.py).
COPY_FROM = 500
_EVENTS_IN = "CREATE TEMPORARY TABLE analytics_events_in (LIKE analytics_events) ON COMMIT DROP"
# a new temporary table is never scanned in parallel: its rows come back in COPY order, so
# of two rows with one key the first is stored, as with the executemany
_INSERT_COPIED = (
    f"INSERT INTO analytics_events ({', '.join(EVENT_COLUMNS)}) "
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM analytics_events_in ON CONFLICT DO NOTHING"
)
# $1 project, started_at >= $2, $3 device or NULL, $4 profile or NULL, below ($5, $6)
_SESSIONS = (
    f"SELECT {', '.join(SESSION_FIELDS)} FROM analytics_sessions "
    "WHERE project_id = $1 AND started_at >= $2 AND (started_at, id) < ($5, $6) "
    "AND ($3::text IS NULL OR device_id = $3) AND ($4::text IS NULL OR profile_id = $4) "
    "ORDER BY started_at DESC, id DESC LIMIT $7"
)
_SPAN = "FROM analytics_sessions WHERE project_id = $1 AND started_at >= $2 AND started_at < $3"
_TOTALS = (
    "SELECT count(*), count(*) FILTER (WHERE is_bounce), "
    "coalesce(sum(duration_ms), 0), coalesce(sum(event_count), 0), "
    f"min(started_at), max(started_at) {_SPAN}"
)
# $4 the bucket width: started_at floored to a multiple of it (a negative time too)
_BUCKETS = (
    "SELECT started_at - (started_at % $4 + $4) % $4 AS bucket, count(*), "
    f"count(*) FILTER (WHERE is_bounce) {_SPAN} GROUP BY bucket"
)
_TOP_PATHS = (  # ties by path in code point order, as on SQLite
    "SELECT {path}, count(*) " + _SPAN + " AND {path} IS NOT NULL "
    'GROUP BY {path} ORDER BY count(*) DESC, {path} COLLATE "C" LIMIT 10'
)
_TOP_ENTRY_PATHS = _TOP_PATHS.format(path="entry_path")
_TOP_EXIT_PATHS = _TOP_PATHS.format(path="exit_path")


def _declare(f: Field) -> str:
    return column(f, _TYPES)


# SQLSTATE classes that mean we asked something wrong: bugs of ours, raised as they are (a 500
# with its traceback). Every other failure is the server's state (connection lost or refused,
# read-only standby, disk full, too many connections, shutting down, serialization failure,
# no privilege): StoreUnavailable, so the drainer backs off and the routes answer 503.
_OUR_BUGS = frozenset({"0A", "21", "22", "23", "42"})
_STATE_AMONG_BUGS = frozenset({"42501"})  # insufficient privilege: how the server is set up


@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    """The one place this sink decides what is a failure of the server (see `_OUR_BUGS`)."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        state = exc.sqlstate or ""
        if state[:2] in _OUR_BUGS and state not in _STATE_AMONG_BUGS:
            raise
        raise StoreUnavailable(f"the PostgreSQL analytics sink failed: {exc} ({state})") from exc
    except (OSError, asyncpg.InterfaceError) as exc:  # refused, lost, timed out, pool closing
        raise StoreUnavailable(f"the PostgreSQL analytics sink is unreachable: {exc}") from exc


class PostgresSink:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        #: False once the role proved it may not create temporary tables (TEMP revoked):
        #: large writes then go by executemany, as small ones do
        self._copies = True

    @classmethod
    async def connect(cls, url: str) -> PostgresSink:
        """Connect a pool to the URL (see the module) and create the tables if missing."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        schema = dict(query).get("schema")
        if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"schema is a lower-case SQL identifier, not {schema!r}")
        dsn = urlunsplit(parts._replace(query=urlencode([kv for kv in query if kv[0] != "schema"])))
        settings = None if schema is None else {"search_path": schema}
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, server_settings=settings)
        try:
            async with pool.acquire() as conn, conn.transaction():
                # one creator at a time: concurrent CREATE ... IF NOT EXISTS can collide
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sessionary.analytics'))")
                if schema is not None:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                await conn.execute(_SCHEMA)
                # tables an older version made: the columns of the fields added since
                additions = [
                    statement
                    for table, fields in TABLES
                    for statement in add_columns(
                        table,
                        [name for (name,) in await conn.fetch(_COLUMNS_OF, table)],
                        fields,
                        _declare,
                        sql_literal,
                    )
                ]
                for statement in additions:
                    await conn.execute(statement)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def write(self, entries: Sequence[OutboxEntry]) -> None:
        events, sessions = records_of(entries)
        with _unavailable_on_failure():
            async with self._pool.acquire() as conn, conn.transaction():
                if len(events) >= COPY_FROM and await self._staging(conn):
                    await conn.copy_records_to_table(
                        "analytics_events_in", records=events, columns=EVENT_COLUMNS
                    )
                    await conn.execute(_INSERT_COPIED)
                else:
                    await conn.executemany(_INSERT_EVENT, events)
                await conn.executemany(_UPSERT_SESSION, [session_values(row) for row in sessions])

    async def _staging(self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> bool:
        """Create this transaction's temporary table for a COPY: False (and never tried
        again) for a role without the TEMP privilege, whose writes go by executemany. In a
        savepoint, so that the refusal leaves the write's transaction usable."""
        if not self._copies:
            return False
        try:
            async with conn.transaction():
                await conn.execute(_EVENTS_IN)
        except asyncpg.InsufficientPrivilegeError:
            log.warning("the analytics sink's role may not create temporary tables: no COPY")
            self._copies = False
        return self._copies

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
        with _unavailable_on_failure():
            records = await self._pool.fetch(
                _SESSIONS, project_id, first, device_id, profile_id, below_ts, below_id, fetch
            )
        return page_of(records, limit)

    async def stats(
        self, project_id: str, *, start: int | None, end: int | None, interval: Interval = "day"
    ) -> Stats:
        args = (project_id, *span(start, end))
        with _unavailable_on_failure():
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),  # one snapshot
            ):
                totals = await conn.fetchrow(_TOTALS, *args)
                assert totals is not None
                line = timeline(interval, start, end, totals[4], totals[5])
                buckets = await conn.fetch(_BUCKETS, *args, line[1]) if totals[0] else []
                entry_paths = await conn.fetch(_TOP_ENTRY_PATHS, *args)
                exit_paths = await conn.fetch(_TOP_EXIT_PATHS, *args)
        return stats_of(totals, line, buckets, entry_paths, exit_paths)

    async def close(self) -> None:
        await self._pool.close()
