"""What the store and its users do while the backend is down: fail fast, say so once, back off.

* `Breaker`: the store calls its backend through one (`Store.guarded`), so every backend,
  built in or a third party's, fails fast the same way. After a call failed with
  `StoreUnavailable` having waited for it (`SLOW_FAILURE_S` or more: a timeout, a lock
  waited out, a full connection pool), the calls that follow within `window` raise
  `StoreUnavailable` at once instead of each waiting out a timeout of its own. The first
  call after the window is let through as a probe (the others still fail fast while it
  runs); its answer closes the circuit, or opens it for another window. Any answer closes
  it, and so does a quick refusal (read-only, out of memory, disk full, connection
  refused): failing fast would save no time, and reads may still work. Long waits
  (`wait_log`, `wait_queue`) are never the probe, and their length opens nothing.
  Checking the circuit is an attribute read: no round trip is added.

  Why in the store layer and not in each backend: the rule ("it made us wait for nothing,
  so do not wait again for a moment") does not depend on how a backend talks to its
  server, and a third party's backend gets it for nothing. Its limit: the circuit is the
  whole store's, so on a Redis Cluster with one node down, calls to the healthy nodes fail
  fast too while the circuit is open (for `window` at a time).
* `OutageLog`: a warning when a store first fails, an info line when it works again, nothing
  in between, so a thousand failing requests or a job retrying make two lines. Recovery is
  declared only after `settle` seconds without a failure, so a store that refuses writes but
  serves reads (read-only, out of memory) is one outage, not one per write.
* `Backoff` and `repeat`: background jobs (the reaper, the analytics jobs) run on a period;
  while the store is down they wait longer and longer between tries (doubling, capped, with
  jitter, so many processes do not retry in step) and log once per outage. Each run's
  outcome goes to the job's `JobStatus`, which the service shows (`GET /v1/health`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn, ParamSpec, TypeVar, cast

from sessionary.clock import SYSTEM_CLOCK, Clock
from sessionary.contract import Backend
from sessionary.errors import StoreUnavailable
from sessionary.telemetry import backend_kind, traced

P = ParamSpec("P")
R = TypeVar("R")

#: How long the calls after one that waited for nothing fail fast (`fail_fast_ms` URL option).
DEFAULT_FAIL_FAST = timedelta(seconds=1)
#: How long a store must go without failing before an outage is said to be over.
DEFAULT_SETTLE_S = 5.0
#: A failure that took this long (seconds) was a wait for nothing (a timeout, a lock waited
#: out): the breaker opens. A quicker one (a refusal: read-only, disk full, connection
#: refused) does not. Well under the timeouts worth failing fast for (the defaults are 2 to
#: 5 s), well over what a refusal takes even on a loaded machine (under a millisecond).
SLOW_FAILURE_S = 0.25
#: The longest a background job waits between tries while the store is down.
DEFAULT_BACKOFF_CAP_S = 60.0
#: Seconds a client is told to wait (`Retry-After`) when the store is down: the service's 503
#: and every framework engine's say the same.
RETRY_AFTER_UNAVAILABLE = 30

_UNGUARDED = frozenset({"close"})  # always runs: releasing resources needs no store
#: long waits: not a probe (others would fail meanwhile)
_WAITS = frozenset({"wait_log", "wait_queue"})


class OutageLog:
    """Logs a warning when `where` first fails and an info line when it works again (after
    `settle` seconds without a failure). Its state (`down`, `since_ms`, `failures`, `error`)
    is what a status page shows; `clock` (monotonic seconds) measures the settling, `wall`
    (the store's clock, where one is at hand) dates the outage."""

    def __init__(
        self,
        logger: logging.Logger,
        where: str,
        *,
        settle: float = DEFAULT_SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.logger = logger
        self.where = where
        self.settle = settle
        self.clock = clock
        self.wall = wall
        self.down = False
        self.failures = 0  # in the current (or the last) outage
        self.error: BaseException | None = None  # the latest failure
        #: when the current (or the last) outage began, in ms since the epoch; None: never
        self.since_ms: int | None = None
        self._since = 0.0
        self._last = 0.0

    def failed(self, error: BaseException, consequence: str) -> None:
        now = self.clock()
        self._last = now
        self.error = error
        self.failures += 1
        if not self.down:
            self.down = True
            self._since = now
            self.since_ms = self.wall.now_ms()
            self.failures = 1
            self.logger.warning(
                "%s: the store is unavailable (%s); %s", self.where, error, consequence
            )

    def recovered(self) -> None:
        if self.down and self.clock() - self._last >= self.settle:
            self.down = False
            self.logger.info(
                "%s: the store is back (%d failures over %.1f s)",
                self.where,
                self.failures,
                self._last - self._since,
            )


class Breaker:
    """Fails calls fast for `window` after one failed slowly (see the module)."""

    def __init__(
        self,
        window: timedelta = DEFAULT_FAIL_FAST,
        outage: OutageLog | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < timedelta(0):
            raise ValueError("the fail-fast window is >= 0 (0 turns failing fast off)")
        self.window = window.total_seconds()
        self.outage = outage
        self.clock = clock
        self.open = False
        self._retry_at = 0.0
        self._probing = False
        self._failure: StoreUnavailable | None = None
        self._failed_at = 0.0

    def admit(self, waits: bool = False) -> bool:
        """Before a call while the circuit is open: raise `StoreUnavailable` at once, or
        return True if this call is the probe."""
        now = self.clock()
        if self._probing or waits or now < self._retry_at:
            raise StoreUnavailable(
                f"failing fast: a call to the store failed after waiting "
                f"{now - self._failed_at:.1f} s ago ({self._failure}); "
                f"the next try is within {self.window:g} s"
            )
        self._probing = True
        return True

    def answered(self, probe: bool) -> None:
        """The store answered a call (a result, or an error of its own such as not found)."""
        self.open = False
        if probe:
            self._probing = False

    def failed(self, error: StoreUnavailable, probe: bool, waited: float, waits: bool) -> None:
        """A call failed with `error` after `waited` seconds."""
        if probe:
            self._probing = False
        if self.outage is not None:
            self.outage.failed(error, "calls fail with StoreUnavailable")
        if waits:  # a long wait's length says nothing of the store's
            return
        if waited < SLOW_FAILURE_S:  # a quick refusal: the next call is quick as well
            self.open = False
            return
        now = self.clock()
        self.open = self.window > 0
        self._failure = error
        self._failed_at = now
        self._retry_at = now + self.window

    def abandoned(self, probe: bool) -> None:
        """The call was cancelled: if it was the probe, the next call probes."""
        if probe:
            self._probing = False

    def wrap(
        self, method: Callable[P, Awaitable[R]], *, waits: bool = False
    ) -> Callable[P, Awaitable[R]]:
        """`method`, called through the breaker."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            probe = self.admit(waits) if self.open else False
            clock = self.clock
            started = clock()
            try:
                result = await method(*args, **kwargs)
            except StoreUnavailable as exc:
                self.failed(exc, probe, clock() - started, waits)
                raise
            except Exception:
                self.answered(probe)  # SessionNotFound and the like: the store answered
                raise
            except BaseException:
                self.abandoned(probe)
                raise
            if self.open or probe:
                self.answered(probe)
            outage = self.outage
            if outage is not None and outage.down:
                outage.recovered()
            return result

        return call


class _Guarded:
    """A backend whose coroutine methods go through a `Breaker`, each wrapped once (on first
    use), whatever methods the backend has: the contract's, the analytics contract's, or
    more of a third party's. Each call is also a span when the application traces
    (`sessionary.telemetry`); the span is outside the breaker, so a call that fails fast
    while the circuit is open is seen too."""

    def __init__(self, backend: Backend, breaker: Breaker) -> None:
        self._inner = backend
        self._breaker = breaker
        self._kind = backend_kind(backend)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name in _UNGUARDED or not inspect.iscoroutinefunction(found):
            return found
        guarded = self._breaker.wrap(found, waits=name in _WAITS)
        wrapped = traced(guarded, name, self._kind, like=found)
        self.__dict__[name] = wrapped  # the next lookup is a plain attribute
        return wrapped

    def __repr__(self) -> str:
        return repr(self._inner)


def guard(backend: Backend, breaker: Breaker) -> Backend:
    """`backend` with every call going through `breaker`."""
    return cast(Backend, _Guarded(backend, breaker))


class Backoff:
    """Delays between tries while the store is down: `first`, then doubling up to `cap`,
    each drawn between half and all of that (jitter); `reset` when it works again."""

    def __init__(
        self,
        first: float,
        cap: float = DEFAULT_BACKOFF_CAP_S,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.first = first
        self.cap = max(cap, first)
        self.rand = rand
        self.tries = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2.0**self.tries)
        self.tries = min(self.tries + 1, 64)
        return delay * (0.5 + self.rand() / 2)

    def reset(self) -> None:
        self.tries = 0


def unless_cancelled() -> None:
    """Raise `CancelledError` if the running task is being cancelled. For a loop that goes
    on after a step: a cancellation that the step swallowed must still end it, or the task
    never ends and whoever awaits its cancellation (an application's shutdown) waits
    forever. Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives as its
    future completes (CPython gh-86296, fixed in 3.12), and redis-py sends every command of
    a connection with a `socket_timeout` through it: seen in the fault suite as a reaper's
    sweep returning normally from a cancelled task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass
class JobStatus:
    """What a background job run by `repeat` did lately, kept for a status page (the
    service's `GET /v1/health`) rather than read back from the logs: its runs and failures
    since the process started, when the last run started and ended (ms since the epoch, by
    `clock`: the store's, so that they compare with the sessions' times), how long it took,
    whether it succeeded (`ok`; None: it has not run yet), and the latest failure's error
    (kept after a success, `ok` says whether it still fails). `outage` is the job's
    `OutageLog`, set by `repeat`, so that whoever holds the status reaches it too."""

    name: str
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False, compare=False)
    runs: int = 0
    failures: int = 0
    last_started_at: int | None = None
    last_finished_at: int | None = None
    last_duration_ms: int | None = None
    last_error: str | None = None
    ok: bool | None = None
    outage: OutageLog | None = field(default=None, repr=False, compare=False)

    def started(self) -> None:
        self.last_started_at = self.clock.now_ms()

    def finished(self, error: Exception | None = None) -> None:
        """The run that `started` ended: well (`error` None) or with `error`."""
        now = self.clock.now_ms()
        started = now if self.last_started_at is None else self.last_started_at
        self.runs += 1
        self.last_finished_at = now
        self.last_duration_ms = max(0, now - started)
        self.ok = error is None
        if error is not None:
            self.failures += 1
            self.last_error = f"{type(error).__name__}: {error}"


async def repeat(
    job: Callable[[], Awaitable[object]],
    every: float,
    outage: OutageLog,
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    status: JobStatus | None = None,
) -> NoReturn:
    """Run `job` every `every` seconds until cancelled. While it raises `StoreUnavailable`,
    wait as `backoff` says (by default from `every` up to a minute, jittered) and log once
    per outage; any other error is logged with its traceback (a bug) and backed off too.
    Each run's outcome goes to `status` (a run cut short by cancellation is no outcome)."""
    backoff = backoff or Backoff(every, max(every, DEFAULT_BACKOFF_CAP_S))
    if status is not None:
        status.outage = outage
    while True:
        error: Exception | None = None
        if status is not None:
            status.started()
        try:
            await job()
        except StoreUnavailable as exc:
            error = exc
            outage.failed(exc, "backing off")
            delay = backoff.next()
        except Exception as exc:
            error = exc
            outage.logger.exception("%s failed", outage.where)
            delay = backoff.next()
        else:
            outage.recovered()
            backoff.reset()
            delay = every
        if status is not None:
            status.finished(error)
        unless_cancelled()  # however the job ended, a cancelled loop goes no further
        await sleep(delay)
