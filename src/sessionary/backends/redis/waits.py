"""Waits on many streams over few connections: one `XREAD BLOCK` covers every stream followed
in a lane.

A blocked connection serves nobody else, so one per followed log would make the connections
grow with the logs followed. Instead each stream key falls in a lane (standalone: one of
`lanes` by a hash of the key; on a cluster: its hash slot, since one command may only name
keys of one slot), and a lane is one connection blocking in XREAD over the streams of all its
waits. A wait for a stream the read in flight does not cover (a new log, or an earlier
position) interrupts it with `CLIENT UNBLOCK` from another connection, and the lane reads
again with the new set. A wait that times out leaves the read alone (its key is harmless
there, and the next wait on it, usually at once, is covered again). When a read returns and
the lane has no waits left, its connection is kept `LINGER_S` for the next wait, then closed:
connections held = lanes with waits, or with one a moment ago. (A follower that pauses
between reads, as a run's producer watching its own run does, would otherwise cost a new
connection, its handshake included, each time it comes back.)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionary.backends.redis.batching import pack
from sessionary.contract import WAIT_MAX_ENTRIES

#: how many times an interrupt is retried while the read it targets has not blocked yet
_UNBLOCK_TRIES = 100
#: how long a lane with no waits left keeps its connection for the next wait (seconds)
LINGER_S = 1.0


class Links(Protocol):
    """Where a lane's connection comes from, and how to interrupt it."""

    def lane(self, key: str) -> Hashable: ...

    def open(self, key: str) -> AbstractConnection:
        """A connection to the node serving `key`, the lane's own until `close`."""
        ...

    async def close(self, key: str, connection: AbstractConnection) -> None: ...

    async def unblock(self, key: str, client_id: int) -> None:
        """CLIENT UNBLOCK `client_id` on the node serving `key`."""
        ...


def seq_of(raw: Sequence[Any]) -> int:
    """The seq of a stream entry [b"<seq>-0", fields]."""
    return int(raw[0].split(b"-", 1)[0])


@dataclass(eq=False, slots=True)
class _Wait:
    key: str
    after: int
    future: asyncio.Future[list[Any]]
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Lane:
    name: Hashable
    waits: dict[str, list[_Wait]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    client_id: int | None = None
    reading: dict[str, int] | None = None  # the read in flight: key -> position
    interrupting: bool = False
    idle: asyncio.Future[None] | None = None  # while the lane lingers: done by a new wait


class StreamWaits:
    def __init__(self, links: Links, timeout: float | None) -> None:
        self._links = links
        self._timeout = timeout or 5.0  # a reply's grace past the read's own block time
        self._lanes: dict[Hashable, _Lane] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def wait(self, key: str, after: int, timeout_ms: int) -> list[Any]:
        """The stream entries of `key` after seq `after` as soon as there are any (raw, a
        batch at a time), or [] after `timeout_ms`."""
        loop = asyncio.get_running_loop()
        name = self._links.lane(key)
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane(name)
        wait = _Wait(key, after, loop.create_future())
        wait.timer = loop.call_later(timeout_ms / 1000, self._expire, lane, wait)
        lane.waits.setdefault(key, []).append(wait)
        if lane.task is None:
            lane.task = loop.create_task(self._run(lane), name="sessionary-redis-waits")
        elif lane.idle is not None:
            if not lane.idle.done():
                lane.idle.set_result(None)
        elif lane.reading is not None and lane.reading.get(key, after + 1) > after:
            self._interrupt(lane)
        try:
            return await wait.future
        finally:
            self._drop(lane, wait)

    async def close(self) -> None:
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in [*tasks, *self._tasks]:
            task.cancel()
        await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)
        self._lanes.clear()

    def _expire(self, lane: _Lane, wait: _Wait) -> None:
        wait.timer = None
        if not wait.future.done():
            wait.future.set_result([])
        self._drop(lane, wait)

    @staticmethod
    def _drop(lane: _Lane, wait: _Wait) -> None:
        if wait.timer is not None:
            wait.timer.cancel()
            wait.timer = None
        waits = lane.waits.get(wait.key)
        if waits is not None and wait in waits:
            waits.remove(wait)
            if not waits:
                del lane.waits[wait.key]

    def _interrupt(self, lane: _Lane) -> None:
        if lane.interrupting:
            return
        lane.interrupting = True
        task = asyncio.get_running_loop().create_task(self._unblock(lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unblock(self, lane: _Lane) -> None:
        """Interrupt the lane's read in flight until a read covers every wait (an interrupt
        that lands before the read blocked is lost, so it is sent again)."""
        try:
            for _ in range(_UNBLOCK_TRIES):
                reading, client_id = lane.reading, lane.client_id
                if reading is None or client_id is None or _covers(reading, lane.waits):
                    return
                await self._links.unblock(next(iter(reading)), client_id)
                await asyncio.sleep(0.001)
        except Exception:  # noqa: S110 (the read then returns by itself, a little later)
            pass
        finally:
            lane.interrupting = False

    async def _run(self, lane: _Lane) -> None:
        connection: AbstractConnection | None = None
        key = ""
        try:
            while True:
                if not lane.waits:
                    if connection is None or not await self._linger(lane):
                        break
                    if await connection.can_read():  # the server went away meanwhile: afresh
                        await self._links.close(key, connection)
                        connection = None
                if connection is None:
                    key = next(iter(lane.waits))
                    connection = self._links.open(key)
                    lane.client_id = int(await self._exchange(connection, 0, "CLIENT", "ID"))
                reading = {k: min(w.after for w in waits) for k, waits in lane.waits.items()}
                loop = asyncio.get_running_loop()
                block_ms = max(
                    1,
                    math.ceil(
                        max(
                            w.timer.when() - loop.time() if w.timer is not None else 0.001
                            for waits in lane.waits.values()
                            for w in waits
                        )
                        * 1000
                    ),
                )
                lane.reading = reading
                try:
                    reply = await self._exchange(
                        connection,
                        block_ms,
                        "XREAD", "COUNT", WAIT_MAX_ENTRIES, "BLOCK", block_ms, "STREAMS",
                        *reading, *(f"{after}-0" for after in reading.values()),
                    )  # fmt: skip
                finally:
                    lane.reading = None
                for raw_key, entries in reply or ():
                    self._deliver(lane, raw_key.decode(), reading, entries)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else None
            for waits in lane.waits.values():
                for wait in waits:
                    if not wait.future.done():
                        if failure is None:
                            wait.future.cancel()
                        else:
                            wait.future.set_exception(failure)
            lane.waits.clear()
            if failure is None:
                raise
        finally:
            lane.client_id = None
            if connection is not None:
                await self._links.close(key, connection)
            lane.task = None
            if lane.waits:  # a wait came as the lane ended: start it again
                lane.task = asyncio.get_running_loop().create_task(
                    self._run(lane), name="sessionary-redis-waits"
                )
            elif self._lanes.get(lane.name) is lane:
                del self._lanes[lane.name]

    @staticmethod
    async def _linger(lane: _Lane) -> bool:
        """No waits left: wait up to `LINGER_S` for one. True if one came."""
        lane.idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait([lane.idle], timeout=LINGER_S)
        finally:
            lane.idle.cancel()
            lane.idle = None
        return bool(lane.waits)

    @staticmethod
    def _deliver(lane: _Lane, key: str, reading: dict[str, int], entries: list[Any]) -> None:
        """Hand each wait of `key` that the read covered its entries after its position."""
        position = reading.get(key)
        if position is None or not entries:
            return
        for wait in list(lane.waits.get(key, ())):
            if wait.after < position or wait.future.done():
                continue  # it came later, wanting earlier entries: the next read is its
            chosen = [raw for raw in entries if seq_of(raw) > wait.after]
            if chosen:
                wait.future.set_result(chosen)
                StreamWaits._drop(lane, wait)

    async def _exchange(self, connection: AbstractConnection, block_ms: int, *command: Any) -> Any:
        try:
            async with asyncio.timeout(block_ms / 1000 + self._timeout):
                await connection.send_packed_command(pack(command), check_health=False)
                return await connection.read_response(timeout=math.inf)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"no reply within {block_ms / 1000 + self._timeout} s") from exc


def _covers(reading: dict[str, int], waits: dict[str, list[_Wait]]) -> bool:
    return all(reading.get(k, w.after + 1) <= w.after for k, ws in waits.items() for w in ws)
