"""Adaptive auto-pipelining over a few connections of our own.

One at a time, a command is sent at once. When `depth` batches are already in flight, new
commands wait in a queue, and as soon as a batch returns, everything queued goes out together
as one pipeline (no MULTI: each command, each script, stays atomic on its own). Under load
this turns many round trips into one, as Lettuce and ioredis do. Replies come back in order,
each to its caller, errors included. A command whose caller gave up while it was queued is not
sent.

Commands are packed here (RESP is a few lines) and written to redis-py connections directly:
redis-py still connects, authenticates, selects the database, speaks TLS and parses replies
with hiredis, but its per-command machinery (argument encoding, retries, callbacks,
observability) cost more CPU than the round trip itself. Replies are raw RESP2: HGETALL is a
flat list. On a Redis Cluster, where pipelines cannot carry scripts and routing is redis-py's,
every command goes through redis-py's cluster client as it is.

Acknowledged replication (`Replication`, the URL's `wait_replicas`): a batch holding a write
ends with `WAIT <replicas> <timeout>` on its own connection, which covers every write sent on
that connection before it (a script cannot call WAIT itself). When fewer replicas acknowledged
in time, each write of the batch answers `StoreUnavailable` (it happened on the primary, but
might not survive a failover); reads answer as usual.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionary.backends.handoff import settle
from sessionary.errors import StoreUnavailable

Client = Redis | RedisCluster
Command = tuple[Any, ...]
# what needs no WAIT: the commands the backend sends that write no data (a script is a write
# unless named read-only; CLIENT UNBLOCK wakes a connection of ours; SCRIPT LOAD caches code)
_READS = frozenset(
    {
        *("CLIENT", "GET", "HGET", "HGETALL", "PING", "SCRIPT", "SMEMBERS"),
        *("XRANGE", "XREAD", "ZCARD", "ZCOUNT"),
    }
)


@dataclass(frozen=True, slots=True)
class Replication:
    """Writes count as done once `replicas` replicas acknowledged them, within `timeout_ms`
    (Redis WAIT); `read_only` names the scripts (by SHA) that write nothing."""

    replicas: int
    timeout_ms: int
    read_only: Collection[str] = ()

    def writes(self, command: Command) -> bool:
        name = command[0]
        if name == "EVALSHA":
            return command[1] not in self.read_only
        return name not in _READS

    def check(self, commands: Sequence[Command], replies: list[Any], acknowledged: int) -> None:
        """Turn the replies of the writes into `StoreUnavailable` if too few replicas
        acknowledged them."""
        if acknowledged >= self.replicas:
            return
        refused = StoreUnavailable(
            f"the write reached {acknowledged} of the {self.replicas} replica(s) it waits for "
            f"within {self.timeout_ms} ms: it may not survive a failover"
        )
        for index, command in enumerate(commands):
            if self.writes(command) and not isinstance(replies[index], Exception):
                replies[index] = refused


def pack(command: Command) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = []
    for arg in command:
        if type(arg) is str:
            arg = arg.encode()
        elif type(arg) is int:
            arg = b"%d" % arg
        elif type(arg) is not bytes:
            raise TypeError(f"a Redis argument is bytes, str or int, not {type(arg).__name__}")
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"*%d\r\n" % len(command) + b"".join(parts)


class Batcher:
    def __init__(
        self, client: Client, depth: int = 2, replication: Replication | None = None
    ) -> None:
        self.client = client
        self.replication = replication
        self.depth = 0 if isinstance(client, RedisCluster) else max(1, depth)
        kwargs = (
            {} if isinstance(client, RedisCluster) else client.connection_pool.connection_kwargs
        )
        self.timeout: float | None = kwargs.get("socket_timeout")
        self._idle: list[AbstractConnection] = []
        self._opened: list[AbstractConnection] = []
        self._in_flight = 0
        self._queue: deque[tuple[Command, asyncio.Future[Any]]] = deque()
        self._flushes: set[asyncio.Task[None]] = set()

    async def call(self, *command: Any) -> Any:
        """Send one command and return its reply (raising the error it got)."""
        if self.depth == 0:
            return await self.client.execute_command(*command)
        if self._in_flight < self.depth and not self._queue:
            self._in_flight += 1
            try:
                (reply,) = await self._send([command])
            finally:
                self._in_flight -= 1
                self._flush_queued()
        else:
            waiting: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((command, waiting))
            reply = await waiting
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def close(self) -> None:
        for connection in self._opened:
            await connection.disconnect()
        self._opened.clear()
        self._idle.clear()

    def _flush_queued(self) -> None:
        while self._queue and self._in_flight < self.depth:
            batch = [item for item in self._queue if not item[1].cancelled()]
            self._queue.clear()
            if not batch:
                return
            self._in_flight += 1
            flush = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(flush)  # hold a reference until it is done
            flush.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send([command for command, _ in batch])
        except Exception as exc:  # the connection failed: every caller hears it
            replies = [exc] * len(batch)
        finally:
            self._in_flight -= 1
            self._flush_queued()
        # a turn's worth of callers at a time (see `sessionary.backends.handoff`)
        settle((waiting, reply, None) for (_, waiting), reply in zip(batch, replies, strict=True))

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        """Write the commands at once on a free connection and read every reply; a reply
        that is an error comes back as the exception, in its place."""
        connection = self._idle.pop() if self._idle else self._open()
        timeout = self.timeout
        try:
            if connection.is_connected and await connection.can_read():
                await connection.disconnect()  # stale (the server went away): start afresh
            replies: list[Any] = []
            packed = b"".join(pack(command) for command in commands)
            replication = self.replication
            if replication is not None and any(replication.writes(c) for c in commands):
                packed += pack(("WAIT", replication.replicas, replication.timeout_ms))
            else:
                replication = None
            if replication is not None and timeout is not None:
                timeout += replication.timeout_ms / 1000  # the exchange holds a WAIT
            async with asyncio.timeout(timeout):
                await connection.send_packed_command(packed, check_health=False)
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                if replication is not None:
                    replication.check(commands, replies, int(await connection.read_response()))
        except TimeoutError as exc:
            await connection.disconnect()  # mid-exchange: never reuse it as it is
            raise RedisTimeoutError(f"no reply within {timeout} s") from exc
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            self._idle.append(connection)
        return replies

    def _open(self) -> AbstractConnection:
        assert isinstance(self.client, Redis)
        pool = self.client.connection_pool
        connection = cast(AbstractConnection, pool.make_connection())  # type: ignore[no-untyped-call]
        # The exchange as a whole is timed (one timer, not one per reply): see `_send`.
        connection.socket_timeout = None
        self._opened.append(connection)
        return connection
