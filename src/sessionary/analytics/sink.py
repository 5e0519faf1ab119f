"""Where sessionized analytics end up: the sink contract, and the rows it stores.

The drainer (`sessionary.analytics.drain`) reads the store's outbox (`OutboxEntry`s: each
ingest batch or reaper step, with its hits, where each went, the latest row of every session it
touched, the sessions it opened and closed) and hands the entries to a sink, then
acknowledges them. A sink write must be idempotent, because a crash between writing and
acknowledging hands the same entries over again, and retried writes must not duplicate:

* an event row is keyed by (project_id, event_id); a second write of the key changes nothing.
  `session_start` / `session_end` rows have the ids `<session id>/start` and `<session id>/end`
  (client event ids never contain "/");
* a session row is keyed by its id and replaced only by a row with a greater `version`.

`rows_of` turns entries into rows (the same for every sink; `records_of` into the tuples the
SQL sinks insert, or the dicts ClickHouse's JSON takes); `sink_from_url` opens the sink a URL
names: `sqlite:///path.db` (`sessionary.analytics.sqlite_sink`, the default), `postgresql://...`
(`sessionary.analytics.postgres_sink`) or `clickhouse://...`
(`sessionary.analytics.clickhouse_sink`). The helpers below `sink_from_url` are the parts of the
SQL sinks that do not depend on the database.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Literal, Protocol

import orjson

from sessionary.codec import INT64_MAX, INT64_MIN
from sessionary.errors import InvalidCursor, ValidationError
from sessionary.extras import require
from sessionary.sessionize import (
    DUPLICATE,
    LATE,
    SESSION_ROW_SHAPE,
    Field,
    OutboxEntry,
    SessionRow,
    compiled,
    getter,
    names,
    shape,
)


@dataclass(frozen=True, slots=True)
class EventRow:
    project_id: str
    event_id: str
    name: str
    timestamp: int
    received_at: int
    session_id: str | None
    device_id: str | None
    profile_id: str | None
    path: str | None
    referrer: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    revenue: int
    properties: bytes  # a JSON object
    late: bool


@dataclass(frozen=True, slots=True)
class SessionsPage:
    sessions: list[SessionRow]
    next: str | None  # an opaque cursor for the next page, or None at the end


#: the width of a bucket of `Stats.sessions_over_time`, aligned on UTC hours or days
Interval = Literal["hour", "day"]
INTERVAL_MS: dict[str, int] = {"hour": 3_600_000, "day": 86_400_000}
#: the most buckets `Sink.stats` answers: a chart's worth (41 days by the hour, ~2.7 years by
#: the day), and a bound on what one request makes the sink compute and the API send
MAX_BUCKETS = 1000


class TooManyBuckets(ValidationError):
    """The range asked for spans more than `MAX_BUCKETS` buckets of the interval."""

    code = "too_many_buckets"
    http_status = 400

    def __init__(self, count: int, interval: str) -> None:
        super().__init__(
            f"the range spans {count} {interval} buckets, more than {MAX_BUCKETS}: ask for a "
            "coarser interval or a shorter range (from, to)"
        )


@dataclass(frozen=True, slots=True)
class Bucket:
    start: int  # ms, the start of its UTC hour or day
    sessions: int  # that started in it
    bounces: int  # of those


@dataclass(frozen=True, slots=True)
class Stats:
    sessions: int
    bounce_rate: float  # bounced sessions / sessions (0.0 when none)
    average_duration_ms: float
    events_per_session: float
    top_entry_paths: list[tuple[str, int]]  # (path, sessions), most first, at most 10
    top_exit_paths: list[tuple[str, int]]  # the same, by exit path
    # every bucket of the range, oldest first, empty ones included (see `Sink.stats`)
    sessions_over_time: list[Bucket]


class Sink(Protocol):
    async def write(self, entries: Sequence[OutboxEntry]) -> None:
        """Store the rows of `entries`, idempotently (see the module). Raises on failure,
        having stored all, some or none of them: the caller retries the same entries."""
        ...

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
        """Sessions of the project that started in [start, end), newest first."""
        ...

    async def stats(
        self, project_id: str, *, start: int | None, end: int | None, interval: Interval = "day"
    ) -> Stats:
        """Aggregates over the sessions that started in [start, end), all from one snapshot
        (the buckets add up to the totals), each computed by the database. The buckets are
        `interval` wide: with both bounds, they cover [start, end) (the first holds `start`)
        when that is at most `MAX_BUCKETS`; otherwise, or with either bound missing, they run
        from the first session's bucket to the last's (none without sessions), so totals
        over a wide range ("from=0") still answer. Sessions spanning more than `MAX_BUCKETS`
        are a `TooManyBuckets` (a 400 over HTTP)."""
        ...

    async def close(self) -> None: ...


def rows_of(entries: Sequence[OutboxEntry]) -> tuple[list[EventRow], list[SessionRow]]:
    """The event rows of `entries` (their hits but the duplicates, then a `session_start` /
    `session_end` row per session opened / closed) and the latest row of each session."""
    records, sessions = records_of(entries, properties=bytes)
    return [EventRow(*record) for record in records], sessions


def records_of(
    entries: Sequence[OutboxEntry],
    *,
    dicts: bool = False,
    absent: object = None,
    flags: tuple[object, object] = (False, True),
    properties: Callable[[bytes], object] = bytes.decode,
) -> tuple[list[Any], list[SessionRow]]:
    """The rows of `rows_of`, each event as the values of `EVENT_COLUMNS` (a dict of them with
    `dicts`): what the sinks insert, made without an `EventRow` each (the drainer's time per
    event). A missing text (session_id, device_id, profile_id, path, referrer, utm_*) is
    `absent`, `late` is `flags[late]` and the properties `properties(the JSON)` (text by
    default): SQLite binds None and a bool several times slower than an int, so its sink passes
    0 and (0, 1) and reads NULLIF(?, 0) back."""
    return events_of(entries, dicts=dicts, absent=absent, flags=flags, properties=properties), (
        latest_rows(entries)
    )


def events_of(
    entries: Sequence[OutboxEntry],
    *,
    dicts: bool = False,
    absent: object = None,
    flags: tuple[object, object] = (False, True),
    properties: Callable[[bytes], object] = bytes.decode,
) -> list[Any]:
    """The event rows of `records_of` alone."""
    return _events(dicts, absent, flags, properties)(entries)


#: Where each event column comes from: for a hit (`_FROM_HIT`, of the hit, its entry's
#: `project`, its placement's `sid` and `device`, its `profile` and its `late` flag), and for
#: the `session_start` / `session_end` row of a session (`_FROM_MARKER`, of its `row`, `what`
#: (start or end), its time `ts`, when its batch was `received` (None for the reaper's) and its
#: `path`). An event field is added to `EventRow` and here (the check below fails until it
#: is); the sinks follow.
_FROM_HIT = {
    "project_id": "project", "event_id": "hit.event_id", "name": "hit.name",
    "timestamp": "hit.ts", "received_at": "hit.received_at", "session_id": "sid",
    "device_id": "device", "profile_id": "profile", "path": "hit.path",
    "referrer": "hit.referrer", "utm_source": "hit.utm_source", "utm_medium": "hit.utm_medium",
    "utm_campaign": "hit.utm_campaign", "utm_term": "hit.utm_term",
    "utm_content": "hit.utm_content", "revenue": "hit.revenue",
    "properties": "properties(hit.properties)", "late": "late",
}  # fmt: skip
_FROM_MARKER = {
    "project_id": "row.project_id", "event_id": "row.id + '/' + what",
    "name": "'session_' + what", "timestamp": "ts",
    "received_at": "ts if received is None else received",
    "session_id": "row.id", "device_id": "row.device_id", "profile_id": "row.profile_id",
    "path": "path", "referrer": "row.referrer", "utm_source": "row.utm_source",
    "utm_medium": "row.utm_medium", "utm_campaign": "row.utm_campaign",
    "utm_term": "row.utm_term", "utm_content": "row.utm_content", "revenue": "0",
    "properties": "no_properties", "late": "not_late",
}  # fmt: skip
EVENT_SHAPE = shape(EventRow)
for _sources in (_FROM_HIT, _FROM_MARKER):
    if set(_sources) != set(names(EVENT_SHAPE)):
        raise TypeError(f"say where each EventRow field comes from: {sorted(_sources)}")


def _event_row(params: str, sources: Mapping[str, str], dicts: bool, scope: dict[str, Any]) -> Any:
    """The function of `params` making an event row, a tuple (or a dict) of the values
    `sources` names, a missing text as `absent` (in `scope`; None as it is, with no test):
    compiled, as fast as a tuple written out."""
    values = [
        f"(absent if (v := {sources[f.name]}) is None else v)"
        if f.optional and scope["absent"] is not None
        else sources[f.name]
        for f in EVENT_SHAPE
    ]
    if dicts:
        row = (
            "{"
            + ", ".join(f"{f.name!r}: {v}" for f, v in zip(EVENT_SHAPE, values, strict=True))
            + "}"
        )
    else:
        row = "(" + ", ".join(values) + ",)"
    return compiled(params, row, scope)


@functools.cache
def _events(
    dicts: bool, absent: object, flags: tuple[object, object], properties: Callable[[bytes], object]
) -> Callable[[Sequence[OutboxEntry]], list[Any]]:
    """`events_of` for one way of making rows."""
    not_late, is_late = flags
    scope = {
        "absent": absent, "properties": properties, "no_properties": properties(b"{}"),
        "not_late": not_late,
    }  # fmt: skip
    hit_row = _event_row("project, hit, sid, device, profile, late", _FROM_HIT, dicts, scope)
    marker_row = _event_row("row, what, ts, received, path", _FROM_MARKER, dicts, scope)

    def events(entries: Sequence[OutboxEntry]) -> list[Any]:
        found: list[Any] = []
        add = found.append
        for entry in entries:
            project = entry.project
            rows = {row.id: row for row in entry.sessions}
            for hit, (status, sid, device) in zip(entry.hits, entry.placements, strict=True):
                if status == DUPLICATE:
                    continue
                profile = hit.profile_id
                if profile is None and sid is not None:
                    session = rows.get(sid)
                    if session is not None:
                        profile = session.profile_id
                late = is_late if status == LATE else not_late
                add(hit_row(project, hit, sid, device, profile, late))
            received = entry.hits[0].received_at if entry.hits else None
            for sid, ts in entry.started:
                row = rows[sid]
                add(marker_row(row, "start", ts, received, row.entry_path))
            for sid, ts in entry.ended:
                row = rows[sid]
                add(marker_row(row, "end", ts, received, row.exit_path))
        return found

    return events


def latest_rows(entries: Sequence[OutboxEntry]) -> list[SessionRow]:
    """The latest row (of the greatest version) of each session of `entries`."""
    latest: dict[str, SessionRow] = {}
    for entry in entries:
        for row in entry.sessions:
            held = latest.get(row.id)
            if held is None or row.version > held.version:
                latest[row.id] = row
    return list(latest.values())


async def sink_from_url(url: str) -> Sink:
    """The sink `url` names: `sqlite:///path.db`, `postgresql://...` / `postgres://...`, or
    `clickhouse://...` / `clickhouses://...`."""
    if url.startswith("sqlite:///"):
        from sessionary.analytics.sqlite_sink import SqliteSink

        return await SqliteSink.open(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        require("asyncpg", "postgres", "a PostgreSQL analytics sink")
        from sessionary.analytics.postgres_sink import PostgresSink

        return await PostgresSink.connect(url)
    if url.startswith(("clickhouse://", "clickhouses://")):
        require("httpx", "clickhouse", "a ClickHouse analytics sink")
        from sessionary.analytics.clickhouse_sink import ClickHouseSink

        return await ClickHouseSink.connect(url)
    raise ValueError(
        "an analytics sink URL is sqlite:///path.db, postgresql://... or clickhouse://..., "
        f"not {url!r}"
    )


# -- for the SQL sinks ------------------------------------------------------------------------

#: the columns of the SQL sinks' tables: an event's, a session's (its fields, then the two
#: properties the stats aggregate, stored so the database computes them)
SESSION_SHAPE = (
    *SESSION_ROW_SHAPE,
    Field("duration_ms", int, optional=False),
    Field("is_bounce", bool, optional=False),
)
EVENT_COLUMNS = names(EVENT_SHAPE)
SESSION_FIELDS = names(SESSION_ROW_SHAPE)  # what `session_of` reads back
SESSION_COLUMNS = names(SESSION_SHAPE)
#: every sink's two tables, and the shape of each
TABLES = (("analytics_events", EVENT_SHAPE), ("analytics_sessions", SESSION_SHAPE))
_FIRST, _LAST = INT64_MIN, INT64_MAX

#: the values of `SESSION_COLUMNS` of a row
session_values: Callable[[SessionRow], tuple[object, ...]] = getter(SESSION_SHAPE)


def create_table(
    table: str,
    columns: Sequence[Field],
    types: Mapping[type, str],
    key: Sequence[str],
    options: str = "",
) -> str:
    """The CREATE TABLE (if not there) of a row shape: a column per field, typed by `types`
    (the database's type of each kind of value), NOT NULL unless it may be None."""
    lines = [column(f, types) for f in columns]
    lines.append(f"PRIMARY KEY ({', '.join(key)})")
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    " + ",\n    ".join(lines) + f"\n){options}"


def column(f: Field, types: Mapping[type, str]) -> str:
    """A field's column, as `create_table` declares it: its name and type, NOT NULL unless it
    may be None."""
    return f"{f.name} {types[f.kind]}{'' if f.optional else ' NOT NULL'}"


# -- the columns of a newer version ------------------------------------------------------------
# A table made by an older version lacks the columns of the fields added since (at the end of
# their dataclass, each with a default: `sessionary.sessionize.shape`). A sink, when it opens,
# reads the columns its tables have and adds the missing ones (`add_columns`), each with the
# field's default for the rows stored before: adding a field is one edit for a deployed sink too.


def missing_columns(existing: Iterable[str], fields: Sequence[Field]) -> list[Field]:
    """The fields whose column a table with the columns `existing` lacks, in shape order."""
    have = set(existing)
    return [f for f in fields if f.name not in have]


def add_columns(
    table: str,
    existing: Iterable[str],
    fields: Sequence[Field],
    declare: Callable[[Field], str],
    literal: Callable[[object], str],
    *,
    if_not_exists: bool = True,
) -> list[str]:
    """The ALTER TABLEs that add to `table` (whose columns are `existing`) the columns of
    `fields` it lacks, in shape order: each `declare(field)` (the database's declaration) with
    DEFAULT `literal(value)`, the value being the field's default, or NULL for an optional field
    without one (what the rows stored before read as). A missing field with neither is a
    ValueError, raised before any statement is made: its column is the operator's to add."""
    missing = missing_columns(existing, fields)
    for f in missing:
        if f.default is MISSING and not f.optional:
            raise ValueError(
                f"the sink table {table} lacks column {f.name}, which has no default: add it "
                f"by hand (ALTER TABLE {table} ADD COLUMN {declare(f)} DEFAULT <the value of the "
                "stored rows>)"
            )
    verb = "ADD COLUMN IF NOT EXISTS" if if_not_exists else "ADD COLUMN"
    return [
        f"ALTER TABLE {table} {verb} {declare(f)} "
        f"DEFAULT {literal(None if f.default is MISSING else f.default)}"
        for f in missing
    ]


def sql_literal(value: object, flags: tuple[str, str] = ("FALSE", "TRUE")) -> str:
    """A default value as a standard SQL literal (SQLite's, PostgreSQL's): NULL, an integer, a
    string (its quotes doubled), bytes (the JSON text of the one bytes field, properties) as
    that text; a bool is `flags[value]` (SQLite passes ("0", "1"), the INTEGER it stores)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return flags[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"a column's default is None, a bool, an int, a str or bytes, not {value!r}")


def session_of(record: Iterable[Any]) -> SessionRow:
    """The row read back from the values of `SESSION_FIELDS`."""
    row = SessionRow(*record)
    row.closed = bool(row.closed)  # SQLite's 0 / 1
    return row


def page_args(
    start: int | None, end: int | None, after: str | None, limit: int
) -> tuple[int, int, str, int]:
    """A `sessions()` query's bounds, none of them NULL: started_at >= the first; (started_at,
    id) < the next two (the end, or the cursor when it is lower), so an index seeks from there;
    how many rows to fetch (one more than the page, to know whether another follows). A
    cursor this module did not make is an `InvalidCursor` (a 400 over HTTP)."""
    if limit < 1:
        raise ValueError(f"limit is at least 1, not {limit!r}")
    first, last = span(start, end)
    below = (last, "")  # started_at < end, as a row: no id is below ""
    if after is not None:
        try:
            ts, sid = orjson.loads(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)))
        except (binascii.Error, ValueError, TypeError):
            raise InvalidCursor(f"not a sessions cursor: {after[:40]!r}") from None
        if type(ts) is not int or not _FIRST <= ts <= _LAST or type(sid) is not str:
            raise InvalidCursor(f"not a sessions cursor: {after[:40]!r}")
        below = min(below, (ts, sid))
    return first, *below, limit + 1


def span(start: int | None, end: int | None) -> tuple[int, int]:
    """[start, end) with no NULL bound."""
    return (_FIRST if start is None else start), (_LAST if end is None else end)


def page_of(records: Sequence[Iterable[Any]], limit: int) -> SessionsPage:
    """The page of the rows fetched with `page_args`."""
    sessions = [session_of(record) for record in records[:limit]]
    if len(records) <= limit:
        return SessionsPage(sessions, None)
    last = sessions[-1]
    cursor = base64.urlsafe_b64encode(orjson.dumps([last.started_at, last.id]))
    return SessionsPage(sessions, cursor.decode().rstrip("="))


def timeline(
    interval: Interval, start: int | None, end: int | None, first: int | None, last: int | None
) -> tuple[int, int, int]:
    """The buckets of `Sink.stats` (see there), given the first and the last `started_at` of
    the sessions in the range (None without any): the first bucket's start, the width and the
    number of buckets. Raises `TooManyBuckets` past `MAX_BUCKETS`."""
    width = INTERVAL_MS.get(interval)
    if width is None:
        raise ValueError(f"interval is one of {', '.join(INTERVAL_MS)}, not {interval!r}")
    spans = []
    if start is not None and end is not None:
        spans.append((start, end - 1))  # high < low: an empty range, no buckets
    if first is not None and last is not None:
        spans.append((first, last))  # the range too wide: the sessions' own span
    count = 0
    for low, high in spans:
        origin = low - low % width  # Python's % floors: the start of low's hour or day
        count = max(0, (high - origin) // width + 1)
        if count <= MAX_BUCKETS:
            return origin, width, count
    if count > MAX_BUCKETS:
        raise TooManyBuckets(count, interval)
    return 0, width, 0


def stats_of(
    totals: Iterable[Any],
    line: tuple[int, int, int],
    buckets: Iterable[Iterable[Any]],
    entry_paths: Iterable[Iterable[Any]],
    exit_paths: Iterable[Iterable[Any]],
) -> Stats:
    """`Stats` of the sessions' totals (count, bounces, summed duration and events; the
    columns after those, the first and last start that `timeline` took, are not read), the
    `timeline`, the (bucket start, sessions, bounces) rows of the buckets that have sessions
    (every other bucket is empty) and the (path, sessions) rows of the top paths."""
    sessions, bounces, total_duration_ms, total_events, *_ = totals
    origin, width, count = line
    found = {start: (n, b) for start, n, b in buckets}
    over_time = [
        Bucket(at, *found.get(at, (0, 0))) for at in range(origin, origin + count * width, width)
    ]
    if not sessions:
        return Stats(0, 0.0, 0.0, 0.0, [], [], over_time)
    return Stats(
        sessions,
        bounces / sessions,
        float(total_duration_ms) / sessions,
        float(total_events) / sessions,
        [(path, n) for path, n in entry_paths],
        [(path, n) for path, n in exit_paths],
        over_time,
    )
