"""Runs of conversations, on the core store: nothing here touches a backend.

* A conversation is a session (subject: its owner) whose data is the index of its runs:
  `active` (the run going on, if any), `queue` (runs waiting their turn), `recent` (runs in
  creation order) and `durations` (of its latest finished runs).
* A run is a session (subject: the owner) whose data holds its status and times, and whose
  event log is the run's stream. Every status change is a versioned update that appends its
  event in the same atomic step, so of racing terminal transitions exactly one wins, and it
  appends exactly one final `end` event.
* A worker's lease is a session too (idle ttl: the lease): the worker renews it by touching it;
  when it lapses the reaper claims it, exactly once, and this feature fails the run.
* The lease bound: a run whose worker died ends with an `error` event (or, started with
  `retries=N` and not yet retried N times, goes back to `queued` with a `retry` event, its
  event log continuing), heard by its followers, at most `lease_bound` = 1.25 x lease after
  the worker's last renewal. The lease
  lapses one lease after that renewal; `watch_leases`, which the service runs in every
  process, sweeps the leases every lease / 4, so the first sweep at or after the lapse comes
  at most a quarter lease later. Any number of sweepers and reapers may race: the store hands
  each lapsed lease to exactly one, and the terminal transition appends exactly one `end`.
* Dispatch: with `dispatch="queue"` every run started is also put on the store's `runs` work
  queue (`sessionary.queues`), where `Worker.consume` (`sessionary worker`) claims it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from sessionary import ids
from sessionary.clock import to_ms
from sessionary.codec import check_int
from sessionary.contract import Finding
from sessionary.errors import (
    InvalidSessionId,
    LogClosed,
    SessionExists,
    StoreUnavailable,
    ValidationError,
    VersionConflict,
)
from sessionary.logs import Cursor, Event, LogEvent, LogReset
from sessionary.model import Session, SessionEvent
from sessionary.outage import Backoff, JobStatus, unless_cancelled
from sessionary.queues import WorkQueue
from sessionary.reaper import run_forever
from sessionary.runs.model import (
    ACTIVE,
    TERMINAL,
    ActiveRunExists,
    Conversation,
    ConversationNotFound,
    NotOwner,
    Policy,
    Run,
    RunBusy,
    RunFinished,
    RunNotFound,
    Status,
)
from sessionary.runs.settings import RunsSettings
from sessionary.store import Namespace, Store

log = logging.getLogger("sessionary.runs")

T = TypeVar("T")

_RECENT = 20
_ATTEMPTS = 50
#: the most retries a run may be started with
MAX_RETRIES = 100
#: the work queue of runs for `Worker.consume` (`sessionary worker`)
QUEUE = "runs"
#: what `Runs.check` finds (`Finding.kind`)
RUNS_LEASE_LAPSED = "runs_lease_lapsed"


class Runs:
    def __init__(self, store: Store, settings: RunsSettings | None = None) -> None:
        self.store = store
        self.settings = settings = settings or RunsSettings()
        self.conversations = store.namespace(
            "conversations", absolute_ttl=settings.conversation_ttl, id_prefix="conv_"
        )
        self.runs = store.namespace(
            "runs",
            absolute_ttl=settings.run_max_age,
            id_prefix="run_",
            log_max_length=settings.log_max_length,
            log_max_age=settings.log_max_age,
        )
        self.leases = store.namespace("runs.leases", idle_ttl=settings.lease_ttl)
        self.stats = store.namespace("runs.stats", absolute_ttl=timedelta(days=3650))
        #: where runs wait for a `Worker.consume` when `settings.dispatch` is "queue"
        self.queue: WorkQueue = store.queue(QUEUE)
        store.on("expired", self._on_expired)

    @property
    def namespaces(self) -> list[Namespace]:
        """What a reaper should sweep for this feature."""
        return [self.leases, self.runs, self.conversations]

    # -- conversations ----------------------------------------------------------------------

    async def create_conversation(self, owner: str) -> Conversation:
        session = await self.conversations.create(
            subject=owner, data={"active": None, "queue": [], "recent": [], "durations": []}
        )
        return Conversation(session.id, owner, session.created_at)

    async def conversation(self, conversation_id: str, subject: str | None = None) -> Session:
        """The conversation's session: `ConversationNotFound`, or `NotOwner` when it belongs
        to someone other than `subject` (None: no check)."""
        with _called("conversation"):
            found = await self.conversations.get(conversation_id)
        if found is None:
            raise ConversationNotFound("no such conversation")
        if subject is not None and found.subject != subject:
            raise NotOwner("this conversation belongs to someone else")
        return found

    # -- starting, reading, cancelling ------------------------------------------------------

    async def start(
        self,
        conversation_id: str,
        owner: str,
        policy: Policy = "reject",
        *,
        input: Any = None,
        retries: int = 0,
    ) -> Run:
        """A new run of the conversation. While another is active: `reject` raises
        `ActiveRunExists`, `enqueue` queues the new one behind it, `interrupt` cancels it (its
        events are kept) and makes the new one active. `retries`: how many times a run whose
        worker died (its lease lapsed) goes back to `queued`, with a `retry` event, for a
        worker to take it again, before it ends as `error`. With `dispatch="queue"` the run
        is on the `runs` work queue when this returns."""
        if policy not in ("reject", "enqueue", "interrupt"):
            raise ValidationError("policy is 'reject', 'enqueue' or 'interrupt'")
        check_int("a run's retries", retries, 0, MAX_RETRIES)
        conversation = await self.conversation(conversation_id, owner)
        created: Session | None = None
        queued_at: Cursor | None = None
        for _ in range(_ATTEMPTS):
            state = conversation.data
            active = await self._live_run(state.get("active"))
            if active is not None and policy == "reject":
                if created is not None:
                    await self.runs.delete(created.id)
                raise ActiveRunExists(active.id)
            if active is not None and policy == "interrupt":
                await self._finish(
                    active.id, "cancelled", error="interrupted by a new run", advance=False
                )
                active = None
            if created is None:
                now = self.store.clock.now_ms()
                created = await self.runs.create(
                    subject=owner,
                    data={
                        "conversation_id": conversation_id,
                        "status": "queued",
                        "status_at": now,
                        "input": input,
                        "retries": retries,
                        "attempt": 0,
                    },
                )
                queued_at = await self.runs.append(created.id, "status", {"status": "queued"})
            fresh = dict(state)
            if active is None:
                fresh["active"] = created.id
            else:
                fresh["queue"] = [*state.get("queue", []), created.id]
            fresh["recent"] = [*state.get("recent", []), created.id][-_RECENT:]
            try:
                await self.conversations.update(
                    conversation_id, data=fresh, expected_version=conversation.version
                )
            except VersionConflict:
                conversation = await self.conversation(conversation_id, owner)
                continue
            if self.settings.dispatch == "queue":
                await self._dispatch(created.id)
            return Run.of(created, queued_at, None)  # as it was started: queued
        raise StoreUnavailable("the conversation kept changing; try again")

    async def _dispatch(self, run_id: str) -> None:
        """Put the run on the work queue. If the store fails here, the run ends as `error`
        (best effort) and the caller hears `StoreUnavailable`: a run nobody will execute is
        never left looking queued."""
        try:
            await self.queue.enqueue(run_id, b"")
        except StoreUnavailable:
            with contextlib.suppress(StoreUnavailable):
                await self._finish(run_id, "error", error="the run could not be dispatched")
            raise

    async def get(self, run_id: str, subject: str | None = None) -> Run:
        with _called("run"):
            session = await self.runs.get(run_id)
        if session is None:
            raise RunNotFound("no such run")
        if subject is not None and session.subject != subject:
            raise NotOwner("this run belongs to someone else")
        page = await self.runs.read(run_id, after=None, limit=1)
        return Run.of(session, page.last, page.last_ts)

    async def cancel(self, run_id: str, subject: str | None = None) -> Run:
        """Cancel a queued or running run: `RunFinished` if it already ended. A run cancelled
        while queued never starts; its worker sees `cancelled` between chunks."""
        run = await self.get(run_id, subject)
        won = await self._finish(run.id, "cancelled", error="cancelled")
        if not won:
            current = await self.get(run_id)
            raise RunFinished(run_id, current.status)
        return await self.get(run_id)

    async def stop(self, conversation_id: str, subject: str) -> Run:
        """Cancel the conversation's active run."""
        conversation = await self.conversation(conversation_id, subject)
        active = await self._live_run(conversation.data.get("active"))
        if active is None:
            raise RunNotFound("the conversation has no active run")
        return await self.cancel(active.id, subject)

    async def latest(self, conversation_id: str, subject: str | None = None) -> Run | None:
        """The active run of the conversation, else its most recent run still retained."""
        conversation = await self.conversation(conversation_id, subject)
        state = conversation.data
        candidates = [state.get("active"), *reversed(state.get("recent", []))]
        for run_id in candidates:
            if run_id:
                with contextlib.suppress(RunNotFound):
                    return await self.get(run_id)
        return None

    async def estimated_completion(self, run: Run) -> int:
        """When the run should end, in ms: its start (or now, if queued) plus the median
        duration of its conversation's latest finished runs, else of the namespace's, else
        the configured default. An estimate, nothing more; a finished run's is its end."""
        if run.finished_at is not None:
            return run.finished_at
        conversation = await self.conversations.get(run.conversation_id)
        durations = [] if conversation is None else list(conversation.data.get("durations", []))
        if not durations:
            stats = await self.stats.get(ids.derived("runs.durations"))
            durations = [] if stats is None else list(stats.data.get("durations", []))
        default = to_ms(self.settings.default_duration)
        typical = int(statistics.median(durations)) if durations else default
        begun = run.started_at if run.started_at is not None else self.store.clock.now_ms()
        return begun + typical

    def events(
        self, run_id: str, after: Cursor | str | None = None
    ) -> AsyncIterator[LogEvent | LogReset]:
        """The run's events after `after`, then each new one, until `end`."""
        return self.runs.follow(run_id, after)

    # -- the worker's side ------------------------------------------------------------------

    def producer(self, run_id: str, worker: str = "worker") -> Producer:
        """`async with runs.producer(run_id) as p:` waits for the run's turn, takes its lease,
        marks it running; `p.emit(...)` appends; leaving completes it (or fails it, on an
        exception), unless `p.complete`/`p.fail` did already."""
        return Producer(self, run_id, worker)

    @property
    def lease_check_every(self) -> timedelta:
        """How often `watch_leases` sweeps the leases: a quarter lease, so that a lapsed
        lease is found at most that long after it lapsed."""
        return self.settings.lease_ttl / 4

    @property
    def lease_bound(self) -> timedelta:
        """The longest from a worker's last renewal to its run's `end`, when it died:
        one lease (until the lease lapses) plus `lease_check_every` (until a sweep finds
        it), 1.25 x the lease. (Plus the sweep's own round trips.)"""
        return self.settings.lease_ttl + self.lease_check_every

    async def watch_leases(
        self,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        status: JobStatus | None = None,
    ) -> None:
        """Sweep the leases every `lease_check_every` until cancelled, failing the run of
        each lapsed one: what keeps `lease_bound`. A sweep of the leases alone, rather than
        the general reaper (whose period is set for sessions, 30 s by default, and sweeps
        every namespace) run more often, or a check by each follower of its run: one indexed
        query per process per period whatever the number of runs and followers, and a run
        nobody follows (its conversation's queue waits on it) ends in time too. A store down
        meanwhile: tried again later, as the reaper does. Each sweep's outcome goes to
        `status`."""
        await run_forever([self.leases], every=self.lease_check_every, sleep=sleep, status=status)

    async def reap(self, limit: int = 1000) -> int:
        """Claim lapsed leases (their runs error) and expired runs and conversations;
        returns how many sessions were claimed."""
        claimed = 0
        for namespace in self.namespaces:
            claimed += len(await namespace.reap(limit))
        return claimed

    async def check(self, *, repair: bool = False, batch: int = 100) -> list[Finding]:
        """Runs `running` whose worker's lease is gone or lapsed (`sessionary check`): the
        sweep fails or retries such a run once it claims the lapsed lease, so one found here
        means no sweep runs (`watch_leases`, `sessionary reap`), or its lease was lost, in
        which case nothing ever ends the run but its `run_max_age`.

        Walks the runs (`Namespace.walk`); a run is reported only when it is still running at
        the version first read after its lease was found missing, so a run ending or retried
        meanwhile is no finding. With `repair`, what the sweep does for a lapsed lease, as
        that attempt (a worker that took the run up again since is never disturbed): back to
        `queued` with a `retry` event if it has retries left, else ended with an `error`."""
        findings: list[Finding] = []
        async for page in self.runs.walk(batch):
            for run in page:
                if run.data.get("status") != "running":
                    continue
                if await self.leases.get(_lease_id(run.id)) is not None:
                    continue
                again = await self.runs.get(run.id)
                if again is None or again.version != run.version:
                    continue  # it moved on since it was read
                repaired = False
                if repair:
                    attempt = int(run.data.get("attempt", 0))
                    reason = "the worker's lease was gone (sessionary check)"
                    repaired = await self._retry(run.id, reason, attempt) or await self._finish(
                        run.id, "error", error=reason, attempt=attempt
                    )
                findings.append(
                    Finding(
                        RUNS_LEASE_LAPSED,
                        self.runs.name,
                        run.id,
                        "running, but its worker's lease is gone or lapsed",
                        repaired,
                    )
                )
        return findings

    # -- inside ------------------------------------------------------------------------------

    async def _live_run(self, run_id: str | None) -> Session | None:
        if not run_id:
            return None
        session = await self.runs.get(run_id)
        if session is None or session.data.get("status") not in ACTIVE:
            return None
        return session

    async def _transition(
        self,
        run_id: str,
        to: Status,
        *,
        frm: frozenset[str],
        extra: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]],
        event: Event | Callable[[dict[str, Any]], Event],
        expires_at: int | None = None,
        attempt: int | None = None,
    ) -> Session | None:
        """Move the run to `to` if it is in `frm`, with `event` in the same atomic step;
        None if it was not in `frm` (someone else moved it first). `extra` and `event` may
        be functions of the run's data as this attempt reads it. With `attempt`, only that
        attempt of the run (the producer that started it) may move it."""
        for _ in range(_ATTEMPTS):
            session = await self.runs.get(run_id)
            if session is None:
                raise RunNotFound("no such run")
            if session.data.get("status") not in frm:
                return None
            if attempt is not None and session.data.get("attempt", 0) != attempt:
                return None
            now = self.store.clock.now_ms()
            changes = extra(session.data) if callable(extra) else extra
            data = {**session.data, **changes, "status": to, "status_at": now}
            try:
                return await self.runs.update(
                    run_id,
                    data=data,
                    expected_version=session.version,
                    expires_at=expires_at,
                    append=[event(session.data) if callable(event) else event],
                )
            except VersionConflict:
                continue
            except LogClosed:
                return None
        raise StoreUnavailable("the run kept changing; try again")

    async def _finish(
        self,
        run_id: str,
        status: Status,
        *,
        result: Any = None,
        error: str | None = None,
        advance: bool = True,
        attempt: int | None = None,
    ) -> bool:
        """The one terminal transition: True for the caller that made it. With `attempt`
        (a producer's), only while that attempt is running: a producer that lost its lease
        cannot end a run retried meanwhile."""
        now = self.store.clock.now_ms()
        body: dict[str, Any] = {"status": status}
        if error is not None:
            body["error"] = error
        if result is not None:
            body["result"] = result
        finished = await self._transition(
            run_id,
            status,
            frm=ACTIVE if attempt is None else frozenset({"running"}),
            extra={"finished_at": now, "result": result, "error": error},
            event=Event("end", body, final=True),
            expires_at=now + to_ms(self.settings.retention),
            attempt=attempt,
        )
        if finished is None:
            return False
        with contextlib.suppress(StoreUnavailable):
            await self.leases.delete(_lease_id(run_id))
        started = finished.data.get("started_at")
        duration = None if started is None or status != "completed" else now - int(started)
        if advance:
            await self._advance(str(finished.data["conversation_id"]), run_id, duration)
        if duration is not None:
            await self._remember(duration)
        return True

    async def _advance(self, conversation_id: str, finished: str, duration: int | None) -> None:
        """Take the finished run off the conversation; the next queued run, if any, is active
        now (and its waiting worker is told)."""
        for _ in range(_ATTEMPTS):
            conversation = await self.conversations.get(conversation_id)
            if conversation is None:
                return
            state = dict(conversation.data)
            queue = [r for r in state.get("queue", []) if r != finished]
            promoted = None
            if state.get("active") == finished or await self._live_run(state.get("active")) is None:
                state["active"] = None
                while queue:
                    candidate = queue.pop(0)
                    if await self._live_run(candidate) is not None:
                        promoted = state["active"] = candidate
                        break
            state["queue"] = queue
            if duration is not None:
                state["durations"] = [*state.get("durations", []), duration][-_RECENT:]
            try:
                await self.conversations.update(
                    conversation_id, data=state, expected_version=conversation.version
                )
            except VersionConflict:
                continue
            if promoted is not None:
                with contextlib.suppress(LogClosed):
                    await self.runs.append(promoted, "status", {"status": "queued", "turn": True})
            return

    async def _remember(self, duration: int) -> None:
        """Keep the namespace's latest durations too: best effort, one try (it is only an
        estimate; a completion racing another for it skips it rather than retry, which
        under many workers would cost every completion rounds of conflicts)."""
        stats_id = ids.derived("runs.durations")
        found = await self.stats.get(stats_id)
        with contextlib.suppress(VersionConflict, SessionExists):
            if found is None:
                await self.stats.create(id=stats_id, data={"durations": [duration]})
            else:
                recent = [*found.data.get("durations", []), duration][-_RECENT:]
                await self.stats.update(
                    stats_id, data={"durations": recent}, expected_version=found.version
                )

    async def _on_expired(self, event: SessionEvent) -> None:
        if event.namespace != self.leases.name:
            return
        run_id = event.session.data.get("run_id")
        if not isinstance(run_id, str):
            return
        reason = "the worker stopped renewing its lease"
        if await self._unstarted(run_id):
            log.warning("run %s...: its worker vanished before starting it", run_id[:12])
        elif await self._retry(run_id, reason):
            log.warning("run %s...: its worker vanished (lease expired); retrying", run_id[:12])
        elif await self._finish(run_id, "error", error=reason):
            log.warning("run %s...: its worker vanished (lease expired)", run_id[:12])

    async def _unstarted(self, run_id: str) -> bool:
        """The run of a lapsed lease is still `queued`: its worker died between taking the
        lease and starting it. It never ran, so it stays queued; a `status` event wakes a
        worker waiting on it (`Worker.execute`). True if it was so."""
        with contextlib.suppress(RunNotFound):
            woken = await self._transition(
                run_id,
                "queued",
                frm=frozenset({"queued"}),
                extra={},
                event=Event("status", {"status": "queued", "lease": "lapsed"}),
            )
            return woken is not None
        return False

    async def _retry(self, run_id: str, reason: str, attempt: int | None = None) -> bool:
        """Back to `queued`, with a `retry` event, if the run still has a retry left: True
        for the caller that did it (the one claiming the lapsed lease, or the producer of
        `attempt` giving the run up). The lease goes first, so that the producer of the
        next attempt can take it as soon as the run is queued."""
        with contextlib.suppress(RunNotFound):
            run = await self.runs.get(run_id)
            if run is None or int(run.data.get("attempt", 0)) > int(run.data.get("retries", 0)):
                return False
            if attempt is not None and (
                run.data.get("attempt") != attempt or run.data.get("status") != "running"
            ):
                return False  # not this attempt's any more: nor is the lease
            await self.leases.delete(_lease_id(run_id))
            retried = await self._transition(
                run_id,
                "queued",
                frm=frozenset({"running"}),
                attempt=attempt,
                extra={"worker": None},
                event=lambda data: Event(
                    "retry",
                    {
                        "attempt": int(data.get("attempt", 0)) + 1,
                        "retries": int(data.get("retries", 0)),
                        "error": reason,
                    },
                ),
            )
            return retried is not None
        return False


#: how long a producer is quiet before its watch follows the run again: so a producer gone
#: quiet right after an emit hears a cancel this late
_WATCH_PAUSE_S = 0.05


@contextlib.contextmanager
def _called(what: str) -> Iterator[None]:
    """A malformed id is named for what it is (a conversation id, a run id), not for the
    session that holds it; the error (and its code) stay the store's."""
    try:
        yield
    except InvalidSessionId as exc:
        raise InvalidSessionId(str(exc).replace("session id", f"{what} id")) from None


def _lease_id(run_id: str) -> str:
    return ids.derived(f"runs.lease:{run_id}")


class Producer:
    """The worker's handle on a run (see `Runs.producer`)."""

    def __init__(self, runs: Runs, run_id: str, worker: str) -> None:
        self._runs = runs
        self.run_id = run_id
        self.worker = worker
        self._seq = 0
        self._emitting = asyncio.Lock()  # a producer's events go in the order of their seqs
        self._done = False
        self._ended = asyncio.Event()
        # every event of the log up to this seq is this producer's own, or its watch saw it:
        # the watch reads from here, so it never reads back what the producer wrote itself
        self._known = 0
        self._emitted = 0  # the seq in the log of this producer's latest event
        self._own_from = 0  # from this seq to `_emitted`, every event is this producer's own
        self._emitted_at = 0.0  # when (loop time) the latest emit returned
        self._tasks: list[asyncio.Task[None]] = []
        #: which execution of the run this is (1, then one more per retry), once entered
        self.attempt = 0
        self._lost = False  # the lease lapsed under this producer: the run is not its own
        #: how this producer ended the run: "completed", "error", "cancelled" or "retried"
        #: (handed back for another attempt); None while it goes on, or when someone else
        #: ended it (a cancel, the lease sweep)
        self.outcome: str | None = None
        self._name = worker  # as it signs its events: the worker, per attempt

    @property
    def done(self) -> bool:
        """True once `complete` or `fail` was called."""
        return self._done

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled (or ended by someone else, or lost its lease):
        stop producing. Check it between chunks."""
        return self._ended.is_set()

    @property
    def lost(self) -> bool:
        """True once this producer's lease lapsed (it was paused or cut off longer than a
        lease): the run failed or went back to the queue for a retry, and this producer may
        no longer emit or end it."""
        return self._lost

    async def until_cancelled(self) -> None:
        """Return when `cancelled` becomes true (to race it against generating a chunk)."""
        await self._ended.wait()

    async def __aenter__(self) -> Producer:
        runs = self._runs
        await self._await_turn()
        lease = _lease_id(self.run_id)
        try:
            await runs.leases.create(id=lease, data={"run_id": self.run_id, "worker": self.worker})
        except SessionExists:
            raise RunBusy("another worker holds this run") from None
        now = runs.store.clock.now_ms()

        def attempt(data: dict[str, Any]) -> int:
            return int(data.get("attempt", 0)) + 1

        started = await runs._transition(
            self.run_id,
            "running",
            frm=frozenset({"queued"}),
            extra=lambda data: {"started_at": now, "worker": self.worker, "attempt": attempt(data)},
            event=lambda data: Event(
                "status", {"status": "running", "worker": self.worker, "attempt": attempt(data)}
            ),
        )
        if started is None:
            await runs.leases.delete(lease)
            current = await runs.get(self.run_id)
            raise RunFinished(self.run_id, current.status)
        self.attempt = int(started.data["attempt"])
        # a retry's events are signed anew: the dedup of retried appends is per signature
        self._name = f"{self.attempt}:{self.worker}"[:128]
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._renew(lease), name="sessionary-run-lease"),
            loop.create_task(self._watch(), name="sessionary-run-watch"),
        ]
        return self

    async def emit(self, type: str = "chunk", data: Any = None) -> Cursor | None:
        """Append an event to the run (retried once on a store hiccup, never twice stored).
        `RunFinished` once the run ended (a cancel, say)."""
        if type == "end":
            raise ValidationError("'end' is the run's own last event: call complete or fail")
        if self._lost:
            raise RunBusy("this worker's lease on the run lapsed: it is no longer its own")
        async with self._emitting:
            self._seq += 1
            cursor = await self._through_outage(self._append, type, data)
            if cursor is not None:
                seq = cursor.seq
                if seq != self._emitted + 1:
                    self._own_from = seq
                self._emitted = seq
                self._emitted_at = asyncio.get_running_loop().time()
                if seq == self._known + 1:  # nothing came between: the watch may skip it
                    self._known = seq
            return cursor

    async def _append(self, type: str, data: Any) -> Cursor | None:
        try:
            return await self._runs.runs.append(
                self.run_id, type, data, producer=self._name, seq=self._seq
            )
        except LogClosed:
            self._ended.set()
            current = await self._runs.get(self.run_id)
            raise RunFinished(self.run_id, current.status) from None

    async def _through_outage(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`call(*args)` (arguments, not a closure: `emit` passes every event through here),
        tried again while the store is unavailable (after 50 ms, 100 ms..., up to 1 s
        apart), for as long as the lease outlives the outage: a lease, from the first
        failure. Meanwhile the handler waits in its `emit` (the store is where its events
        go), and a retried append is never stored twice (its seq). Longer than that, the run
        is lost to this producer anyway: `StoreUnavailable`."""
        try:
            return await call(*args)
        except StoreUnavailable:
            pass
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._runs.settings.lease_ttl.total_seconds()
        backoff = Backoff(0.05, 1.0)
        while True:
            await asyncio.sleep(backoff.next())
            try:
                return await call(*args)
            except StoreUnavailable:
                if loop.time() >= give_up:
                    raise

    async def complete(self, result: Any = None) -> bool:
        """End the run as completed; False if it had ended already (cancelled, say)."""
        return await self._end("completed", result=result)

    async def fail(self, error: str) -> bool:
        """End the run as failed; False if it had ended already."""
        return await self._end("error", error=error)

    async def _end(self, status: Status, *, result: Any = None, error: str | None = None) -> bool:
        self._done = True
        await self._stop_tasks()
        ended = await self._through_outage(
            lambda: self._runs._finish(
                self.run_id, status, result=result, error=error, attempt=self.attempt
            )
        )
        if ended:
            self.outcome = status
        return ended

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_tasks()
        if self._done:
            return
        if self._lost:  # whatever the handler did, its lease lapsed: it did not finish
            await self._give_back("the worker lost its lease mid-run")
        elif exc is None:
            await self.complete()
        elif isinstance(exc, asyncio.CancelledError):
            # the worker's task was cancelled (its process shutting down, say): say so now
            # rather than leave readers to the lease
            await self._give_back("the worker was stopped mid-run")
        else:
            await self.fail(f"{type(exc).__name__}: {exc}")

    async def _give_back(self, reason: str) -> None:
        """This attempt ends unfinished: the run is retried if it has a retry left, else it
        fails (either only while it is still this attempt's); if even that fails, the lease
        will."""
        self._done = True
        with contextlib.suppress(StoreUnavailable):
            if await self._runs._retry(self.run_id, reason, attempt=self.attempt):
                self.outcome = "retried"
            elif await self._runs._finish(self.run_id, "error", error=reason, attempt=self.attempt):
                self.outcome = "error"

    async def _await_turn(self) -> None:
        """Wait until the run is its conversation's active run (or raise if it ended)."""
        runs = self._runs
        position: Cursor | None = None
        while True:
            run = await runs.get(self.run_id)
            if run.status in TERMINAL:
                raise RunFinished(self.run_id, run.status)
            if run.status == "running":
                raise RunBusy("this run is already running")
            conversation = await runs.conversations.get(run.conversation_id)
            self._known = 0 if run.cursor is None else run.cursor.seq  # the watch starts here
            if conversation is None or conversation.data.get("active") == self.run_id:
                return
            position = run.cursor
            async for _ in runs.runs.follow(self.run_id, position):
                break  # anything new (its turn, a cancel): look again

    async def _renew(self, lease: str) -> None:
        every = self._runs.settings.lease_ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                if await self._runs.leases.touch(lease) is None:
                    self._lose()  # the lease lapsed: the run is lost to this worker
                    return
            except StoreUnavailable:
                unless_cancelled()
                continue

    async def _watch(self) -> None:
        """Hear the run's end (a cancel) as it happens, to set `cancelled`, and a `retry`
        (this attempt's lease lapsed), to set `lost`. It reads the log from `_known`: the
        producer's own events are skipped unread while nothing else comes between them.
        Caught up with the producer's latest event, it pauses while the producer keeps
        emitting (`_pause`): an emit hears a cancel itself (`RunFinished`), and a watch woken
        by every event would cost the store one more read per event."""
        runs = self._runs.runs
        # while the store is down: again after 1 s, 2 s, 4 s... up to the lease's renewal period
        backoff = Backoff(1.0, self._runs.settings.lease_ttl.total_seconds() / 3)
        while True:
            try:
                caught_up = False
                after = Cursor.of(runs.name, self.run_id, self._known) if self._known else None
                async for event in runs.follow(self.run_id, after):
                    if not isinstance(event, LogEvent):
                        continue
                    seq = event.cursor.seq
                    self._known = max(self._known, seq)
                    if event.type == "retry":  # lapsed while this one was cut off
                        self._lose()
                        return
                    if event.final:
                        break
                    if self._emitting.locked():  # this may be the event of the emit in
                        async with self._emitting:  # flight: let it land first
                            pass
                    if self._own_from - 1 <= seq <= self._emitted:  # the rest is its own
                        self._known = max(self._known, self._emitted)
                        caught_up = True
                        break
                if not caught_up:  # ended, or gone: either way, nothing more to produce
                    self._ended.set()
                    return
                await self._pause()
            except StoreUnavailable:
                unless_cancelled()
                await asyncio.sleep(backoff.next())

    async def _pause(self) -> None:
        """Caught up: wait while the producer keeps emitting with nothing else between its
        events (each emit hears a cancel itself), until it is quiet for `_WATCH_PAUSE_S` or
        an emit finds someone else's event before its own."""
        loop = asyncio.get_running_loop()
        while self._known == self._emitted:
            quiet = self._emitted_at + _WATCH_PAUSE_S - loop.time()
            if quiet <= 0:
                return
            await asyncio.sleep(quiet)

    def _lose(self) -> None:
        self._lost = True
        self._ended.set()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
