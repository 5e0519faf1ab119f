"""`sqlite:///path.db`: the embedded default. One file, WAL, survives restarts.

All statements run on one connection owned by one thread, off the event loop. Operations
queue up for that thread, which runs everything waiting in one transaction (group commit)
and hands the results back to the loop in one wake-up, so a burst of requests shares one
commit; the loop then resumes the waiting tasks in groups (`sessionary.backends.handoff`),
so that other work (a new request) takes turns with them. But while the store is idle, a small
operation runs on the loop's own thread at once, on the same connection, when that waits for
nothing (no other process's lock, no sync): the hand-off there and back costs several times
the statement (`SQLiteBackend._call`). A session operation is a single SQL
statement that decides for itself (`UPDATE ... WHERE guard RETURNING`); a counter charge reads,
decides and writes, which is atomic because a writing transaction is `BEGIN IMMEDIATE`: it
holds the write lock from its first statement, and several processes on one file take turns
instead of deadlocking. A work queue's claim picks its items and marks them held in that same
writing transaction, so racing processes never hand out one item twice.

URL: `sqlite:///relative.db`, `sqlite:////absolute/path.db` or `sqlite:///:memory:`, with
optional query parameters `synchronous` (OFF, NORMAL (default), FULL, EXTRA) and
`busy_timeout_ms` (how long to wait for another process's write lock, default 5000).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson

from sessionary.backends import sqlite_analytics as analytics
from sessionary.backends.handoff import TURN_S, Outcome, settle
from sessionary.backends.signals import LogSignals, QueueKey
from sessionary.contract import (
    KEEP,
    NO_LIMITS,
    WAIT_MAX_BYTES,
    WAIT_MAX_ENTRIES,
    CheckPage,
    CounterCharge,
    CounterState,
    Lifetime,
    LifetimeChange,
    LogEntry,
    LogItem,
    LogLimits,
    LogSlice,
    Record,
    SessionLimit,
    SubjectChange,
    WorkItem,
    plan_admission,
    plan_append,
    plan_charges,
    within_bytes,
)
from sessionary.errors import (
    BadStoreURL,
    LogClosed,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
    sqlite_unavailable,
)
from sessionary.sessionize import Hit, IngestOutcome, OutboxEntry, Rules, VacuumReport

T = TypeVar("T")

#: 2 added a session's own lifetime (own_idle_ms, own_absolute_ms); see `_migrate`. A new
#: table (`work`, the analytics ones) needs no new version: `_SCHEMA` creates it in any file
#: as it opens, and an older sessionary leaves it alone.
SCHEMA_VERSION = 2
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sessions (
        namespace    TEXT    NOT NULL,
        id           TEXT    NOT NULL,
        subject      TEXT,
        created_at   INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        version      INTEGER NOT NULL,
        data         BLOB    NOT NULL,
        metadata     BLOB    NOT NULL,
        counters     TEXT    NOT NULL DEFAULT '{}',
        log_last     INTEGER NOT NULL DEFAULT 0,
        log_closed   INTEGER NOT NULL DEFAULT 0,
        producers    TEXT    NOT NULL DEFAULT '{}',
        own_idle_ms     INTEGER,
        own_absolute_ms INTEGER,
        UNIQUE (namespace, id)
    )""",
    """CREATE INDEX IF NOT EXISTS sessions_by_subject
        ON sessions (namespace, subject, expires_at) WHERE subject IS NOT NULL""",
    "CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (namespace, expires_at)",
    """CREATE TABLE IF NOT EXISTS counters (
        grp       TEXT    NOT NULL,
        key       TEXT    NOT NULL,
        value     INTEGER NOT NULL,
        resets_at INTEGER NOT NULL,
        algorithm TEXT    NOT NULL DEFAULT 'fixed',
        previous  INTEGER NOT NULL DEFAULT 0,
        window_ms INTEGER NOT NULL DEFAULT 0,
        lim       INTEGER,
        PRIMARY KEY (grp, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS counters_by_reset ON counters (grp, resets_at)",
    """CREATE TABLE IF NOT EXISTS log_entries (
        namespace  TEXT    NOT NULL,
        session_id TEXT    NOT NULL,
        seq        INTEGER NOT NULL,
        ts         INTEGER NOT NULL,
        type       TEXT    NOT NULL,
        data       BLOB    NOT NULL,
        final      INTEGER NOT NULL,
        PRIMARY KEY (namespace, session_id, seq)
    ) WITHOUT ROWID""",
    # a session's log goes wherever the session goes: away with it, or to its new id
    """CREATE TRIGGER IF NOT EXISTS sessions_drop_log AFTER DELETE ON sessions BEGIN
        DELETE FROM log_entries WHERE namespace = old.namespace AND session_id = old.id;
    END""",
    """CREATE TRIGGER IF NOT EXISTS sessions_move_log AFTER UPDATE OF id ON sessions BEGIN
        UPDATE log_entries SET session_id = new.id
        WHERE namespace = old.namespace AND session_id = old.id;
    END""",
    # work queues' items: `seq` (the rowid) is enqueue order; `lease_until` is NULL while an
    # item waits (never claimed), else when its holder's lease lapses (the store's clock)
    """CREATE TABLE IF NOT EXISTS work (
        seq         INTEGER PRIMARY KEY,
        queue       TEXT    NOT NULL,
        id          TEXT    NOT NULL,
        payload     BLOB    NOT NULL,
        enqueued_at INTEGER NOT NULL,
        deliveries  INTEGER NOT NULL DEFAULT 0,
        holder      TEXT,
        lease_until INTEGER,
        UNIQUE (queue, id)
    )""",
    "CREATE INDEX IF NOT EXISTS work_by_lease ON work (queue, lease_until, seq)",
    *analytics.SCHEMA,
)

#: the columns a schema-1 file lacks, added by `_migrate` (NULL in both: the namespace's policy)
_OWN_LIFETIME_COLUMNS = ("own_idle_ms", "own_absolute_ms")
_COUNTER_ALGORITHM_COLUMNS = {
    "algorithm": "TEXT NOT NULL DEFAULT 'fixed'",
    "previous": "INTEGER NOT NULL DEFAULT 0",
    "window_ms": "INTEGER NOT NULL DEFAULT 0",  # a counter's rate (0 / NULL: unknown)
    "lim": "INTEGER",
}
_COLUMNS = (
    "id, subject, created_at, last_seen_at, expires_at, version, data, metadata, counters, "
    "own_idle_ms, own_absolute_ms"
)
_FOREVER = 9223372036854775807
_HAS_OWN = "(own_idle_ms IS NOT NULL OR own_absolute_ms IS NOT NULL)"


def _deadline(keeps_own: str) -> str:
    """expires_at for touch/update/rotate: ?1 = now, ?2/?3 = idle/absolute ms or NULL (the
    namespace's policy, or the session's new own lifetime). While `keeps_own` (an SQL
    boolean) holds, a session's stored own lifetime wins over ?2/?3."""
    idle = f"CASE WHEN {keeps_own} AND {_HAS_OWN} THEN own_idle_ms ELSE ?2 END"
    absolute = f"CASE WHEN {keeps_own} AND {_HAS_OWN} THEN own_absolute_ms ELSE ?3 END"
    return f"min(coalesce(?1 + {idle}, {_FOREVER}), coalesce(created_at + {absolute}, {_FOREVER}))"


def _own_update(flag: str, idle: str, absolute: str) -> str:
    """The SET of a session's own lifetime in update/rotate: while `flag` holds it stays,
    else it becomes `idle`/`absolute` (both NULL: none, the namespace's policy again)."""
    return (
        f"own_idle_ms = CASE WHEN {flag} THEN own_idle_ms ELSE {idle} END, "
        f"own_absolute_ms = CASE WHEN {flag} THEN own_absolute_ms ELSE {absolute} END"
    )


_INSERT = (
    "INSERT INTO sessions (namespace, id, subject, created_at, last_seen_at, expires_at, "
    "version, data, metadata, own_idle_ms, own_absolute_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_GET = f"SELECT {_COLUMNS} FROM sessions WHERE namespace = ? AND id = ? AND expires_at > ?"
_TOUCH = (
    f"UPDATE sessions SET last_seen_at = ?1, expires_at = {_deadline('1')} "
    f"WHERE namespace = ?4 AND id = ?5 AND expires_at > ?1 RETURNING {_COLUMNS}"
)
_UPDATE = (
    "UPDATE sessions SET data = coalesce(?6, data), metadata = coalesce(?7, metadata), "
    "subject = CASE WHEN ?8 THEN ?9 ELSE subject END, version = version + 1, "
    "last_seen_at = CASE WHEN ?15 THEN ?1 ELSE last_seen_at END, "
    f"expires_at = CASE WHEN ?15 THEN min({_deadline('?12')}, coalesce(?11, {_FOREVER})) "
    "ELSE expires_at END, "
    f"{_own_update('?12', '?13', '?14')} "
    "WHERE namespace = ?4 AND id = ?5 AND expires_at > ?1 AND (?10 IS NULL OR version = ?10) "
    f"RETURNING {_COLUMNS}"
)
_VERSION = "SELECT version FROM sessions WHERE namespace = ? AND id = ? AND expires_at > ?"
_LOG_STATE = (
    "SELECT log_last, log_closed, producers FROM sessions "
    "WHERE namespace = ? AND id = ? AND expires_at > ?"
)
_LOG_SAVE = (
    "UPDATE sessions SET log_last = ?, log_closed = ?, producers = ? WHERE namespace = ? AND id = ?"
)
_LOG_INSERT = "INSERT INTO log_entries VALUES (?, ?, ?, ?, ?, ?, ?)"
_LOG_TRIM_LENGTH = "DELETE FROM log_entries WHERE namespace = ? AND session_id = ? AND seq <= ?"
_LOG_TRIM_AGE = (
    "DELETE FROM log_entries WHERE namespace = ? AND session_id = ? AND ts < ? AND seq < ?"
)
_LOG_READ = (
    "SELECT seq, ts, type, data, final FROM log_entries "
    "WHERE namespace = ? AND session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_LOG_HEAD = (
    "SELECT log_last, log_closed, (SELECT ts FROM log_entries e WHERE e.namespace = s.namespace "
    "AND e.session_id = s.id AND e.seq = s.log_last) "
    "FROM sessions s WHERE namespace = ? AND id = ? AND expires_at > ?"
)
# ?1 ns, ?2 id, ?3 now, ?4 JSON path of the counter, ?5 amount, ?6 limit or NULL
_CHARGE = (
    "UPDATE sessions SET counters = json_set(counters, ?4, "
    "max(0, coalesce(counters ->> ?4, 0) + ?5)) "
    "WHERE namespace = ?1 AND id = ?2 AND expires_at > ?3 "
    "AND (?5 < 0 OR ?6 IS NULL OR coalesce(counters ->> ?4, 0) + ?5 <= ?6) "
    "RETURNING counters ->> ?4"
)
_COUNTER = (
    "SELECT coalesce(counters ->> ?4, 0) FROM sessions "
    "WHERE namespace = ?1 AND id = ?2 AND expires_at > ?3"
)
_ROTATE = (
    "UPDATE sessions SET id = ?6, version = version + 1, last_seen_at = ?1, "
    f"expires_at = {_deadline('?9')}, subject = CASE WHEN ?7 THEN ?8 ELSE subject END, "
    f"{_own_update('?9', '?10', '?11')}, "
    "data = coalesce(?12, data), metadata = coalesce(?13, metadata) "
    "WHERE namespace = ?4 AND id = ?5 AND expires_at > ?1 AND (?14 IS NULL OR version = ?14) "
    f"RETURNING {_COLUMNS}"
)
_TAKEN = "SELECT 1 FROM sessions WHERE namespace = ? AND id = ?"
_STANDING = (
    "SELECT version, subject FROM sessions WHERE namespace = ? AND id = ? AND expires_at > ?"
)
_OTHERS_OF_SUBJECT = (
    f"SELECT {_COLUMNS} FROM sessions WHERE namespace = ? AND subject = ? AND id != ? "
    "AND expires_at > ?"
)
_EVICT = (
    "DELETE FROM sessions WHERE namespace = ? AND id IN (SELECT value FROM json_each(?)) "
    f"RETURNING {_COLUMNS}"
)
_SCAN = "SELECT id FROM sessions WHERE namespace = ? AND id > ? ORDER BY id LIMIT ?"
_DELETE = f"DELETE FROM sessions WHERE namespace = ? AND id = ? RETURNING {_COLUMNS}"
_LIST_SUBJECT = (
    f"SELECT {_COLUMNS} FROM sessions WHERE namespace = ? AND subject = ? AND expires_at > ?"
)
_REVOKE_SUBJECT = (
    "DELETE FROM sessions WHERE namespace = ? AND subject = ? "
    f"AND id NOT IN (SELECT value FROM json_each(?)) RETURNING {_COLUMNS}"
)
_DUE = (
    "SELECT id FROM sessions WHERE namespace = ? AND expires_at <= ? "
    "ORDER BY expires_at, id LIMIT ?"
)
_CLAIM = (
    "DELETE FROM sessions WHERE namespace = ? AND expires_at <= ? "
    f"AND id IN (SELECT value FROM json_each(?)) RETURNING {_COLUMNS}"
)
_COUNT = "SELECT count(*) FROM sessions WHERE namespace = ? AND expires_at > ?"
_COUNTER_COLUMNS = "key, value, resets_at, algorithm, previous, window_ms, lim"
_READ_COUNTERS = (
    f"SELECT {_COUNTER_COLUMNS} FROM counters "
    "WHERE grp = ? AND key IN (SELECT value FROM json_each(?))"
)
_PUT_COUNTER = (
    "INSERT INTO counters (grp, key, value, resets_at, algorithm, previous, window_ms, lim) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (grp, key) DO UPDATE SET "
    "value = excluded.value, resets_at = excluded.resets_at, algorithm = excluded.algorithm, "
    "previous = excluded.previous, window_ms = excluded.window_ms, lim = excluded.lim"
)
# ?1 group, ?2 now, ?3 the last key listed ('' to start), ?4 how many: the primary key's order
_SCAN_COUNTERS = (
    f"SELECT {_COUNTER_COLUMNS} FROM counters "
    "WHERE grp = ?1 AND key > ?3 AND resets_at > ?2 ORDER BY key LIMIT ?4"
)
_SWEEP_COUNTERS = (
    "DELETE FROM counters WHERE grp = ?1 AND key IN "
    "(SELECT key FROM counters WHERE grp = ?1 AND resets_at <= ?2 LIMIT ?3)"
)

_WORK_ENQUEUE = (
    "INSERT INTO work (queue, id, payload, enqueued_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# ?1 queue, ?2 now, ?3 limit: lapsed items (soonest lapsed first), then waiting ones in order
_WORK_CLAIMABLE = (
    "SELECT seq FROM ("
    "SELECT seq, 0 AS pass, lease_until AS k FROM (SELECT seq, lease_until FROM work "
    "WHERE queue = ?1 AND lease_until <= ?2 ORDER BY lease_until, seq LIMIT ?3) "
    "UNION ALL SELECT seq, 1, seq FROM (SELECT seq FROM work "
    "WHERE queue = ?1 AND lease_until IS NULL ORDER BY seq LIMIT ?3)"
    ") ORDER BY pass, k, seq LIMIT ?3"
)
_WORK_HOLD = (
    "UPDATE work SET holder = ?, lease_until = ?, deliveries = deliveries + 1 "
    "WHERE seq IN (SELECT value FROM json_each(?)) "
    "RETURNING seq, id, payload, deliveries, enqueued_at, lease_until"
)
_WORK_RENEW = "UPDATE work SET lease_until = ? WHERE queue = ? AND id = ? AND holder = ?"
_WORK_ACK = "DELETE FROM work WHERE queue = ? AND id = ? AND holder = ?"
_WORK_DEPTH = (
    "SELECT coalesce(sum(lease_until IS NULL OR lease_until <= ?2), 0), "
    "coalesce(sum(lease_until > ?2), 0) FROM work WHERE queue = ?1"
)

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}
#: the levels at which a commit does not wait for the disk (WAL: NORMAL syncs at checkpoints
#: only), so that the event loop's thread may commit a small operation itself (`_call`)
_COMMITS_WITHOUT_SYNC = {"OFF", "NORMAL"}
_MAX_BATCH = 512
#: WAL pages between two checkpoints (SQLite's automatic checkpoint would go by the same
#: count; it is off: see `_Writer._checkpoint`)
_CHECKPOINT_PAGES = 1000
#: how long one turn of the event loop may spend running jobs on its own thread (`_call`):
#: as long as a turn that hands out a batch's results may (each turn costs a poll of the
#: loop's selector, which on a busy machine is where the OS runs other processes)
_LANE_S = TURN_S
#: how often, while anyone follows a log or waits on a queue, the backend asks whether
#: another process wrote
_OTHERS_POLL_S = 0.05


def _data_version(db: sqlite3.Connection) -> int:
    """Changes whenever another connection (of this process or another) commits to the file;
    never for this connection's own commits."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def _log_state(
    db: sqlite3.Connection, ns: str, session_id: str, now: int
) -> tuple[int, bool, dict[str, int]] | None:
    row = db.execute(_LOG_STATE, (ns, session_id, now)).fetchone()
    if row is None:
        return None
    return row[0], bool(row[1]), {} if row[2] == "{}" else orjson.loads(row[2])


def _log_append(
    db: sqlite3.Connection,
    ns: str,
    session_id: str,
    now: int,
    items: Sequence[LogItem],
    limits: LogLimits,
    log: tuple[int, bool, dict[str, int]],
) -> list[int | None]:
    """Inside a writing transaction: append, remember producers, trim."""
    plan = plan_append(items, log[0], log[2], now)
    db.executemany(
        _LOG_INSERT,
        [(ns, session_id, e.seq, e.ts, e.type, e.data, int(e.final)) for e in plan.entries],
    )
    db.execute(
        _LOG_SAVE,
        (
            plan.last,
            int(log[1] or plan.closed),
            orjson.dumps(plan.producers).decode(),
            ns,
            session_id,
        ),
    )
    if limits.max_length is not None:
        db.execute(_LOG_TRIM_LENGTH, (ns, session_id, plan.last - limits.max_length))
    if limits.max_age_ms is not None:
        db.execute(_LOG_TRIM_AGE, (ns, session_id, now - limits.max_age_ms, plan.last))
    return plan.seqs


def _blob(value: bytes | str) -> bytes:
    """A payload column as bytes: sessionary writes bytes, but a row written as text (by a
    hand-made migration, say; the column's BLOB affinity keeps text as text) is read too."""
    return value if isinstance(value, bytes) else value.encode()


def _record(row: tuple[Any, ...]) -> Record:
    counters = row[8]
    return Record(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        _blob(row[6]),
        _blob(row[7]),
        {} if counters == "{}" else orjson.loads(counters),
        None if row[9] is None and row[10] is None else Lifetime(row[9], row[10]),
    )


def _ttls(lifetime: Lifetime | None) -> tuple[int | None, int | None]:
    return (None, None) if lifetime is None else (lifetime.idle_ms, lifetime.absolute_ms)


def _lifetime_args(
    policy: Lifetime, own: LifetimeChange
) -> tuple[tuple[int | None, int | None], tuple[bool, int | None, int | None]]:
    """(?2, ?3) and (?F, ?I, ?A) of `_deadline`/`_own_update`: with KEEP the stored own
    lifetime stays and wins over the policy; else the new own one (None: the policy) rules."""
    if own is KEEP:
        return _ttls(policy), (True, None, None)
    return _ttls(own or policy), (False, *_ttls(own))


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file of an older schema up to this one, inside the opening transaction: a
    schema-1 file gains the own-lifetime columns (NULL: its sessions keep living by their
    namespace's policy), and a file from before sliding and gcra counters gains their
    columns (its counters stay fixed windows), and one from before counters kept their rate
    gains `window_ms` and `lim` (0 and NULL: unknown until the counter's next charge)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
    for column in _OWN_LIFETIME_COLUMNS:
        if column not in present:
            db.execute(f"ALTER TABLE sessions ADD COLUMN {column} INTEGER")
    present = {row[1] for row in db.execute("PRAGMA table_info(counters)")}
    for column, declaration in _COUNTER_ALGORITHM_COLUMNS.items():
        if column not in present:
            db.execute(f"ALTER TABLE counters ADD COLUMN {column} {declaration}")


def _counter_row(
    group: str, state: CounterState
) -> tuple[str, str, int, int, str, int, int, int | None]:
    return (
        group,
        state.key,
        state.value,
        state.resets_at,
        state.algorithm,
        state.previous,
        state.window_ms,
        state.limit,
    )


def _subject_args(subject: SubjectChange) -> tuple[bool, str | None]:
    return (False, None) if subject is KEEP else (True, subject)


def _admit(
    db: sqlite3.Connection,
    ns: str,
    session_id: str,
    subject: SubjectChange,
    limit: SessionLimit | None,
    now: int,
    expected_version: int | None = None,
    *,
    new: bool = False,
) -> list[Record]:
    """Inside a writing transaction, before anything is written: make room for
    `session_id` (stored and live, at `expected_version` when given, unless it is `new`)
    gaining `subject` under `limit`; the evicted sessions, removed. Raises what the write
    would (`SessionNotFound`, `VersionConflict`, `TooManySessions`) so that a refusal
    leaves nothing half done."""
    if limit is None or subject is KEEP or subject is None:
        return []
    standing = db.execute(_STANDING, (ns, session_id, now)).fetchone()
    if standing is None and not new:
        raise SessionNotFound(session_id)
    if standing is not None:
        if expected_version is not None and standing[0] != expected_version:
            raise VersionConflict(session_id, expected_version, standing[0])
        if standing[1] == subject:
            return []  # not gaining it: it has it
    others = [
        _record(row) for row in db.execute(_OTHERS_OF_SUBJECT, (ns, subject, session_id, now))
    ]
    evicted = plan_admission(limit, subject, others, now)
    if not evicted:
        return []
    wanted = orjson.dumps([record.id for record in evicted]).decode()
    return [_record(row) for row in db.execute(_EVICT, (ns, wanted))]


class _Job(NamedTuple):
    run: Callable[[sqlite3.Connection], Any]
    writes: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock this statement needs (SQLITE_BUSY, any variant)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


class _Writer(threading.Thread):
    """The thread that owns the connection and runs queued jobs in group commits. The event
    loop's thread may borrow the connection for one small operation while nothing is queued
    (`attempt`); `lock` is held by whichever thread runs statements on it."""

    def __init__(self, path: str, synchronous: str, busy_timeout_ms: int) -> None:
        super().__init__(name=f"sessionary-sqlite:{path}", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.started_ok = threading.Event()
        self.startup_error: BaseException | None = None
        self.lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None  # while open, under `lock`
        self._on_loop = False  # the connection is set for the loop's thread (`_set_for`)
        self._last_batch = 0  # how many jobs the writer's last batch ran: > 1 is a load
        self._unchecked = 0  # writing jobs committed since the last checkpoint
        self._checkpoint_after = 100  # ... when the next is due (learnt: `_checkpoint`)

    def run(self) -> None:
        try:
            connection = self._open()
        except BadStoreURL as exc:
            self.startup_error = exc
            self.started_ok.set()
            return
        except (sqlite3.Error, OSError) as exc:
            self.startup_error = StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}")
            self.started_ok.set()
            return
        self.connection = connection
        self.started_ok.set()
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    break
                batch = [job]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        more = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                self._last_batch = len(batch)
                with self.lock:
                    self._set_for(connection, on_loop=False)
                    self._run_batch(connection, batch)
                    if self._unchecked >= self._checkpoint_after:
                        self._checkpoint(connection)
                if stop:
                    break
        finally:
            with self.lock:
                self.connection = None
                connection.close()
            self._fail_pending()

    def _set_for(self, connection: sqlite3.Connection, *, on_loop: bool) -> None:
        """Under `lock`: on the loop's thread a statement never waits for another process's
        lock (busy timeout 0) and a commit never checkpoints; on the writer's, both as
        configured."""
        if self._on_loop != on_loop:
            wait_ms = 0 if on_loop else self.busy_timeout_ms
            connection.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            self._on_loop = on_loop

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        """Under `lock`, on the writer's thread, once about _CHECKPOINT_PAGES have been
        written since the last: copy the WAL into the file (PASSIVE: waits for nobody), then,
        if all of it was copied, write once more, here: the next write starts the WAL over
        and syncs its header, and a commit on the loop's thread must not be the one that does
        (the automatic checkpoint is off for the same reason: a checkpoint syncs the file).
        The WAL's length tells how many jobs fill _CHECKPOINT_PAGES, for the next time."""
        try:
            busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > 0:
                self._checkpoint_after = max(1, self._unchecked * _CHECKPOINT_PAGES // frames)
            self._unchecked = 0
            if not busy and frames > 0 and copied == frames:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
        except sqlite3.Error:  # a failing file fails the next jobs' own statements
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")

    def attempt(self, run: Callable[[sqlite3.Connection], T], writes: bool) -> tuple[T] | None:
        """Run one job on the calling thread (the event loop's) if the store is idle and
        that waits for nothing: nothing queued, the writer's last batch a single job (a
        larger one says many callers are at it: their jobs share the writer's commits), the
        connection free, and no other process holding the write lock (busy timeout 0:
        SQLITE_BUSY gives up at once, rolled back). `(its result,)`, or None when it did not
        run (the caller queues it). Its transaction and answers are those of a batch of one
        (`_run_batch`)."""
        if (
            self._last_batch > 1
            or (writes and self._unchecked >= self._checkpoint_after)
            or not self.jobs.empty()
            or not self.lock.acquire(blocking=False)
        ):
            return None
        connection = self.connection
        try:
            if connection is None:  # closed
                return None
            self._set_for(connection, on_loop=True)
            error: Exception | None = None
            in_job = False
            try:
                if writes:
                    connection.execute("BEGIN IMMEDIATE")
                in_job = True
                try:
                    result = run(connection)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # the job's own answer (e.g. SessionExists)
                    error = exc
                in_job = False
                if writes:
                    connection.execute("COMMIT")
                    self._unchecked += 1
            except sqlite3.Error as exc:  # rolled back below
                if _busy(exc):
                    return None
                failure = sqlite_unavailable(f"store {self.path!r}", exc)
                if failure is None and in_job:
                    raise  # a bug of the job's: it hears it, as in a batch
                raise failure or StoreUnavailable(
                    f"SQLite store {self.path!r} failed: {exc}"
                ) from exc
            if error is not None:
                raise error
            return (result,)
        finally:
            if connection is not None and connection.in_transaction:  # failed or interrupted
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            self.lock.release()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self.busy_timeout_ms / 1000,
            check_same_thread=False,  # the loop's thread borrows it under `lock`
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA wal_autocheckpoint = 0")  # the writer's (`_checkpoint`)
        connection.execute(f"PRAGMA synchronous = {self.synchronous}")
        connection.execute("PRAGMA temp_store = MEMORY")
        connection.execute("BEGIN IMMEDIATE")
        try:
            (found,) = connection.execute("PRAGMA user_version").fetchone()
            if found > SCHEMA_VERSION:
                raise BadStoreURL(
                    f"the SQLite store {Path(self.path).resolve()} was written by a newer "
                    f"sessionary (schema {found}; this one knows up to {SCHEMA_VERSION}): "
                    "upgrade sessionary, or use another file"
                )
            for statement in _SCHEMA:
                connection.execute(statement)
            _migrate(connection)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            connection.close()
            raise
        return connection

    def _run_batch(self, connection: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[Outcome] = []
        transaction = len(batch) > 1 or batch[0].writes
        writing = any(job.writes for job in batch)
        culprit = None
        try:
            if transaction:
                connection.execute("BEGIN IMMEDIATE" if writing else "BEGIN")
            for culprit, job in enumerate(batch):  # noqa: B007 (read in the handler)
                try:
                    outcomes.append((job.future, job.run(connection), None))
                except sqlite3.Error:
                    raise  # the whole batch fails with it
                except Exception as exc:  # the job's own answer (e.g. SessionExists)
                    outcomes.append((job.future, None, exc))
            culprit = None
            if transaction:
                connection.execute("COMMIT")
                if writing:
                    self._unchecked += len(batch)
        except sqlite3.Error as exc:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            failure = sqlite_unavailable(f"store {self.path!r}", exc)
            if failure is None and culprit is not None:
                # a bug of one job's: that job hears it; the others, rolled back with it,
                # run again without it (their outcome is known: nothing was applied)
                self._deliver([batch[culprit]], [(batch[culprit].future, None, exc)])
                rest = batch[:culprit] + batch[culprit + 1 :]
                if rest:
                    self._run_batch(connection, rest)
                return
            failure = failure or StoreUnavailable(f"SQLite store {self.path!r} failed: {exc}")
            outcomes = [(job.future, None, failure) for job in batch]
        self._deliver(batch, outcomes)

    @staticmethod
    def _deliver(batch: list[_Job], outcomes: list[Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append(outcome)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(settle, settled)

    def _fail_pending(self) -> None:
        closed = StoreUnavailable("the SQLite store is closed")
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._deliver([job], [(job.future, None, closed)])


class SQLiteBackend:
    """Sessions in one SQLite file (see the module docstring)."""

    def __init__(
        self, path: str, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000
    ) -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous is one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms is >= 0")
        self.path = path
        self._writer = _Writer(path, synchronous.upper(), busy_timeout_ms)
        self._closed = False
        self._commits_on_loop = synchronous.upper() in _COMMITS_WITHOUT_SYNC
        #: the task that runs jobs on the loop's thread in this turn of the loop, and since
        #: when (`_call`)
        self._lane: tuple[asyncio.Task[Any] | None, float] | None = None
        self._signals = LogSignals()
        self._waiting = 0  # wait_log and wait_queue calls under way
        self._data_version: int | None = None  # as the poller last read it
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str) -> SQLiteBackend:
        path, options = parse_url(url)
        _check_path(path)
        backend = cls(path, **options)
        await backend.start()
        return backend

    async def start(self) -> None:
        self._writer.start()
        await asyncio.to_thread(self._writer.started_ok.wait)
        if self._writer.startup_error is not None:
            self._closed = True
            raise self._writer.startup_error

    def _submit(self, run: Callable[[sqlite3.Connection], T], writes: bool) -> asyncio.Future[T]:
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writer.jobs.put(_Job(run, writes, future, loop))
        return future

    async def _call(self, run: Callable[[sqlite3.Connection], T], writes: bool) -> T:
        """A small job (one session's few statements): run on the loop's thread at once when
        that waits for nothing (`_Writer.attempt`: the store idle, the file's write lock
        free) and its commit does not sync, else queued like any other. In one turn of the
        loop only one task runs jobs so (the others' go to the writer, a burst in one group
        commit), for at most _LANE_S and one job more: past that it yields a turn first."""
        if self._closed or (writes and not self._commits_on_loop):
            return await self._submit(run, writes)
        task = asyncio.current_task()
        lane = self._lane
        if lane is None:
            self._lane = (task, time.perf_counter())
            asyncio.get_running_loop().call_soon(self._next_turn)
        elif lane[0] is not task:
            return await self._submit(run, writes)
        elif time.perf_counter() - lane[1] > _LANE_S:
            await asyncio.sleep(0)  # `_next_turn` runs first: the lane is free again
            return await self._call(run, writes)
        done = self._writer.attempt(run, writes)
        return done[0] if done is not None else await self._submit(run, writes)

    def _next_turn(self) -> None:
        self._lane = None

    def limit_sessions(self, ns: str, limit: SessionLimit) -> None:
        """Nothing to arrange: one transaction sees the whole namespace."""

    async def create(
        self, ns: str, record: Record, *, limit: SessionLimit | None = None
    ) -> list[Record]:
        def run(db: sqlite3.Connection) -> list[Record]:
            taken = limit is not None and record.subject is not None
            if taken and db.execute(_TAKEN, (ns, record.id)).fetchone() is not None:
                raise SessionExists(record.id)
            evicted = _admit(
                db, ns, record.id, record.subject, limit, record.last_seen_at, new=True
            )
            inserted = db.execute(
                _INSERT,
                (
                    ns,
                    record.id,
                    record.subject,
                    record.created_at,
                    record.last_seen_at,
                    record.expires_at,
                    record.version,
                    record.data,
                    record.metadata,
                    *_ttls(record.lifetime),
                ),
            ).rowcount
            if not inserted:
                raise SessionExists(record.id)
            return evicted

        return await self._call(run, writes=True)

    async def get(self, ns: str, session_id: str, now: int) -> Record | None:
        def run(db: sqlite3.Connection) -> Record | None:
            row = db.execute(_GET, (ns, session_id, now)).fetchone()
            return None if row is None else _record(row)

        return await self._call(run, writes=False)

    async def touch(self, ns: str, session_id: str, now: int, lifetime: Lifetime) -> Record | None:
        args = (now, *_ttls(lifetime), ns, session_id)

        def run(db: sqlite3.Connection) -> Record | None:
            row = db.execute(_TOUCH, args).fetchone()
            return None if row is None else _record(row)

        return await self._call(run, writes=True)

    async def update(
        self,
        ns: str,
        session_id: str,
        now: int,
        lifetime: Lifetime,
        *,
        data: bytes | None,
        metadata: bytes | None,
        subject: SubjectChange,
        expected_version: int | None,
        expires_at: int | None = None,
        append: Sequence[LogItem] = (),
        limits: LogLimits = NO_LIMITS,
        own_lifetime: LifetimeChange = KEEP,
        limit: SessionLimit | None = None,
        activity: bool = True,
    ) -> Record:
        ttls, own = _lifetime_args(lifetime, own_lifetime)
        args = (
            now,
            *ttls,
            ns,
            session_id,
            data,
            metadata,
            *_subject_args(subject),
            expected_version,
            expires_at,
            *own,
            activity,
        )

        def run(db: sqlite3.Connection) -> Record:
            log = None
            if append:  # every refusal is decided before anything is written
                log = _log_state(db, ns, session_id, now)
                current = db.execute(_VERSION, (ns, session_id, now)).fetchone()
                if log is None or current is None:
                    raise SessionNotFound(session_id)
                if expected_version is not None and current[0] != expected_version:
                    raise VersionConflict(session_id, expected_version, current[0])
                if log[1]:
                    raise LogClosed(session_id)
            evicted = _admit(db, ns, session_id, subject, limit, now, expected_version)
            row = db.execute(_UPDATE, args).fetchone()
            if row is None:
                current = db.execute(_VERSION, (ns, session_id, now)).fetchone()
                if current is None:
                    raise SessionNotFound(session_id)
                assert expected_version is not None
                raise VersionConflict(session_id, expected_version, current[0])
            if log is not None:
                _log_append(db, ns, session_id, now, append, limits, log)
            updated = _record(row)
            updated.evicted = evicted
            return updated

        # an append's entries are as large as the caller makes them: the writer takes it
        record = await (self._submit(run, True) if append else self._call(run, writes=True))
        if append:
            self._signals.notify((ns, session_id))
        return record

    async def consume(
        self, ns: str, session_id: str, now: int, counter: str, amount: int, limit: int | None
    ) -> tuple[bool, int]:
        args = (ns, session_id, now, f'$."{counter}"', amount, limit)

        def run(db: sqlite3.Connection) -> tuple[bool, int]:
            if amount != 0:
                row = db.execute(_CHARGE, args).fetchone()
                if row is not None:
                    return True, row[0]
            current = db.execute(_COUNTER, args[:4]).fetchone()
            if current is None:
                raise SessionNotFound(session_id)
            used: int = current[0]
            return amount == 0 and (limit is None or used <= limit), used

        return await self._call(run, writes=amount != 0)

    async def rotate(
        self,
        ns: str,
        session_id: str,
        new_id: str,
        now: int,
        lifetime: Lifetime,
        subject: SubjectChange,
        *,
        own_lifetime: LifetimeChange = KEEP,
        data: bytes | None = None,
        metadata: bytes | None = None,
        expected_version: int | None = None,
        limit: SessionLimit | None = None,
    ) -> Record:
        ttls, own = _lifetime_args(lifetime, own_lifetime)
        args = (
            now,
            *ttls,
            ns,
            session_id,
            new_id,
            *_subject_args(subject),
            *own,
            data,
            metadata,
            expected_version,
        )

        def run(db: sqlite3.Connection) -> Record:
            evicted: list[Record] = []
            if limit is not None:  # every refusal is decided before anything is written
                if db.execute(_STANDING, (ns, session_id, now)).fetchone() is None:
                    raise SessionNotFound(session_id)
                if db.execute(_TAKEN, (ns, new_id)).fetchone() is not None:
                    raise SessionExists(new_id)
                evicted = _admit(db, ns, session_id, subject, limit, now, expected_version)
            try:
                row = db.execute(_ROTATE, args).fetchone()
            except sqlite3.IntegrityError:
                raise SessionExists(new_id) from None
            if row is None:
                current = db.execute(_VERSION, (ns, session_id, now)).fetchone()
                if current is None:
                    raise SessionNotFound(session_id)
                assert expected_version is not None
                raise VersionConflict(session_id, expected_version, current[0])
            rotated = _record(row)
            rotated.evicted = evicted
            return rotated

        return await self._call(run, writes=True)

    async def delete(self, ns: str, session_id: str) -> Record | None:
        def run(db: sqlite3.Connection) -> Record | None:
            row = db.execute(_DELETE, (ns, session_id)).fetchone()
            return None if row is None else _record(row)

        return await self._call(run, writes=True)

    async def list_subject(self, ns: str, subject: str, now: int) -> list[Record]:
        def run(db: sqlite3.Connection) -> list[Record]:
            return [_record(row) for row in db.execute(_LIST_SUBJECT, (ns, subject, now))]

        return await self._submit(run, writes=False)

    async def revoke_subject(self, ns: str, subject: str, keep: Sequence[str] = ()) -> list[Record]:
        kept = orjson.dumps(list(keep)).decode()

        def run(db: sqlite3.Connection) -> list[Record]:
            return [_record(row) for row in db.execute(_REVOKE_SUBJECT, (ns, subject, kept))]

        return await self._submit(run, writes=True)

    async def due(self, ns: str, now: int, limit: int) -> list[str]:
        def run(db: sqlite3.Connection) -> list[str]:
            return [row[0] for row in db.execute(_DUE, (ns, now, limit))]

        return await self._submit(run, writes=False)

    async def claim(self, ns: str, session_ids: Sequence[str], now: int) -> list[Record]:
        wanted = orjson.dumps(list(session_ids)).decode()

        def run(db: sqlite3.Connection) -> list[Record]:
            return [_record(row) for row in db.execute(_CLAIM, (ns, now, wanted))]

        return await self._submit(run, writes=True)

    async def count(self, ns: str, now: int) -> int:
        def run(db: sqlite3.Connection) -> int:
            return int(db.execute(_COUNT, (ns, now)).fetchone()[0])

        return await self._submit(run, writes=False)

    async def scan(self, ns: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        """In id order (the table's own index): the cursor is the last id named."""

        def run(db: sqlite3.Connection) -> list[str]:
            return [row[0] for row in db.execute(_SCAN, (ns, cursor or "", limit))]

        found = await self._submit(run, writes=False)
        return found, found[-1] if len(found) == limit else None

    async def check_indexes(
        self, ns: str, now: int, cursor: str | None, batch: int, *, repair: bool
    ) -> CheckPage:
        """Nothing to reconcile: the subject and expiry "indexes" here are SQL indexes of the
        `sessions` table, which SQLite writes in the same statement as the row, so they can
        never disagree with it (short of a corrupt file, which `PRAGMA integrity_check`
        reports). Examines nothing."""
        return CheckPage([], None, 0)

    async def append(
        self, ns: str, session_id: str, now: int, items: Sequence[LogItem], limits: LogLimits
    ) -> list[int | None]:
        def run(db: sqlite3.Connection) -> list[int | None]:
            log = _log_state(db, ns, session_id, now)
            if log is None:
                raise SessionNotFound(session_id)
            if log[1]:
                raise LogClosed(session_id)
            return _log_append(db, ns, session_id, now, items, limits, log)

        seqs = await self._submit(run, writes=True)
        self._signals.notify((ns, session_id))
        return seqs

    async def read_log(
        self, ns: str, session_id: str, after: int, limit: int, now: int, max_bytes: int = 0
    ) -> LogSlice | None:
        def run(db: sqlite3.Connection) -> LogSlice | None:
            head = db.execute(_LOG_HEAD, (ns, session_id, now)).fetchone()
            if head is None:
                return None
            entries = within_bytes(
                (
                    LogEntry(row[0], row[1], row[2], row[3], bool(row[4]))
                    for row in db.execute(_LOG_READ, (ns, session_id, after, limit))
                ),
                max_bytes,
            )
            first = entries[0].seq if entries else head[0] + 1
            return LogSlice(entries, first, head[0], bool(head[1]), head[2])

        return await self._submit(run, writes=False)

    async def wait_log(
        self, ns: str, session_id: str, after: int, timeout_ms: int, now: int
    ) -> list[LogEntry] | None:
        # appends from this process wake followers at once; other processes' within
        # _OTHERS_POLL_S, by one poller for all the logs waited on (see _poll_others)
        self._waiting += 1
        try:
            self._watch_others()
            return await self._signals.wait_log(
                (ns, session_id),
                lambda: self.read_log(ns, session_id, after, WAIT_MAX_ENTRIES, now, WAIT_MAX_BYTES),
                timeout_ms,
            )
        finally:
            self._waiting -= 1

    def _watch_others(self) -> None:
        """Make sure the poller runs on this loop (a caller of it counts in `_waiting`)."""
        loop = asyncio.get_running_loop()
        if self._poller is None or self._poller.done() or self._poller.get_loop() is not loop:
            self._poller = loop.create_task(self._poll_others(), name="sessionary-sqlite-poll")

    async def _poll_others(self) -> None:
        """While anyone waits on a log or a queue: every _OTHERS_POLL_S one statement
        (`PRAGMA data_version`) tells whether another process committed to the file, and if
        one did, every waiter reads its log again (a queue's waiter returns). One statement
        per tick however many are waiting (a poll per log cost 20 reads a second each).

        The first reading is taken at once, as the baseline: the poller starts before its
        first waiter's read is queued and runs after it on the same thread, and every later
        waiter takes its signal before it reads, so a commit a read missed changes the
        version from the poller's previous reading. A baseline from an earlier run of the
        poller would wake everyone for commits long past (a queue's waiter for nothing)."""
        self._data_version = await self._other_writes()
        while self._waiting and not self._closed:
            await asyncio.sleep(_OTHERS_POLL_S)
            version = await self._other_writes()
            changed, self._data_version = version != self._data_version, version
            if changed and version is not None:
                self._signals.notify_all()

    async def _other_writes(self) -> int | None:
        """`PRAGMA data_version`, or None while the store fails (the waiters' own reads meet
        the failure; all read again once it is back)."""
        try:
            return await self._submit(_data_version, writes=False)
        except StoreUnavailable:
            return None

    async def charge_counters(
        self, group: str, charges: Sequence[CounterCharge], now: int
    ) -> tuple[bool, list[CounterState]]:
        keys = orjson.dumps([charge.key for charge in charges]).decode()

        def run(db: sqlite3.Connection) -> tuple[bool, list[CounterState]]:
            # Read, decide, write: atomic because the batch's transaction is IMMEDIATE, so
            # it holds the write lock from its first statement.
            rows = db.execute(_READ_COUNTERS, (group, keys))
            found = {row[0]: CounterState(*row) for row in rows}
            allowed, states, writes = plan_charges(
                charges, [found.get(charge.key) for charge in charges], now
            )
            db.executemany(_PUT_COUNTER, [_counter_row(group, s) for s in writes])
            return allowed, states

        return await self._call(run, writes=True)

    async def set_counters(self, group: str, states: Sequence[CounterState], now: int) -> None:
        rows = [_counter_row(group, s) for s in states]

        def run(db: sqlite3.Connection) -> None:
            db.executemany(_PUT_COUNTER, rows)

        await self._submit(run, writes=True)

    async def sweep_counters(self, group: str, now: int, limit: int) -> int:
        def run(db: sqlite3.Connection) -> int:
            return db.execute(_SWEEP_COUNTERS, (group, now, limit)).rowcount

        return await self._submit(run, writes=True)

    async def scan_counters(
        self, group: str, now: int, cursor: str | None, limit: int
    ) -> tuple[list[CounterState], str | None]:
        """In key order, seeking the primary key: the cursor is the last key listed (any
        string is a place in that order, so none is refused)."""
        args = (group, now, "" if cursor is None else cursor, limit + 1)

        def run(db: sqlite3.Connection) -> list[CounterState]:
            return [CounterState(*row) for row in db.execute(_SCAN_COUNTERS, args)]

        found = await self._submit(run, writes=False)
        if len(found) <= limit:
            return found, None
        return found[:limit], found[limit - 1].key

    # -- work queues ------------------------------------------------------------------------

    async def enqueue(self, queue: str, item_id: str, payload: bytes, now: int) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            return db.execute(_WORK_ENQUEUE, (queue, item_id, payload, now)).rowcount > 0

        added = await self._call(run, writes=True)
        if added:
            self._signals.notify(QueueKey(queue))
        return added

    async def claim_work(
        self, queue: str, consumer: str, now: int, lease_ms: int, limit: int
    ) -> list[WorkItem]:
        lease_until = now + lease_ms

        def run(db: sqlite3.Connection) -> list[WorkItem]:
            # pick, then hold: one writing transaction, so no other claim comes between
            order = [row[0] for row in db.execute(_WORK_CLAIMABLE, (queue, now, limit))]
            if not order:
                return []
            wanted = orjson.dumps(order).decode()
            held = {
                row[0]: WorkItem(row[1], _blob(row[2]), row[3], row[4], row[5])
                for row in db.execute(_WORK_HOLD, (consumer, lease_until, wanted))
            }
            return [held[seq] for seq in order]

        return await self._submit(run, writes=True)

    async def renew_work(
        self, queue: str, item_id: str, consumer: str, now: int, lease_ms: int
    ) -> bool:
        args = (now + lease_ms, queue, item_id, consumer)

        def run(db: sqlite3.Connection) -> bool:
            return db.execute(_WORK_RENEW, args).rowcount > 0

        return await self._call(run, writes=True)

    async def ack_work(self, queue: str, item_id: str, consumer: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            return db.execute(_WORK_ACK, (queue, item_id, consumer)).rowcount > 0

        return await self._call(run, writes=True)

    async def queue_depth(self, queue: str, now: int) -> tuple[int, int]:
        def run(db: sqlite3.Connection) -> tuple[int, int]:
            waiting, held = db.execute(_WORK_DEPTH, (queue, now)).fetchone()
            return int(waiting), int(held)

        return await self._submit(run, writes=False)

    async def wait_queue(self, queue: str, timeout_ms: int) -> None:
        # an enqueue from this process wakes at once; another process's within
        # _OTHERS_POLL_S (any commit of another process wakes it: "may have been enqueued")
        self._waiting += 1
        try:
            self._watch_others()
            await self._signals.wait(QueueKey(queue), timeout_ms)
        finally:
            self._waiting -= 1

    # -- analytics (SessionizeBackend): each call is one step in `sqlite_analytics` ----------------

    async def sessionize(
        self, project: str, rules: Rules, hits: Sequence[Hit], now: int, nonce: str
    ) -> IngestOutcome:
        hits = list(hits)
        return await self._submit(
            lambda db: analytics.sessionize(db, project, rules, hits, now, nonce), writes=True
        )

    async def close_idle(self, project: str, rules: Rules, now: int, limit: int) -> int:
        return await self._submit(
            lambda db: analytics.close_idle(db, project, rules, now, limit), writes=True
        )

    async def vacuum(
        self, project: str, rules: Rules, now: int, older_than_ms: int, limit: int
    ) -> VacuumReport:
        return await self._submit(
            lambda db: analytics.vacuum(db, project, rules, now, older_than_ms, limit),
            writes=True,
        )

    async def outbox(self, project: str, limit: int) -> list[OutboxEntry]:
        return await self._submit(lambda db: analytics.outbox(db, project, limit), writes=False)

    async def ack(self, project: str, entry_ids: Sequence[str]) -> None:
        entry_ids = list(entry_ids)
        await self._submit(lambda db: analytics.ack(db, project, entry_ids), writes=True)

    async def projects(self) -> list[str]:
        return await self._submit(analytics.projects, writes=False)

    async def open_sessions(self, project: str) -> int:
        return await self._submit(lambda db: analytics.open_sessions(db, project), writes=False)

    async def idle_sessions(self, project: str, cutoff: int) -> int:
        return await self._submit(
            lambda db: analytics.idle_sessions(db, project, cutoff), writes=False
        )

    async def watermark(self, project: str) -> int | None:
        return await self._submit(lambda db: analytics.watermark(db, project), writes=False)

    async def ping(self) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("SELECT 1").fetchone()

        await self._submit(run, writes=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poller is not None and self._poller.get_loop() is asyncio.get_running_loop():
            self._poller.cancel()
        self._writer.jobs.put(None)
        await asyncio.to_thread(self._writer.join)

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"


def _check_path(path: str) -> None:
    """Paths SQLite cannot open ("unable to open database file"), said with their fix."""
    if path == ":memory:":
        return
    where = Path(path)
    if where.is_dir():
        raise BadStoreURL(
            f"the SQLite store {where.resolve()} is a directory: name a file in it, as "
            f"sqlite:///{where / 'sessionary.db'}"
        )
    if not where.parent.is_dir():
        raise BadStoreURL(
            f"the directory {where.parent.resolve()} of the SQLite store does not exist: "
            f"create it, or fix the store URL"
        )


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """`sqlite:///rel.db?synchronous=FULL` -> ("rel.db", {"synchronous": "FULL"})."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        meant = f"write sqlite:///{parts.netloc}{parts.path}, " if parts.netloc else ""
        raise BadStoreURL(
            f"an SQLite URL has three slashes before a relative path, four before an absolute "
            f"one: {meant}not {url!r}"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise BadStoreURL(f"the SQLite URL {url!r} names no file: write sqlite:///sessionary.db")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "synchronous":
            options["synchronous"] = value
        elif key == "busy_timeout_ms":
            try:
                options["busy_timeout_ms"] = int(value)
            except ValueError:
                raise ValueError(f"busy_timeout_ms is an int of ms, not {value!r}") from None
        else:
            raise ValueError(
                f"unknown SQLite option {key!r}: expected synchronous or busy_timeout_ms"
            )
    return path, options
