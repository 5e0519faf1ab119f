"""Which sessions changed, pushed by Redis: the invalidation feed of the store's read cache.

One connection of its own, on which Redis client-side caching is turned on in broadcasting
mode for the backend's key prefix and redirected to the connection itself (RESP2:
`CLIENT TRACKING on REDIRECT <own id> BCAST PREFIX <prefix>`, then
`SUBSCRIBE __redis__:invalidate`). Redis then reports every key under the prefix that any
client writes, this process's own connections included (so no write of ours needs local
bookkeeping). In broadcasting mode Redis queues the report in the same event-loop pass
that answers the writer, so it is on this process's socket by the time the writer (any
process) has its acknowledgement.

The socket is non-blocking and read two ways: by the event loop as data arrives, and by
`drain`, synchronously, before the read cache serves anything: a cached read never misses
a report Redis already sent. The connection lost (killed, Redis restarted, a network
error): everything is reported changed (None), `active` turns False until a new connection
has tracking on again (a new client id, a new redirect), retried every `RETRY_S`.

Plain TCP or a Unix socket only (what this can speak without redis-py's stream layer):
with TLS, Sentinel or a Cluster the backend offers no feed and the store no read cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import hiredis

from sessionary.contract import Invalidated

_log = logging.getLogger("sessionary.redis.tracking")

#: between attempts to re-establish a lost feed
RETRY_S = 1.0
_CHANNEL = b"__redis__:invalidate"


def _pack(*args: str | bytes) -> bytes:
    parts = [arg.encode() if isinstance(arg, str) else arg for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def session_of(prefix: str, key: bytes) -> tuple[str, str] | None:
    """The (namespace, session id) of a session key (see `_ShardKeys`: `<prefix>{<ns>:<NN>}:
    s:<id>`, or `<prefix>{<ns>}:<NN>:s:<id>` in a namespace kept in one slot); None for the
    backend's other keys (indexes, logs, counters...)."""
    text = key.decode("utf-8", "replace")
    if not text.startswith(prefix + "{"):
        return None
    head, closed, tail = text[len(prefix) + 1 :].partition("}")
    before, found, session_id = tail.rpartition(":s:")
    if not closed or not found or not session_id:
        return None
    if before:  # one slot: the tag is the namespace, the shard follows it
        return head, session_id
    return head.rpartition(":")[0], session_id


class SessionTracking:
    """The feed (see the module docstring) of one backend: `address` is (host, port) or a
    Unix socket's path."""

    def __init__(
        self,
        address: tuple[str, int] | str,
        prefix: str,
        invalidated: Invalidated,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = 5.0,
    ) -> None:
        self._address = address
        self._prefix = prefix
        self._invalidated = invalidated
        self._auth = (username, password)
        self._timeout = timeout
        self.active = False
        #: the Redis client id of the feed's connection (None while down)
        self.client_id: int | None = None
        self._socket: socket.socket | None = None
        self._reader = hiredis.Reader()
        self._lost: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected: asyncio.Event = asyncio.Event()
        #: the loop the connection is registered with (drain may run from any)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start the feed (once), waiting for its first attempt to connect."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await self._connected.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop()

    async def wait_active(self) -> None:
        """Until the feed is up (for tests: after a loss, the next connection)."""
        while not self.active:
            self._connected.clear()
            await self._connected.wait()

    async def _run(self) -> None:
        while True:
            self._lost.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._connect()
            except (OSError, TimeoutError, ConnectionError, hiredis.ProtocolError) as exc:
                self._drop()
                _log.warning("no invalidation feed (read cache off until it is back): %s", exc)
            self._connected.set()
            if self.active:
                await self._lost.wait()
            await asyncio.sleep(RETRY_S)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(self._address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._socket = sock
        self._reader = hiredis.Reader()
        await loop.sock_connect(sock, self._address)
        username, password = self._auth
        if password is not None:
            await self._ask(*(("AUTH", username) if username else ("AUTH",)), password)
        client_id = await self._ask("CLIENT", "ID")
        assert isinstance(client_id, int)
        await self._ask(
            "CLIENT", "TRACKING", "on", "REDIRECT", str(client_id), "BCAST", "PREFIX", self._prefix
        )
        await self._ask("SUBSCRIBE", _CHANNEL)
        self.client_id = client_id
        self.active = True
        self._loop = loop
        loop.add_reader(sock.fileno(), self.drain)
        self._invalidated(None)  # nothing cached while the feed was down counts

    async def _ask(self, *command: str | bytes) -> object:
        """One command's reply during the handshake (an error reply: ConnectionError)."""
        sock = self._socket
        assert sock is not None
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, _pack(*command))
        while (reply := self._reader.gets()) is False:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self._reader.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionError(f"{command[0]!r}: {reply}")
        return reply

    def drain(self) -> None:
        sock = self._socket
        if sock is None or not self.active:
            return
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                self._reader.feed(data)
        except BlockingIOError:
            pass
        except (OSError, ConnectionError) as exc:
            _log.warning("invalidation feed lost (read cache off until it is back): %s", exc)
            self._drop()
            self._lost.set()
            return
        for keys in self._messages():
            if keys is None:
                self._invalidated(None)
            else:
                self._invalidated(
                    found for key in keys if (found := session_of(self._prefix, key)) is not None
                )

    def _messages(self) -> Iterator[list[bytes] | None]:
        """The invalidation messages parsed so far: their keys (None: everything)."""
        while (message := self._reader.gets()) is not False:
            if isinstance(message, list) and message[0] == b"message" and message[1] == _CHANNEL:
                yield message[2]

    def _drop(self) -> None:
        """Close the connection (if any): everything may have changed unseen from now on."""
        was_active, self.active, self.client_id = self.active, False, None
        sock, self._socket = self._socket, None
        if sock is not None:
            if was_active and self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._invalidated(None)
