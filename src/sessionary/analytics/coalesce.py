"""Group commit: the items of concurrent callers of one key, done together in one step.

    commits = GroupCommit(step, limit=2000, size=len)
    result = await commits.submit(key, item)   # each caller its own result

`step(key, items)` does several items' work at once and returns one result per item, in
order (/track: the events of the requests of one project, in one sessionize step). Natural
batching, no timer: the first item of an idle key starts a step at once; the items submitted
while a step of their key runs wait, and go together in the next one, so an idle key adds no
latency and a busy key's steps grow with its load. A step takes at most `limit` (as `size`
counts an item; an item larger than that goes alone), so the wait stays bounded. One step of a
key runs at a time (per process).

Each caller is answered when its step is done: with its own result, or with the exception of
its step, which fails every item of that step alike (the next step runs as usual). Steps run
in a task of their own (one per busy key), never in a caller's: a caller cancelled (a client
that went away) cannot cancel the step the others wait on. Its item is dropped if its step has
not begun, else done, the result unread. Memory: the items waiting and the step's own, at most
`limit` of them; what bounds the items waiting is the caller's (on /track, the route's
`ByteBudget`: a request holds its share of the budget while it waits).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - the item, as K is the key and R the result
R = TypeVar("R")


class GroupCommit(Generic[K, I, R]):
    def __init__(
        self,
        step: Callable[[K, list[I]], Awaitable[Sequence[R]]],
        *,
        limit: int,
        size: Callable[[I], int],
    ) -> None:
        self._step = step
        self._limit = limit
        self._size = size
        self._waiting: dict[K, deque[tuple[I, asyncio.Future[R]]]] = {}
        self._running: set[asyncio.Task[None]] = set()  # strong references, as asyncio asks

    async def submit(self, key: K, item: I) -> R:
        """`item`'s result, once the step that holds it is done (or its exception)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key)
        if waiting is None:  # an idle key: its steps start (with this one's, at once)
            waiting = self._waiting[key] = deque()
            task = asyncio.create_task(self._run(key, waiting), name=f"group-commit-{key}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        waiting.append((item, future))
        return await future

    async def _run(self, key: K, waiting: deque[tuple[I, asyncio.Future[R]]]) -> None:
        """The key's steps, one after the other, until no item waits."""
        try:
            while batch := self._next(waiting):
                try:
                    results = await self._step(key, [item for item, _ in batch])
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():  # its caller may have been cancelled meanwhile
                            future.set_result(result)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                except BaseException:  # cancelled (the loop shuts down): so are its callers
                    for _, future in batch:
                        future.cancel()
                    raise
        finally:  # the key goes idle (or the loop shuts down: nothing is left waiting)
            del self._waiting[key]
            for _, future in waiting:
                future.cancel()

    def _next(
        self, waiting: deque[tuple[I, asyncio.Future[R]]]
    ) -> list[tuple[I, asyncio.Future[R]]]:
        """The next step's items: those waiting, in order, up to `limit` (one at least), less
        those whose callers are gone."""
        batch: list[tuple[I, asyncio.Future[R]]] = []
        total = 0
        while waiting:
            item, future = waiting[0]
            if future.done():  # cancelled before its step began: not done at all
                waiting.popleft()
                continue
            size = self._size(item)
            if batch and total + size > self._limit:
                break
            waiting.popleft()
            batch.append((item, future))
            total += size
        return batch
