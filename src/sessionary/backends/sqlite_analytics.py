"""The analytics storage contract (`sessionary.sessionize`) on SQLite: tables, state encoding,
and one function per contract method, each run by the writer thread on its connection.

Each function is one atomic step: it runs inside the writer's `BEGIN IMMEDIATE` transaction
(so it holds the write lock while it reads, decides and writes, and several processes on one
file take turns), and inside a savepoint of its own, so a job that fails half-way leaves
nothing behind even when it shares its group commit with other jobs. A step loads the state
the batch can touch, runs the rules (`Sessionizing`) over dicts, and writes back what they
changed.

Tables, all keyed by project:

* `sz_devices`: a device's state (`DeviceState`, encoded), with its open session's id and
  last event time as columns (NULL when none) for the reaper (`ORDER BY last, device`), the
  open-session count and the orphan-pointer check, and `touched_at` for vacuum;
* `sz_pointers`: a profile's most recent open session;
* `sz_seen`: client-chosen event ids seen lately, for duplicates;
* `sz_meta`: the project's watermark (and that the project exists);
* `sz_outbox`: the entries waiting for the sink; the entry id is the row's integer id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import orjson

from sessionary.sessionize import (
    OPEN_SESSION_SHAPE,
    SESSION_ROW_SHAPE,
    DeviceState,
    Hit,
    IngestOutcome,
    OpenSession,
    OutboxEntry,
    Placement,
    Pointer,
    Rules,
    Sessionizing,
    SessionRow,
    VacuumReport,
    getter,
    hit_values,
    hits_of,
)

T = TypeVar("T")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sz_devices (
        project    TEXT    NOT NULL,
        device     TEXT    NOT NULL,
        state      BLOB    NOT NULL,
        sid        TEXT,
        last       INTEGER,
        touched_at INTEGER NOT NULL,
        PRIMARY KEY (project, device)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS sz_devices_by_last
        ON sz_devices (project, last, device) WHERE last IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS sz_devices_by_touch
        ON sz_devices (project, touched_at) WHERE last IS NULL""",
    """CREATE TABLE IF NOT EXISTS sz_pointers (
        project    TEXT    NOT NULL,
        profile    TEXT    NOT NULL,
        device     TEXT    NOT NULL,
        session_id TEXT    NOT NULL,
        ts         INTEGER NOT NULL,
        PRIMARY KEY (project, profile)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS sz_seen (
        project  TEXT    NOT NULL,
        event_id TEXT    NOT NULL,
        seen_at  INTEGER NOT NULL,
        PRIMARY KEY (project, event_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS sz_seen_by_age ON sz_seen (project, seen_at)",
    """CREATE TABLE IF NOT EXISTS sz_meta (
        project   TEXT PRIMARY KEY,
        watermark INTEGER
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS sz_outbox (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT    NOT NULL,
        entry   BLOB    NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sz_outbox_by_project ON sz_outbox (project, id)",
)

# Bulk loads bind a fixed number of keys (the last chunk padded with repeats of its first),
# so each is one cached statement whatever the batch size.
_CHUNK = 256
_KEYS = ", ".join(["?"] * _CHUNK)
_LOAD_DEVICES = f"SELECT device, state FROM sz_devices WHERE project = ? AND device IN ({_KEYS})"  # noqa: S608
_LOAD_POINTERS = (
    "SELECT profile, device, session_id, ts FROM sz_pointers "  # noqa: S608
    f"WHERE project = ? AND profile IN ({_KEYS})"
)
_LOAD_SEEN = f"SELECT event_id, seen_at FROM sz_seen WHERE project = ? AND event_id IN ({_KEYS})"  # noqa: S608
_PUT_DEVICE = (
    "INSERT INTO sz_devices (project, device, state, sid, last, touched_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project, device) DO UPDATE SET "
    "state = excluded.state, sid = excluded.sid, last = excluded.last, "
    "touched_at = excluded.touched_at"
)
_PUT_POINTER = (
    "INSERT INTO sz_pointers (project, profile, device, session_id, ts) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (project, profile) DO UPDATE SET device = excluded.device, "
    "session_id = excluded.session_id, ts = excluded.ts"
)
_DROP_POINTER = "DELETE FROM sz_pointers WHERE project = ? AND profile = ?"
_PUT_SEEN = (
    "INSERT INTO sz_seen (project, event_id, seen_at) VALUES (?, ?, ?) "
    "ON CONFLICT (project, event_id) DO UPDATE SET seen_at = excluded.seen_at"
)
_WATERMARK = "SELECT watermark FROM sz_meta WHERE project = ?"
_PUT_META = (
    "INSERT INTO sz_meta (project, watermark) VALUES (?, ?) "
    "ON CONFLICT (project) DO UPDATE SET watermark = excluded.watermark"
)
_PUT_ENTRY = "INSERT INTO sz_outbox (project, entry) VALUES (?, ?)"
_IDLE = "SELECT device FROM sz_devices WHERE project = ? AND last < ? ORDER BY last, device LIMIT ?"
_STALE = (
    "DELETE FROM sz_devices WHERE project = ?1 AND device IN (SELECT device FROM sz_devices "
    "WHERE project = ?1 AND last IS NULL AND touched_at < ?2 LIMIT ?3)"
)
_ORPHANS = (
    "DELETE FROM sz_pointers WHERE project = ?1 AND profile IN (SELECT p.profile "
    "FROM sz_pointers p LEFT JOIN sz_devices d ON d.project = p.project AND d.device = p.device "
    "WHERE p.project = ?1 AND (d.sid IS NULL OR d.sid != p.session_id) LIMIT ?2)"
)
_FORGET = (
    "DELETE FROM sz_seen WHERE project = ?1 AND event_id IN (SELECT event_id FROM sz_seen "
    "WHERE project = ?1 AND seen_at <= ?2 LIMIT ?3)"
)
_OUTBOX = "SELECT id, entry FROM sz_outbox WHERE project = ? ORDER BY id LIMIT ?"
_ACK = "DELETE FROM sz_outbox WHERE project = ? AND id = ?"
_PROJECTS = "SELECT project FROM sz_meta ORDER BY project"
_OPEN = "SELECT count(*) FROM sz_devices WHERE project = ? AND last IS NOT NULL"
_IDLE_COUNT = "SELECT count(*) FROM sz_devices WHERE project = ? AND last < ?"


# -- the steps ------------------------------------------------------------------------------


def sessionize(
    db: sqlite3.Connection, project: str, rules: Rules, hits: Sequence[Hit], now: int, nonce: str
) -> IngestOutcome:
    def run() -> IngestOutcome:
        watermark = _watermark(db, project)
        devices = _load_devices(db, project, {d for hit in hits for d in hit.devices})
        pointers = _load_pointers(
            db,
            project,
            {hit.profile_id for hit in hits if hit.profile_id is not None}
            | _profiles(devices.values()),
        )
        # the devices the hits' profiles point to (a profile-only hit joins there)...
        named = {p.device for p in pointers.values() if p is not None and p.device not in devices}
        if named:
            more = _load_devices(db, project, named)
            devices.update(more)
            # ... and the pointers of their sessions' profiles
            missing = _profiles(more.values()) - pointers.keys()
            pointers.update(_load_pointers(db, project, missing))
        seen = _load_seen(db, project, {hit.event_id for hit in hits if hit.dedup})
        step = Sessionizing(project, rules, now, devices, pointers, seen, watermark)
        _, outcome, entry = step.ingest(hits, nonce)
        _write(db, step, entry)
        db.execute(_PUT_META, (project, step.watermark))
        if step.new_seen:
            db.executemany(_PUT_SEEN, [(project, event_id, now) for event_id in step.new_seen])
        return outcome

    return _atomic(db, run)


def close_idle(db: sqlite3.Connection, project: str, rules: Rules, now: int, limit: int) -> int:
    def run() -> int:
        cutoff = rules.idle_cutoff(_watermark(db, project), now)
        idle = [row[0] for row in db.execute(_IDLE, (project, cutoff, limit))]
        return _close(db, project, rules, now, idle, cutoff)

    return _atomic(db, run)


def vacuum(
    db: sqlite3.Connection, project: str, rules: Rules, now: int, older_than_ms: int, limit: int
) -> VacuumReport:
    def run() -> VacuumReport:
        report = VacuumReport()
        cutoff = now - older_than_ms
        stuck = [row[0] for row in db.execute(_IDLE, (project, cutoff, limit))]
        report.closed = _close(db, project, rules, now, stuck, cutoff)
        report.states = db.execute(_STALE, (project, cutoff, limit)).rowcount
        report.pointers = db.execute(_ORPHANS, (project, limit)).rowcount
        report.dedup = db.execute(_FORGET, (project, now - rules.dedup_ms, limit)).rowcount
        return report

    return _atomic(db, run)


def outbox(db: sqlite3.Connection, project: str, limit: int) -> list[OutboxEntry]:
    return [
        _decode_entry(str(row[0]), project, row[1]) for row in db.execute(_OUTBOX, (project, limit))
    ]


def ack(db: sqlite3.Connection, project: str, entry_ids: Sequence[str]) -> None:
    ids = []
    for entry_id in entry_ids:
        try:
            ids.append((project, int(entry_id)))
        except ValueError:
            continue  # names no entry of this store
    db.executemany(_ACK, ids)


def projects(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute(_PROJECTS)]


def open_sessions(db: sqlite3.Connection, project: str) -> int:
    return int(db.execute(_OPEN, (project,)).fetchone()[0])


def idle_sessions(db: sqlite3.Connection, project: str, cutoff: int) -> int:
    return int(db.execute(_IDLE_COUNT, (project, cutoff)).fetchone()[0])


def watermark(db: sqlite3.Connection, project: str) -> int | None:
    return _watermark(db, project)


# -- inside a step --------------------------------------------------------------------------


def _atomic(db: sqlite3.Connection, run: Callable[[], T]) -> T:
    """Run `run` in a savepoint: all of its writes, or (when it raises) none of them."""
    db.execute("SAVEPOINT sz_step")
    try:
        result = run()
    except BaseException as exc:
        if db.in_transaction:  # SQLite rolls back on its own after some errors (disk full)
            try:
                db.execute("ROLLBACK TO sz_step")
                db.execute("RELEASE sz_step")
            except sqlite3.Error:
                if not isinstance(exc, sqlite3.Error):
                    raise  # the batch's transaction fails as a whole
        raise
    db.execute("RELEASE sz_step")
    return result


def _watermark(db: sqlite3.Connection, project: str) -> int | None:
    row = db.execute(_WATERMARK, (project,)).fetchone()
    return None if row is None else row[0]


def _chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    pending = list(keys)
    for i in range(0, len(pending), _CHUNK):
        chunk = pending[i : i + _CHUNK]
        yield chunk + [chunk[0]] * (_CHUNK - len(chunk))


def _load_devices(
    db: sqlite3.Connection, project: str, devices: Iterable[str]
) -> dict[str, DeviceState | None]:
    found: dict[str, DeviceState | None] = {}
    for chunk in _chunks(devices):
        for device, state in db.execute(_LOAD_DEVICES, (project, *chunk)):
            found[device] = _decode_state(state)
    return found


def _load_pointers(
    db: sqlite3.Connection, project: str, profiles: Iterable[str]
) -> dict[str, Pointer | None]:
    found: dict[str, Pointer | None] = {}
    for chunk in _chunks(profiles):
        for profile, device, session_id, ts in db.execute(_LOAD_POINTERS, (project, *chunk)):
            found[profile] = Pointer(device, session_id, ts)
    return found


def _load_seen(db: sqlite3.Connection, project: str, event_ids: Iterable[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(event_ids):
        found.update(db.execute(_LOAD_SEEN, (project, *chunk)))
    return found


def _profiles(states: Iterable[DeviceState | None]) -> set[str]:
    return {
        s.session.profile_id
        for s in states
        if s is not None and s.session is not None and s.session.profile_id is not None
    }


def _close(
    db: sqlite3.Connection, project: str, rules: Rules, now: int, devices: list[str], cutoff: int
) -> int:
    """Close the open sessions of `devices` (each re-checked against `cutoff`), in order."""
    if not devices:
        return 0
    states = _load_devices(db, project, devices)
    pointers = _load_pointers(db, project, _profiles(states.values()))
    step = Sessionizing(project, rules, now, states, pointers, {}, None)
    closed = sum(step.close_if_idle(device, cutoff) for device in devices)
    _write(db, step, step.entry("", [], []))
    return closed


def _write(db: sqlite3.Connection, step: Sessionizing, entry: OutboxEntry) -> None:
    """Write back what the rules changed, and the outbox entry if there is anything in it."""
    project = step.project
    rows = []
    for device in step.dirty_devices:
        state = step.devices[device]
        assert state is not None
        session = state.session
        rows.append(
            (
                project,
                device,
                _encode_state(state),
                None if session is None else session.id,
                None if session is None else session.last,
                state.touched_at,
            )
        )
    db.executemany(_PUT_DEVICE, rows)
    put, drop = [], []
    for profile in step.dirty_pointers:
        pointer = step.pointers.get(profile)
        if pointer is None:
            drop.append((project, profile))
        else:
            put.append((project, profile, pointer.device, pointer.session_id, pointer.ts))
    if drop:
        db.executemany(_DROP_POINTER, drop)
    if put:
        db.executemany(_PUT_POINTER, put)
    if entry.placements or entry.started or entry.ended:
        db.execute(_PUT_ENTRY, (project, _encode_entry(entry)))


# -- encodings ------------------------------------------------------------------------------
# A device state is [newest, touched_at, closed_last, session], a session the values of
# `OPEN_SESSION_SHAPE` (null when none); an outbox entry is [hits, placements, rows, started,
# ended], each hit the values of `HIT_SHAPE` (`hit_values`), each placement [status, session
# id, device], each row the values of `SESSION_ROW_SHAPE`. Values are by position, so what an
# older version saved reads back as long as fields are only added at the end, with defaults
# (`sessionary.sessionize.shape`).

_session_values = getter(OPEN_SESSION_SHAPE)
_row_values = getter(SESSION_ROW_SHAPE)


def _encode_state(state: DeviceState) -> bytes:
    s = state.session
    session = None if s is None else _session_values(s)
    return orjson.dumps([state.newest, state.touched_at, state.closed_last, session])


def _decode_state(data: bytes) -> DeviceState:
    newest, touched_at, closed_last, session = orjson.loads(data)
    return DeviceState(
        newest, touched_at, None if session is None else OpenSession(*session), closed_last
    )


def _encode_entry(entry: OutboxEntry) -> bytes:
    hits = [hit_values(h) for h in entry.hits]
    rows = [_row_values(r) for r in entry.sessions]
    placements = [list(p) for p in entry.placements]  # orjson writes no NamedTuple
    return orjson.dumps([hits, placements, rows, entry.started, entry.ended])


def _decode_entry(entry_id: str, project: str, data: bytes) -> OutboxEntry:
    hits, placements, rows, started, ended = orjson.loads(data)
    return OutboxEntry(
        entry_id,
        project,
        hits_of(hits),
        [Placement(*p) for p in placements],
        [SessionRow(*r) for r in rows],
        [(sid, ts) for sid, ts in started],
        [(sid, ts) for sid, ts in ended],
    )
