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

`rows_of` turns entries into rows (the same for every sink); `sink_from_url` opens the sink a URL
names: `sqlite:///path.db` (`sessionary.analytics.sqlite_sink`, the default) or
`postgresql://...` (`sessionary.analytics.postgres_sink`). The helpers below `rows_of` are the
parts of the SQL sinks that do not depend on the database.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import orjson

from sessionary.codec import INT64_MAX, INT64_MIN
from sessionary.errors import InvalidCursor
from sessionary.extras import require
from sessionary.sessionize import DUPLICATE, LATE, OutboxEntry, SessionRow


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


@dataclass(frozen=True, slots=True)
class Stats:
    sessions: int
    bounce_rate: float  # bounced sessions / sessions (0.0 when none)
    average_duration_ms: float
    events_per_session: float
    top_entry_paths: list[tuple[str, int]]  # (path, sessions), most first, at most 10


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

    async def stats(self, project_id: str, *, start: int | None, end: int | None) -> Stats:
        """Aggregates over the sessions that started in [start, end)."""
        ...

    async def close(self) -> None: ...


def rows_of(entries: Sequence[OutboxEntry]) -> tuple[list[EventRow], list[SessionRow]]:
    """The event rows of `entries` (their hits but the duplicates, then a `session_start` /
    `session_end` row per session opened / closed) and the latest row of each session."""
    events: list[EventRow] = []
    latest: dict[str, SessionRow] = {}
    for entry in entries:
        rows = {row.id: row for row in entry.sessions}
        for row in entry.sessions:
            held = latest.get(row.id)
            if held is None or row.version > held.version:
                latest[row.id] = row
        for hit, placement in zip(entry.hits, entry.placements, strict=True):
            if placement.status == DUPLICATE:
                continue
            sid = placement.session_id
            session = None if sid is None else rows.get(sid)
            profile = hit.profile_id
            if profile is None and session is not None:
                profile = session.profile_id
            event = EventRow(
                entry.project, hit.event_id, hit.name, hit.ts, hit.received_at, sid,
                placement.device, profile, hit.path, hit.referrer, hit.utm_source,
                hit.utm_medium, hit.utm_campaign, hit.utm_term, hit.utm_content, hit.revenue,
                hit.properties, placement.status == LATE,
            )  # fmt: skip
            events.append(event)
        received = entry.hits[0].received_at if entry.hits else None
        for sid, ts in entry.started:
            events.append(_marker(rows[sid], "start", ts, received, rows[sid].entry_path))
        for sid, ts in entry.ended:
            events.append(_marker(rows[sid], "end", ts, received, rows[sid].exit_path))
    return events, list(latest.values())


def _marker(
    row: SessionRow, what: str, ts: int, received: int | None, path: str | None
) -> EventRow:
    return EventRow(
        row.project_id, f"{row.id}/{what}", f"session_{what}", ts,
        ts if received is None else received, row.id, row.device_id, row.profile_id, path,
        row.referrer, row.utm_source, row.utm_medium, row.utm_campaign, row.utm_term,
        row.utm_content, 0, b"{}", False,
    )  # fmt: skip


async def sink_from_url(url: str) -> Sink:
    """The sink `url` names: `sqlite:///path.db`, or `postgresql://...` / `postgres://...`."""
    if url.startswith("sqlite:///"):
        from sessionary.analytics.sqlite_sink import SqliteSink

        return await SqliteSink.open(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        require("asyncpg", "postgres", "a PostgreSQL analytics sink")
        from sessionary.analytics.postgres_sink import PostgresSink

        return await PostgresSink.connect(url)
    raise ValueError(f"an analytics sink URL is sqlite:///path.db or postgresql://..., not {url!r}")


# -- for the SQL sinks ------------------------------------------------------------------------

EVENT_COLUMNS = tuple(f.name for f in fields(EventRow))
SESSION_FIELDS = tuple(f.name for f in fields(SessionRow))  # what `session_of` reads back
SESSION_COLUMNS = (*SESSION_FIELDS, "duration_ms", "is_bounce")
_FIRST, _LAST = INT64_MIN, INT64_MAX


def event_values(row: EventRow) -> tuple[object, ...]:
    """The values of `EVENT_COLUMNS`, properties as JSON text."""
    return tuple(
        row.properties.decode() if name == "properties" else getattr(row, name)
        for name in EVENT_COLUMNS
    )


def session_values(row: SessionRow) -> tuple[object, ...]:
    """The values of `SESSION_COLUMNS`."""
    return (*(getattr(row, name) for name in SESSION_FIELDS), row.duration_ms, row.is_bounce)


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


def stats_of(
    sessions: int,
    bounces: int,
    total_duration_ms: float,
    total_events: float,
    top: Iterable[Iterable[Any]],
) -> Stats:
    """`Stats` of the counts and sums over the sessions, and the (path, sessions) rows."""
    if not sessions:
        return Stats(0, 0.0, 0.0, 0.0, [])
    return Stats(
        sessions,
        bounces / sessions,
        float(total_duration_ms) / sessions,
        float(total_events) / sessions,
        [(path, count) for path, count in top],
    )
