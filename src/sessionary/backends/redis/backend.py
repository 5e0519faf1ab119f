"""`redis://`, `rediss://`, `unix://`: Redis 7+ and Valkey, through redis-py's asyncio client
(`redis+cluster://` for a Redis Cluster, `redis+sentinel://` for a primary Sentinel names: see
`sentinel.py`).

Layout. A namespace is split into 16 shards; a session's shard is carried by its id (see
`sessionary.ids`). All keys of one shard share the hash tag `{<namespace>:<shard>}`, so a
session, the shard's expiry index and the shard's subject index sit in one cluster slot, and
each script declares every key it touches in KEYS:

    <prefix>{web:07}:s:<id>   hash: the session (see common.lua for its fields)
    <prefix>{web:07}:x        sorted set: ids by expires_at (what `due`/`claim` read)
    <prefix>{web:07}:u        sorted set: "<subject>\\0<id>", read by lex range per subject
    <prefix>{c:<group>}:<key> hash: a counter of a counter group (v value, r resets_at, w
                              window ms and l limit of its last charge, and for
                              sliding/gcra: p previous, a algorithm); one tag per
                              group, so a charge of several counters is one script
                              and a group's listing SCANs one node
    <prefix>{an:<project>}:*  analytics: a project's sessionization state and outbox, one
                              tag per project, so a batch is one script (see analytics.lua)
    <prefix>an:projects       set: every project that ever ingested
    <prefix>{q:<queue>}:*     a work queue: a stream with the consumer group `workers`, the
                              leases (by the store's clock), the holders and the item ids,
                              one tag per queue, so every queue call is one script (see
                              queue.lua); no TTL (an item waits as long as it must): they
                              go with the queue's last item

A namespace with a session limit lives in one slot instead (`_ShardKeys`, `_settle_layout`):
`<prefix>{web}:07:s:<id>`, `<prefix>{web}:07:x`, one subject index `<prefix>{web}:u` for
every shard, and the marker `<prefix>{web}:layout`.

Every read-modify-write is one Lua script. Every key of a session has a TTL that runs
`grace_ms` past the latest `expires_at` it serves, so nothing is immortal and a reaper can
still read what it expires; a session whose key Redis dropped before any reaper came is
cleaned out of the indexes when they are next read.

URL options (query parameters): `prefix` (default "sessionary:"), `grace_ms` (default one
hour), `max_connections` (default 64), `pool_timeout` (how long a call waits for a free
connection when all are busy, default 5 s), `wait_connections` (the connections followers of
event logs and waiters on work queues block on, shared by all of them, default 4; see
waits.py), and redis-py's own, such as
`socket_connect_timeout` (default 2 s) and `socket_timeout` (default 5 s); `wait_replicas`
(default 0) and `wait_timeout_ms` (default 1000): a write answers only once that many replicas
acknowledged it, else `StoreUnavailable` (see batching.py). Commands are not retried on their
own: a write whose outcome is unknown raises `StoreUnavailable`; it never runs twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import zlib
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from sessionary import ids
from sessionary.backends.redis import check
from sessionary.backends.redis.analytics import RedisAnalytics
from sessionary.backends.redis.scripts import Batcher, Client, Replication, Script, Scripts
from sessionary.backends.redis.sentinel import sentinel_client
from sessionary.backends.redis.tracking import SessionTracking
from sessionary.backends.redis.waits import StreamWaits, seq_of
from sessionary.contract import (
    KEEP,
    NO_LIMITS,
    CheckPage,
    CounterAlgorithm,
    CounterCharge,
    CounterState,
    Invalidated,
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
)
from sessionary.errors import (
    BadStoreURL,
    InvalidCursor,
    LogClosed,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
    TooManySessions,
    VersionConflict,
)
from sessionary.sessionize import Hit, IngestOutcome, OutboxEntry, Rules, VacuumReport

_log = logging.getLogger("sessionary.redis")
P = ParamSpec("P")
R = TypeVar("R")
N = TypeVar("N", int, float)

DEFAULT_PREFIX = "sessionary:"
DEFAULT_GRACE_MS = 3_600_000
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterException,
    ResponseError,
    OSError,
)
# The error replies that mean we sent something wrong: bugs of ours, raised as they are (a 500
# with its traceback). By the reply's code, and for ERR by its text. Every other error reply
# is the server's state, whatever its wording: READONLY, OOM, LOADING, NOPERM, MASTERDOWN,
# BUSY, CLUSTERDOWN, TRYAGAIN, "ERR DB index is out of range"... (NOSCRIPT is handled where
# the scripts run.)
_OUR_BUG_CODES = frozenset({"WRONGTYPE", "CROSSSLOT", "EXECABORT"})
_OUR_BUG_ERRS = (
    "wrong number of arguments",
    "syntax error",
    "value is not",
    "unknown command",
    "unknown subcommand",
    "user_script:",
    "Error running script",
    "Lua redis lib",
    "The ID specified in XADD",
    "Invalid stream ID",
)
_OWN_OPTIONS = {
    "prefix",
    "grace_ms",
    "max_connections",
    "pool_timeout",
    "autopipeline",
    "wait_connections",
    "wait_replicas",
    "wait_timeout_ms",
}
DEFAULT_AUTOPIPELINE = 2
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_POOL_TIMEOUT = 5.0
DEFAULT_WAIT_CONNECTIONS = 4
DEFAULT_WAIT_TIMEOUT_MS = 1000
_CLIENT_DEFAULTS: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}


#: the methods whose first argument is a namespace, whose keys depend on its layout
_NAMESPACED = frozenset(
    {
        "create",
        "get",
        "touch",
        "update",
        "consume",
        "rotate",
        "delete",
        "list_subject",
        "revoke_subject",
        "due",
        "claim",
        "count",
        "scan",
        "check_indexes",
        "append",
        "read_log",
        "wait_log",
    }
)
_ONE_SLOT = b"one-slot"


def _translate_errors(
    method: Callable[Concatenate[RedisBackend, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[RedisBackend, P], Coroutine[Any, Any, R]]:
    """Hold a connection slot for the call, and turn "the server is unreachable or refusing"
    into `StoreUnavailable`.

    The slots bound the sockets: past `max_connections` calls in flight, callers queue for
    up to `pool_timeout` seconds instead of opening ever more connections. (A semaphore
    costs nothing when free, unlike redis-py's blocking pool, which adds a loop turn.)
    """

    namespaced = method.__name__ in _NAMESPACED

    @functools.wraps(method)
    async def wrapper(self: RedisBackend, /, *args: P.args, **kwargs: P.kwargs) -> R:
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(self.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise StoreUnavailable(
                    f"no free connection to Redis at {self.where} within {self.pool_timeout} s"
                ) from None
        else:
            await slots.acquire()
        try:
            if not self.ready:
                await self.initialize()
            if namespaced and args[0] not in self._one_slot:
                await self._settle_layout(cast(str, args[0]))
            return await method(self, *args, **kwargs)
        except _UNAVAILABLE as exc:
            if (failure := _unavailable(self.where, exc)) is None:
                raise
            raise failure from exc
        finally:
            slots.release()

    return wrapper


def _unavailable(where: str, exc: Exception) -> StoreUnavailable | None:
    """What a failed call raises: `StoreUnavailable` for the server's state or an unreachable
    server; None for a bug of ours, raised as it is. The one place this backend decides
    which is which."""
    code = getattr(exc, "status_code", None)
    if isinstance(exc, ResponseError):
        text = str(exc)
        code = code or text.partition(" ")[0]
        if code in _OUR_BUG_CODES or (code == "ERR" and any(e in text for e in _OUR_BUG_ERRS)):
            return None
    # some errors carry no text (redis-py's MaxConnectionsError, a full connection pool)
    text = str(exc) or type(exc).__name__
    reply = f"{code} {text}" if code and not text.startswith(code) else text
    if isinstance(exc, AuthenticationError):
        return BadStoreURL(
            f"Redis at {where} refuses the store URL's credentials ({reply}): fix the user "
            "and password in the URL (redis://user:password@host:port/db)"
        )
    if isinstance(exc, ResponseError) and "DB index is out of range" in text:
        return BadStoreURL(
            f"Redis at {where} has no such database ({reply}): use an index below its "
            f"'databases' setting (16 by default), as in redis://{where}/0"
        )
    return StoreUnavailable(f"Redis at {where} is unavailable: {reply}")


def _raise_first(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, or the first error among them as the server sent it (redis-py's
    own raise rewrites the message, which would hide the reply's code)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _number(options: dict[str, str], name: str, default: N, kind: type[N]) -> N:
    if name not in options:
        return default
    try:
        return kind(options[name])
    except ValueError:
        raise ValueError(f"{name} is a number, not {options[name]!r}") from None


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A script's HGETALL reply (a flat list) as a dict."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _record(session_id: str, fields: dict[bytes, bytes]) -> Record:
    counters: dict[str, int] = {}
    for name, value in fields.items():
        if name[:2] == b"k:":
            counters[name[2:].decode()] = int(value)
    subject = fields.get(b"s")
    own_idle = fields.get(b"oi")
    return Record(
        session_id,
        None if subject is None else subject.decode(),
        int(fields[b"c"]),
        int(fields[b"l"]),
        int(fields[b"e"]),
        int(fields[b"v"]),
        fields[b"d"],
        fields[b"m"],
        counters,
        None if own_idle is None else Lifetime(_ms_or_none(own_idle), _ms_or_none(fields[b"oa"])),
    )


def _ms_or_none(raw: bytes) -> int | None:
    return int(raw) if raw else None


def _entry(raw: Sequence[Any]) -> LogEntry:
    """A stream entry [b"<seq>-0", [field, value, ...]] as a LogEntry."""
    fields = _fields(raw[1])
    return LogEntry(
        seq_of(raw),
        int(fields[b"ts"]),
        fields[b"t"].decode(),
        fields[b"d"],
        fields.get(b"f") == b"1",
    )


_ALGORITHMS: dict[bytes, CounterAlgorithm] = {
    b"fixed": "fixed",
    b"sliding": "sliding",
    b"gcra": "gcra",
}


def _algorithm(raw: bytes) -> CounterAlgorithm:
    return _ALGORITHMS[raw]


#: the most SCAN steps one page of `scan_counters` takes (each a round trip)
_SCAN_STEPS = 32


def _scan_position(cursor: str | None) -> int:
    """A SCAN cursor as `scan_counters` issues it (an unsigned 64-bit number in decimal)."""
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) >= 2**64:
        raise InvalidCursor(f"not a counters cursor: {cursor[:40]!r}")
    return int(cursor)


def _limit_args(limits: LogLimits) -> tuple[str | int, str | int]:
    return (
        "" if limits.max_length is None else limits.max_length,
        "" if limits.max_age_ms is None else limits.max_age_ms,
    )


def _item_args(items: Sequence[LogItem]) -> list[str | bytes | int]:
    args: list[str | bytes | int] = []
    for item in items:
        args += [
            item.type,
            item.data,
            item.producer or "",
            "" if item.seq is None else item.seq,
            "1" if item.final else "0",
        ]
    return args


def _pairs(flat: Sequence[Any]) -> list[Record]:
    """A reply of {id, fields, id, fields, ...} as records."""
    return [_record(flat[i].decode(), _fields(flat[i + 1])) for i in range(0, len(flat), 2)]


def _ttl_args(lifetime: Lifetime) -> tuple[str, str]:
    return (
        "" if lifetime.idle_ms is None else str(lifetime.idle_ms),
        "" if lifetime.absolute_ms is None else str(lifetime.absolute_ms),
    )


def _own_args(own: LifetimeChange) -> tuple[str, str, str]:
    """The own-lifetime change of a script (see `set_own` in common.lua)."""
    if own is KEEP:
        return "keep", "", ""
    return ("clear", "", "") if own is None else ("set", *_ttl_args(own))


def _gaining(subject: SubjectChange, limit: SessionLimit | None) -> SessionLimit | None:
    """The limit when a write may give the session a subject (the script decides whether it
    gains it, or has it already); None when it cannot."""
    return limit if isinstance(subject, str) else None


def _refused(subject: SubjectChange, limit: SessionLimit | None) -> TooManySessions:
    assert isinstance(subject, str)
    assert limit is not None
    return TooManySessions(subject, limit.max_sessions)


def _subject_args(subject: SubjectChange) -> tuple[str, str]:
    if subject is KEEP:
        return "keep", ""
    return ("clear", "") if subject is None else ("set", subject)


def _session_limit_args(limit: SessionLimit | None) -> tuple[str, str]:
    return ("", "") if limit is None else (str(limit.max_sessions), limit.on_max)


class _ShardKeys:
    """A shard's keys: in a slot of its own (`{<ns>:<shard>}`), or, in a namespace kept in one
    slot for a session limit, in the namespace's (`{<ns>}:<shard>`), where one subject index
    (`{<ns>}:u`) serves every shard, so a limit reads a subject's sessions in one lookup."""

    __slots__ = ("expiry", "log", "session", "subjects")

    def __init__(self, prefix: str, ns: str, shard: int, one_slot: bool = False) -> None:
        tag = f"{prefix}{{{ns}}}:{shard:02d}" if one_slot else f"{prefix}{{{ns}:{shard:02d}}}"
        self.session = f"{tag}:s:"
        self.expiry = f"{tag}:x"
        self.subjects = f"{prefix}{{{ns}}}:u" if one_slot else f"{tag}:u"
        self.log = f"{tag}:l:"


class _StandaloneLinks:
    """A standalone server's wait lanes: `lanes` connections of their own, a key's lane
    picked by its hash; interrupts go over the batcher."""

    def __init__(self, client: Redis, calls: Batcher, lanes: int) -> None:
        self._pool = client.connection_pool
        self._calls = calls
        self._lanes = lanes

    def lane(self, key: str) -> Hashable:
        return zlib.crc32(key.encode()) % self._lanes

    def open(self, key: str) -> AbstractConnection:
        return cast(AbstractConnection, self._pool.make_connection())  # type: ignore[no-untyped-call]

    async def close(self, key: str, connection: AbstractConnection) -> None:
        await connection.disconnect()

    async def unblock(self, key: str, client_id: int) -> None:
        await self._calls.call("CLIENT", "UNBLOCK", client_id)


class _ClusterLinks:
    """A cluster's wait lanes: one per hash slot (a command names keys of one slot only), on
    a connection of its own to the slot's node, made as the node makes its pool's, outside
    that pool: waits never take a connection the node's commands need."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client

    def lane(self, key: str) -> Hashable:
        return self._client.keyslot(key)

    def open(self, key: str) -> AbstractConnection:
        node = self._client.get_node_from_key(key)
        assert node is not None
        retry = Retry(NoBackoff(), 0)  # as the node's own: nothing is retried blindly
        return cast(
            AbstractConnection, node.connection_class(**node.connection_kwargs, retry=retry)
        )

    async def close(self, key: str, connection: AbstractConnection) -> None:
        await connection.disconnect()

    async def unblock(self, key: str, client_id: int) -> None:
        node = self._client.get_node_from_key(key)
        await self._client.execute_command("CLIENT", "UNBLOCK", client_id, target_nodes=node)


class RedisBackend:
    """Sessions in Redis or Valkey (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = DEFAULT_PREFIX,
        grace_ms: int = DEFAULT_GRACE_MS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        autopipeline: int = DEFAULT_AUTOPIPELINE,
        wait_connections: int = DEFAULT_WAIT_CONNECTIONS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS,
        sentinel: Sentinel | None = None,
        where: str = "redis",
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain '{' or '}' (they pick the slot)")
        if grace_ms < 1000:
            raise ValueError("grace_ms is at least 1000: reapers need time to read expired state")
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.ready = not self.cluster
        self._initializing = asyncio.Lock()
        self.prefix = prefix
        self.grace = str(grace_ms)
        self.where = where
        self.pool_timeout = pool_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._scripts = Scripts()
        if wait_replicas and self.cluster:
            raise ValueError("wait_replicas is for one primary (redis://, redis+sentinel://)")
        if wait_replicas < 0 or wait_timeout_ms < 1:
            raise ValueError("wait_replicas >= 0 and wait_timeout_ms >= 1")
        replication = (
            Replication(
                wait_replicas,
                wait_timeout_ms,
                {self._scripts.read_log.sha, self._scripts.queue_depth.sha},
            )
            if wait_replicas
            else None
        )
        self.sentinel = sentinel
        self.calls = Batcher(client, autopipeline, replication)
        if replication is not None and wait_timeout_ms >= 1000 * (self.calls.timeout or 0):
            raise ValueError("wait_timeout_ms is below socket_timeout (which bounds a reply)")
        self.waits = StreamWaits(
            _ClusterLinks(client)
            if isinstance(client, RedisCluster)
            else _StandaloneLinks(client, self.calls, wait_connections),
            self.calls.timeout,
        )
        self._keys: dict[tuple[str, int], _ShardKeys] = {}
        #: per namespace used so far, whether it is kept in one slot (see `_settle_layout`)
        self._one_slot: dict[str, bool] = {}
        self._limits: dict[str, SessionLimit] = {}
        self.analytics = RedisAnalytics(self.calls, self._scripts, prefix)

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        parts = urlsplit(url)
        own: dict[str, str] = {}
        passed: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "protocol":
                raise ValueError("sessionary speaks RESP2 to Redis; drop the protocol option")
            if key in _OWN_OPTIONS:
                own[key] = value
            else:
                passed.append((key, value))
        grace_ms = _number(own, "grace_ms", DEFAULT_GRACE_MS, int)
        max_connections = _number(own, "max_connections", DEFAULT_MAX_CONNECTIONS, int)
        pool_timeout = _number(own, "pool_timeout", DEFAULT_POOL_TIMEOUT, float)
        autopipeline = _number(own, "autopipeline", DEFAULT_AUTOPIPELINE, int)
        wait_connections = _number(own, "wait_connections", DEFAULT_WAIT_CONNECTIONS, int)
        wait_replicas = _number(own, "wait_replicas", 0, int)
        wait_timeout_ms = _number(own, "wait_timeout_ms", DEFAULT_WAIT_TIMEOUT_MS, int)
        if wait_connections < 1:
            raise ValueError("wait_connections >= 1")
        if max_connections < 1 or pool_timeout <= 0 or autopipeline < 0:
            raise ValueError("max_connections >= 1, pool_timeout > 0 and autopipeline >= 0")
        settings: dict[str, Any] = {
            **_CLIENT_DEFAULTS,
            "max_connections": max_connections,
            "protocol": 2,
            "retry": Retry(NoBackoff(), 0),  # MOVED/ASK redirects still follow
            "decode_responses": False,
        }
        client: Client
        sentinel = None
        if parts.scheme.endswith("+sentinel"):
            client, sentinel, where = sentinel_client(parts, passed, settings)
        else:
            where = f"{parts.hostname or parts.path}:{parts.port or ''}".rstrip(":")
            cluster = parts.scheme.endswith("+cluster")
            client_url = urlunsplit(
                parts._replace(
                    scheme=parts.scheme.removesuffix("+cluster"), query=urlencode(passed)
                )
            )
            client = (
                RedisCluster.from_url(client_url, **settings)
                if cluster
                else Redis.from_pool(ConnectionPool.from_url(client_url, **settings))
            )
        return cls(
            client,
            prefix=own.get("prefix", DEFAULT_PREFIX),
            grace_ms=grace_ms,
            max_connections=max_connections,
            pool_timeout=pool_timeout,
            autopipeline=autopipeline,
            wait_connections=wait_connections,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            sentinel=sentinel,
            where=where,
        )

    async def initialize(self) -> None:
        """Learn a cluster's topology once, before the first command: left to the first
        burst of concurrent commands, redis-py's cluster client re-initializes under them
        and drops connections they are using."""
        async with self._initializing:
            if not self.ready and isinstance(self.client, RedisCluster):
                await self.client.initialize()
            self.ready = True

    def shard_keys(self, ns: str, shard: int) -> _ShardKeys:
        keys = self._keys.get((ns, shard))
        if keys is None:
            keys = self._keys[(ns, shard)] = _ShardKeys(self.prefix, ns, shard, self._one_slot[ns])
        return keys

    def limit_sessions(self, ns: str, limit: SessionLimit) -> None:
        """A limit is decided by one script over all of a subject's sessions, so the
        namespace keeps its 16 shards in one hash slot (on a cluster, one primary holds it)."""
        self._limits[ns] = limit

    def _limit_keys(self, ns: str, limit: SessionLimit | None) -> list[str]:
        """What `admit` in common.lua reads: the namespace's subject index, then each shard's
        expiry index."""
        if limit is None:
            return []
        shards = [self.shard_keys(ns, shard) for shard in range(ids.SHARDS)]
        return [shards[0].subjects, *(keys.expiry for keys in shards)]

    async def _settle_layout(self, ns: str) -> None:
        """Learn, once per process, whether `ns` lives in one slot: a namespace with a session
        limit does, marked by a key that never expires (the one key that outlives sessions),
        written by the first process that opens it with the limit, unless sessions of it are
        spread over slots already. A process that disagrees cannot silently write where the
        others never look: with a limit it refuses to work on a spread namespace; without,
        it follows the marker (and warns, since it does not enforce the limit itself)."""
        marker = f"{self.prefix}{{{ns}}}:layout"
        limited = ns in self._limits
        stored = await self.calls.call("GET", marker)
        if limited and stored is None:
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in range(ids.SHARDS):
                    pipe.exists(_ShardKeys(self.prefix, ns, shard).expiry)
                spread = any(_raise_first(await pipe.execute(raise_on_error=False)))
            if not spread:
                await self.calls.call("SET", marker, _ONE_SLOT, "NX")
                stored = await self.calls.call("GET", marker)
        one_slot = stored == _ONE_SLOT
        if limited and not one_slot:
            raise ValueError(
                f"namespace {ns!r} already holds sessions spread over 16 Redis hash slots (it "
                "was used without max_sessions_per_subject), and a session limit needs them "
                "in one: use a new namespace name, or clear this one from a process without "
                f"the limit (and delete {marker!r} if present); see docs/account-security.md"
            )
        if one_slot and not limited:
            _log.warning(
                "namespace %r is kept for a session limit, which this process does not "
                "enforce: open it with the same max_sessions_per_subject everywhere",
                ns,
            )
        self._one_slot[ns] = one_slot

    def _session_keys(self, ns: str, session_id: str) -> tuple[str, str, str, str]:
        """The session, its shard's expiry and subject indexes, and its log."""
        keys = self.shard_keys(ns, ids.shard_of(session_id))
        return keys.session + session_id, keys.expiry, keys.subjects, keys.log + session_id

    # -- single-session operations ------------------------------------------------------

    @_translate_errors
    async def create(
        self, ns: str, record: Record, *, limit: SessionLimit | None = None
    ) -> list[Record]:
        limit = None if record.subject is None else limit
        reply = await self._scripts.run(
            self.calls,
            self._scripts.create,
            (*self._session_keys(ns, record.id), *self._limit_keys(ns, limit)),
            (
                record.id,
                record.created_at,
                record.last_seen_at,
                record.expires_at,
                record.version,
                record.data,
                record.metadata,
                record.subject or "",
                record.last_seen_at,
                self.grace,
                *_own_args(KEEP if record.lifetime is None else record.lifetime),
                *_session_limit_args(limit),
            ),
        )
        if reply[0] == 0:
            raise SessionExists(record.id)
        if reply[0] == -4:
            assert limit is not None
            assert record.subject is not None
            raise TooManySessions(record.subject, limit.max_sessions)
        return _pairs(reply[1])

    @_translate_errors
    async def get(self, ns: str, session_id: str, now: int) -> Record | None:
        reply = await self.calls.call("HGETALL", self._session_keys(ns, session_id)[0])
        fields = reply if isinstance(reply, dict) else _fields(reply)  # a dict via the cluster
        if not fields or int(fields[b"e"]) <= now:
            return None
        return _record(session_id, fields)

    @_translate_errors
    async def touch(self, ns: str, session_id: str, now: int, lifetime: Lifetime) -> Record | None:
        flat = await self._scripts.run(
            self.calls,
            self._scripts.touch,
            self._session_keys(ns, session_id),
            (session_id, now, *_ttl_args(lifetime), self.grace),
        )
        return None if flat is None else _record(session_id, _fields(flat))

    @_translate_errors
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
        limit = _gaining(subject, limit)
        reply = await self._scripts.run(
            self.calls,
            self._scripts.update,
            (*self._session_keys(ns, session_id), *self._limit_keys(ns, limit)),
            (
                session_id,
                now,
                *_ttl_args(lifetime),
                self.grace,
                data or b"",
                metadata or b"",
                *_subject_args(subject),
                "" if expected_version is None else str(expected_version),
                "" if expires_at is None else expires_at,
                *_limit_args(limits),
                *_own_args(own_lifetime),
                *_session_limit_args(limit),
                "1" if activity else "0",
                *_item_args(append),
            ),
        )
        if reply[0] == -1:
            raise SessionNotFound(session_id)
        if reply[0] == -2:
            assert expected_version is not None
            raise VersionConflict(session_id, expected_version, int(reply[1]))
        if reply[0] == -3:
            raise LogClosed(session_id)
        if reply[0] == -4:
            raise _refused(subject, limit)
        updated = _record(session_id, _fields(reply[1]))
        updated.evicted = _pairs(reply[2])
        return updated

    @_translate_errors
    async def consume(
        self, ns: str, session_id: str, now: int, counter: str, amount: int, limit: int | None
    ) -> tuple[bool, int]:
        reply = await self._scripts.run(
            self.calls,
            self._scripts.consume,
            self._session_keys(ns, session_id)[:1],
            (now, "k:" + counter, amount, "" if limit is None else limit),
        )
        if reply[0] == -1:
            raise SessionNotFound(session_id)
        return reply[0] == 1, int(reply[1])

    @_translate_errors
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
        if ids.shard_of(new_id) != ids.shard_of(session_id):
            raise ValueError("rotate needs the new id in the old id's shard (ids.new_id(shard=))")
        limit = _gaining(subject, limit)
        old_key, expiry, subjects, old_log = self._session_keys(ns, session_id)
        new_key, _, _, new_log = self._session_keys(ns, new_id)
        reply = await self._scripts.run(
            self.calls,
            self._scripts.rotate,
            (
                old_key,
                new_key,
                expiry,
                subjects,
                old_log,
                new_log,
                *self._limit_keys(ns, limit),
            ),
            (
                session_id,
                new_id,
                now,
                *_ttl_args(lifetime),
                self.grace,
                *_subject_args(subject),
                *_own_args(own_lifetime),
                data or b"",
                metadata or b"",
                "" if expected_version is None else str(expected_version),
                *_session_limit_args(limit),
            ),
        )
        if reply[0] == -1:
            raise SessionNotFound(session_id)
        if reply[0] == -2:
            raise SessionExists(new_id)
        if reply[0] == -3:
            assert expected_version is not None
            raise VersionConflict(session_id, expected_version, int(reply[1]))
        if reply[0] == -4:
            raise _refused(subject, limit)
        rotated = _record(new_id, _fields(reply[1]))
        rotated.evicted = _pairs(reply[2])
        return rotated

    @_translate_errors
    async def delete(self, ns: str, session_id: str) -> Record | None:
        flat = await self._scripts.run(
            self.calls, self._scripts.delete, self._session_keys(ns, session_id), (session_id,)
        )
        return None if flat is None else _record(session_id, _fields(flat))

    # -- operations across shards -------------------------------------------------------

    async def _fan_out(self, build: Callable[[Any, _ShardKeys], object], ns: str) -> list[Any]:
        """One command per shard, all in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in range(ids.SHARDS):
                build(pipe, self.shard_keys(ns, shard))
            return _raise_first(await pipe.execute(raise_on_error=False))

    async def _subject_ids(self, ns: str, subject: str) -> list[list[str]]:
        """Per shard, the ids the subject index names for `subject`."""
        raw = subject.encode()
        low, high, cut = b"[" + raw + b"\x00", b"(" + raw + b"\x01", len(raw) + 1
        if self._one_slot[ns]:  # one index for every shard: each id names its shard
            per_shard: list[list[str]] = [[] for _ in range(ids.SHARDS)]
            index = self.shard_keys(ns, 0).subjects
            for member in await self.calls.call("ZRANGEBYLEX", index, low, high):
                session_id = member[cut:].decode()
                per_shard[ids.shard_of(session_id)].append(session_id)
            return per_shard
        members = await self._fan_out(lambda pipe, k: pipe.zrangebylex(k.subjects, low, high), ns)
        return [[m[cut:].decode() for m in found] for found in members]

    @_translate_errors
    async def list_subject(self, ns: str, subject: str, now: int) -> list[Record]:
        per_shard = await self._subject_ids(ns, subject)
        named = [(shard, sid) for shard, found in enumerate(per_shard) for sid in found]
        if not named:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, session_id in named:
                pipe.hgetall(self.shard_keys(ns, shard).session + session_id)
            states = _raise_first(await pipe.execute(raise_on_error=False))
        records, dangling = [], []
        for (shard, session_id), fields in zip(named, states, strict=True):
            if not fields:
                dangling.append((shard, session_id))
            elif int(fields[b"e"]) > now and fields.get(b"s") == subject.encode():
                records.append(_record(session_id, fields))
        if dangling:  # their keys expired in Redis: drop the index entries
            async with self.client.pipeline(transaction=False) as pipe:
                for shard, session_id in dangling:
                    pipe.zrem(self.shard_keys(ns, shard).subjects, f"{subject}\x00{session_id}")
                _raise_first(await pipe.execute(raise_on_error=False))
        return records

    async def _per_shard(
        self, script: Script, ns: str, by_shard: dict[int, list[str]], first: str | int
    ) -> list[Record]:
        """Run `script` once per shard over its sessions (KEYS: the shard's expiry index,
        subject index, then each session and its log; ARGV: `first`, then the ids) and
        collect the {id, fields, ...} replies."""
        calls = []
        for shard, found in by_shard.items():
            keys = self.shard_keys(ns, shard)
            per_session = [k for sid in found for k in (keys.session + sid, keys.log + sid)]
            calls.append((script, [keys.expiry, keys.subjects, *per_session], [first, *found]))
        replies = await self._scripts.run_many(self.calls, calls)
        return [record for reply in replies for record in _pairs(reply)]

    @_translate_errors
    async def revoke_subject(self, ns: str, subject: str, keep: Sequence[str] = ()) -> list[Record]:
        """A kept id is left out of its shard's script call: the script touches only the
        ids it is given, so a kept session is never read, changed or deleted."""
        kept = set(keep)
        per_shard = await self._subject_ids(ns, subject)
        by_shard = {
            shard: wanted
            for shard, found in enumerate(per_shard)
            if (wanted := [sid for sid in found if sid not in kept])
        }
        return await self._per_shard(self._scripts.revoke, ns, by_shard, subject)

    @_translate_errors
    async def due(self, ns: str, now: int, limit: int) -> list[str]:
        per_shard = await self._fan_out(
            lambda pipe, k: pipe.zrangebyscore(
                k.expiry, "-inf", now, start=0, num=limit, withscores=True
            ),
            ns,
        )
        entries = sorted((score, member) for found in per_shard for member, score in found)
        return [member.decode() for _, member in entries[:limit]]

    @_translate_errors
    async def claim(self, ns: str, session_ids: Sequence[str], now: int) -> list[Record]:
        by_shard: dict[int, list[str]] = {}
        for session_id in session_ids:
            by_shard.setdefault(ids.shard_of(session_id), []).append(session_id)
        return await self._per_shard(self._scripts.claim, ns, by_shard, now)

    @_translate_errors
    async def count(self, ns: str, now: int) -> int:
        counts = await self._fan_out(lambda pipe, k: pipe.zcount(k.expiry, f"({now}", "+inf"), ns)
        return sum(counts)

    @_translate_errors
    async def scan(self, ns: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        """Shard by shard, ZSCAN over its expiry index (every stored session has an entry):
        the cursor is "<shard>:<ZSCAN cursor>"."""
        shard, position = (0, 0) if cursor is None else map(int, cursor.split(":"))
        found: list[str] = []
        while shard < ids.SHARDS and len(found) < limit:
            expiry = self.shard_keys(ns, shard).expiry
            position, pairs = await self.client.zscan(expiry, position, count=limit)
            found.extend(cast(bytes, member).decode() for member, _ in pairs)
            if position == 0:
                shard += 1
        return found, None if shard >= ids.SHARDS else f"{shard}:{position}"

    @_translate_errors
    async def check_indexes(
        self, ns: str, now: int, cursor: str | None, batch: int, *, repair: bool
    ) -> CheckPage:
        """Expiry indexes, then subject indexes, then session keys: see check.py."""
        return await check.check_indexes(self, ns, now, cursor, batch, repair=repair)

    # -- event logs: a stream beside each session, in its hash tag ------------------------

    @_translate_errors
    async def append(
        self, ns: str, session_id: str, now: int, items: Sequence[LogItem], limits: LogLimits
    ) -> list[int | None]:
        session, _, _, log = self._session_keys(ns, session_id)
        reply = await self._scripts.run(
            self.calls,
            self._scripts.append,
            (session, log),
            (now, *_limit_args(limits), *_item_args(items)),
        )
        if reply[0] == -1:
            raise SessionNotFound(session_id)
        if reply[0] == -2:
            raise LogClosed(session_id)
        return [int(seq) or None for seq in reply[1:]]

    @_translate_errors
    async def read_log(
        self, ns: str, session_id: str, after: int, limit: int, now: int, max_bytes: int = 0
    ) -> LogSlice | None:
        session, _, _, log = self._session_keys(ns, session_id)
        reply = await self._scripts.run(
            self.calls, self._scripts.read_log, (session, log), (now, after, limit, max_bytes)
        )
        if reply is None:
            return None
        last, closed = int(reply[0]), reply[1] == b"1"
        entries = [_entry(raw) for raw in reply[2]]
        newest = _entry(reply[3][0]).ts if reply[3] else None
        return LogSlice(entries, entries[0].seq if entries else last + 1, last, closed, newest)

    async def wait_log(
        self, ns: str, session_id: str, after: int, timeout_ms: int, now: int
    ) -> list[LogEntry] | None:
        """XREAD BLOCK, shared: the waits of every followed log go out together over at most
        `wait_connections` connections (on a cluster, one per hash slot followed); see
        `waits.py`. The hub above keeps it to one wait per log per process."""
        session, _, _, log = self._session_keys(ns, session_id)
        try:
            if not self.ready:
                await self.initialize()
            found = await self.waits.wait(log, after, timeout_ms)
            if found:
                return [_entry(raw) for raw in found]
            state = await self.calls.call("HGET", session, "e")
        except _UNAVAILABLE as exc:
            if (failure := _unavailable(self.where, exc)) is None:
                raise
            raise failure from exc
        return None if state is None or int(state) <= now else []

    # -- counter groups: one hash tag per group ------------------------------------------

    def _counter_keys(self, group: str, keys: Sequence[str]) -> list[str]:
        tag = f"{self.prefix}{{c:{group}}}:"
        return [tag + key for key in keys]

    @_translate_errors
    async def charge_counters(
        self, group: str, charges: Sequence[CounterCharge], now: int
    ) -> tuple[bool, list[CounterState]]:
        args: list[str | int] = [now]
        for charge in charges:
            limit = "" if charge.limit is None else charge.limit
            args += [charge.amount, limit, charge.window_ms, charge.algorithm]
        reply = await self._scripts.run(
            self.calls,
            self._scripts.counters,
            self._counter_keys(group, [charge.key for charge in charges]),
            args,
        )
        states = [
            CounterState(
                charge.key,
                int(reply[1 + 4 * i]),
                int(reply[2 + 4 * i]),
                _algorithm(reply[4 + 4 * i]),
                int(reply[3 + 4 * i]),
                charge.window_ms,
                charge.limit,
            )
            for i, charge in enumerate(charges)
        ]
        return reply[0] == 1, states

    @_translate_errors
    async def set_counters(self, group: str, states: Sequence[CounterState], now: int) -> None:
        args: list[str | int] = [now]
        for state in states:
            limit = "" if state.limit is None else state.limit
            args += [state.value, state.resets_at, state.previous, state.algorithm]
            args += [state.window_ms, limit]
        await self._scripts.run(
            self.calls,
            self._scripts.set_counters,
            self._counter_keys(group, [state.key for state in states]),
            args,
        )

    async def sweep_counters(self, group: str, now: int, limit: int) -> int:
        return 0  # every counter key carries a TTL ending with its window: Redis sweeps

    @_translate_errors
    async def scan_counters(
        self, group: str, now: int, cursor: str | None, limit: int
    ) -> tuple[list[CounterState], str | None]:
        """SCAN (COUNT `limit`) with a MATCH of the group's keys, on the node holding its
        hash tag on a cluster, step after step until `limit` are found, the scan ends, or
        `_SCAN_STEPS` steps ran (a page may hold fewer, or up to about twice as many); then
        their fields in one round trip, keeping the running ones. The cursor is SCAN's."""
        position = _scan_position(cursor)
        tag = self._counter_keys(group, [""])[0]
        pattern = check.glob_escape(tag) + "*"
        client = self.client
        node = client.get_node_from_key(tag) if isinstance(client, RedisCluster) else None
        keys: list[bytes] = []
        for _ in range(_SCAN_STEPS):
            if node is not None:
                positions, found = await client.scan(
                    position, match=pattern, count=limit, target_nodes=node
                )
                position = cast(dict[str, int], positions)[node.name]
            else:
                position, found = await client.scan(position, match=pattern, count=limit)
            keys.extend(cast(list[bytes], found))
            if position == 0 or len(keys) >= limit:
                break
        keys = list(dict.fromkeys(keys))  # SCAN may name a key twice
        if not keys:
            return [], None if position == 0 else str(position)
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "v", "r", "p", "a", "w", "l")
            replies = _raise_first(await pipe.execute(raise_on_error=False))
        cut = len(tag)
        states = [
            CounterState(
                key[cut:].decode(),
                int(v),
                int(r),
                "fixed" if a is None else _algorithm(a),
                int(p or 0),
                int(w or 0),
                None if not lim else int(lim),  # '' (or absent): no limit
            )
            for key, (v, r, p, a, w, lim) in zip(keys, replies, strict=True)
            if v is not None and int(r) > now  # gone (expired) since the SCAN, or ending
        ]
        return states, None if position == 0 else str(position)

    # -- work queues: one hash tag per queue, see queue.lua --------------------------------

    def _queue_keys(self, queue: str) -> tuple[str, str, str, str]:
        """The queue's stream, leases, holders and items (the KEYS of every queue script)."""
        tag = f"{self.prefix}{{q:{queue}}}:"
        return tag + "s", tag + "l", tag + "h", tag + "i"

    @_translate_errors
    async def enqueue(self, queue: str, item_id: str, payload: bytes, now: int) -> bool:
        return bool(
            await self._scripts.run(
                self.calls,
                self._scripts.queue_enqueue,
                self._queue_keys(queue),
                (item_id, payload, now),
            )
        )

    @_translate_errors
    async def claim_work(
        self, queue: str, consumer: str, now: int, lease_ms: int, limit: int
    ) -> list[WorkItem]:
        """New items come from the consumer group with XREADGROUP, lapsed ones are taken
        over with XCLAIM, both inside the script; which leases lapsed is read from the
        leases set (the store's clock), never from the group's idle times (the server's)."""
        flat = await self._scripts.run(
            self.calls,
            self._scripts.queue_claim,
            self._queue_keys(queue),
            (consumer, now, lease_ms, limit),
        )
        lease_until = now + lease_ms
        return [
            WorkItem(flat[i].decode(), flat[i + 1], int(flat[i + 2]), int(flat[i + 3]), lease_until)
            for i in range(0, len(flat), 4)
        ]

    @_translate_errors
    async def renew_work(
        self, queue: str, item_id: str, consumer: str, now: int, lease_ms: int
    ) -> bool:
        return bool(
            await self._scripts.run(
                self.calls,
                self._scripts.queue_renew,
                self._queue_keys(queue),
                (item_id, consumer, now + lease_ms),
            )
        )

    @_translate_errors
    async def ack_work(self, queue: str, item_id: str, consumer: str) -> bool:
        return bool(
            await self._scripts.run(
                self.calls,
                self._scripts.queue_ack,
                self._queue_keys(queue),
                (item_id, consumer),
            )
        )

    @_translate_errors
    async def queue_depth(self, queue: str, now: int) -> tuple[int, int]:
        waiting, held = await self._scripts.run(
            self.calls, self._scripts.queue_depth, self._queue_keys(queue), (now,)
        )
        return int(waiting), int(held)

    async def wait_queue(self, queue: str, timeout_ms: int) -> None:
        """XREAD BLOCK on the queue's stream after its last seq, over the wait lanes that
        serve `wait_log` (see `waits.py`): any entry added since wakes it (seqs never fall
        back, see queue.lua). Like `wait_log` it holds no connection slot while it blocks."""
        stream, _, holders, _ = self._queue_keys(queue)
        try:
            if not self.ready:
                await self.initialize()
            last = await self.calls.call("HGET", holders, "n")
            await self.waits.wait(stream, 0 if last is None else int(last), timeout_ms)
        except _UNAVAILABLE as exc:
            if (failure := _unavailable(self.where, exc)) is None:
                raise
            raise failure from exc

    # -- analytics (SessionizeBackend): one hash tag per project, see analytics.py ---------

    @_translate_errors
    async def sessionize(
        self, project: str, rules: Rules, hits: Sequence[Hit], now: int, nonce: str
    ) -> IngestOutcome:
        return await self.analytics.sessionize(project, rules, hits, now, nonce)

    @_translate_errors
    async def close_idle(self, project: str, rules: Rules, now: int, limit: int) -> int:
        return await self.analytics.close_idle(project, rules, now, limit)

    @_translate_errors
    async def vacuum(
        self, project: str, rules: Rules, now: int, older_than_ms: int, limit: int
    ) -> VacuumReport:
        return await self.analytics.vacuum(project, rules, now, older_than_ms, limit)

    @_translate_errors
    async def outbox(self, project: str, limit: int) -> list[OutboxEntry]:
        return await self.analytics.outbox(project, limit)

    @_translate_errors
    async def ack(self, project: str, entry_ids: Sequence[str]) -> None:
        await self.analytics.ack(project, entry_ids)

    @_translate_errors
    async def projects(self) -> list[str]:
        return await self.analytics.projects()

    @_translate_errors
    async def open_sessions(self, project: str) -> int:
        return await self.analytics.open_sessions(project)

    @_translate_errors
    async def idle_sessions(self, project: str, cutoff: int) -> int:
        return await self.analytics.idle_sessions(project, cutoff)

    @_translate_errors
    async def watermark(self, project: str) -> int | None:
        return await self.analytics.watermark(project)

    @_translate_errors
    async def ping(self) -> None:
        await self.client.ping()

    def track_sessions(self, invalidated: Invalidated) -> SessionTracking | None:
        """The feed of changed sessions for the store's read cache (`tracking`), on a plain
        TCP or Unix-socket connection of its own; None with TLS, Sentinel or a Cluster."""
        if not isinstance(self.client, Redis) or self.sentinel is not None:
            return None
        pool = self.client.connection_pool
        settings = pool.connection_kwargs
        if pool.connection_class is UnixDomainSocketConnection:
            address: tuple[str, int] | str = settings["path"]
        elif pool.connection_class is Connection:
            address = (settings.get("host", "localhost"), int(settings.get("port", 6379)))
        else:
            return None
        return SessionTracking(
            address,
            self.prefix,
            invalidated,
            username=settings.get("username"),
            password=settings.get("password"),
            timeout=settings.get("socket_connect_timeout") or settings.get("socket_timeout"),
        )

    async def close(self) -> None:
        await self.waits.close()
        await self.calls.close()
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()

    def __repr__(self) -> str:
        return f"RedisBackend({self.where!r}, prefix={self.prefix!r})"
