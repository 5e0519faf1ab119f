"""Analytics sessionization on the store: `Sessionizer`.

    sessionizer = Sessionizer(store, {"shop": Rules(timeout_ms=30 * 60_000)}, sink=sink)
    await sessionizer.ingest("shop", [TrackEvent.parse(raw) for raw in batch])
    await sessionizer.reap()      # close idle sessions (any number of reapers may run)
    await sessionizer.drain()     # hand the outbox to the sink, idempotently
    await sessionizer.vacuum()    # forget old state, close what is owed

Each ingest batch is one atomic step in the store (`sessionary.sessionize`), which writes what
it decided (the events' sessions, session rows, session_start and session_end) to an outbox in
the same step; the drainer moves the outbox to the sink and acknowledges only what the sink
stored, so a sink outage loses nothing, and the sink's idempotent writes mean a retry
duplicates nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import NamedTuple

from sessionary.analytics.devices import DeviceIds
from sessionary.analytics.events import TrackEvent
from sessionary.analytics.metrics import AnalyticsMetrics
from sessionary.analytics.sink import Sink
from sessionary.clock import to_ms
from sessionary.contract import Finding
from sessionary.errors import ValidationError
from sessionary.outage import JobStatus, OutageLog, repeat
from sessionary.sessionize import Hit, IngestOutcome, Rules, VacuumReport
from sessionary.store import Namespace, Store

log = logging.getLogger("sessionary.analytics")

MAX_SKEW_MS = 60_000  # a timestamp further in the future than this is the receive time
MAX_BATCH = 1000
#: the most events one step takes: `ingest_together`'s, which /track's requests share
MAX_STEP = 2 * MAX_BATCH
#: what `Sessionizer.check` finds (`Finding.kind`)
OPEN_PAST_TIMEOUT = "analytics_open_past_timeout"
OUTBOX_BACKLOG = "analytics_outbox_backlog"
#: how many outbox entries `check` counts at most (it reads them to count them)
_BACKLOG_COUNT = 1000
_PROJECT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Told(NamedTuple):
    """What a sender of events is told of them (the /track answer): how many were duplicates
    (of an event_id seen lately), how many late (too late for their session)."""

    duplicate: int
    late: int


def check_project(project: object) -> str:
    if not isinstance(project, str) or not _PROJECT_RE.fullmatch(project):
        raise ValidationError("a project id is 1-64 characters of letters, digits and _.-")
    return project


class Sessionizer:
    """Tracked events in, sessions out. `projects` gives each project's rules (others get
    `default_rules`); without a `sink`, `drain` is not available (the outbox is kept)."""

    def __init__(
        self,
        store: Store,
        projects: Mapping[str, Rules] | None = None,
        *,
        sink: Sink | None = None,
        metrics: AnalyticsMetrics | None = None,
        default_rules: Rules | None = None,
    ) -> None:
        self.store = store
        self.backend = store.sessionization
        self.devices = DeviceIds(store)
        self.sink = sink
        self.metrics = metrics or AnalyticsMetrics()
        self._rules = {check_project(p): rules for p, rules in (projects or {}).items()}
        self._default = default_rules or Rules()

    @property
    def namespaces(self) -> list[Namespace]:
        """What the store's reaper should sweep for this feature (the daily salts)."""
        return [self.devices.namespace]

    def rules(self, project: str) -> Rules:
        return self._rules.get(project, self._default)

    async def projects(self) -> list[str]:
        """The projects the jobs work on: the configured ones, and every one the store has
        seen ingest (each batch names its project there again, so after the store lost its
        data a project's first batch makes it known again)."""
        return sorted(self._rules.keys() | set(await self.backend.projects()))

    # -- ingest ---------------------------------------------------------------------------------

    async def ingest(self, project: str, events: Sequence[TrackEvent]) -> IngestOutcome:
        """Sessionize a batch of up to 1,000 events of one project, in one atomic step."""
        check_project(project)
        if len(events) > MAX_BATCH:
            raise ValidationError(f"a batch holds at most {MAX_BATCH} events, not {len(events)}")
        return await self._step(project, events)

    async def ingest_together(
        self, project: str, batches: Sequence[Sequence[TrackEvent]]
    ) -> list[Told]:
        """Sessionize the batches of several senders (/track's concurrent requests, grouped
        by `GroupCommit`), up to `MAX_STEP` events in all, in one atomic step; what each
        sender is told of its own events. The step says which of its events were late and
        which duplicates (`IngestOutcome.late_at`, `duplicate_at`), and each batch is a range
        of them: each sender's counts are exact, whatever its events carry."""
        check_project(project)
        events = [event for batch in batches for event in batch]
        if len(events) > MAX_STEP:
            raise ValidationError(f"a step holds at most {MAX_STEP} events, not {len(events)}")
        outcome = await self._step(project, events)
        late_at, duplicate_at = outcome.late_at, outcome.duplicate_at
        told, end = [], 0
        for batch in batches:
            start, end = end, end + len(batch)
            told.append(
                Told(
                    bisect_left(duplicate_at, end) - bisect_left(duplicate_at, start),
                    bisect_left(late_at, end) - bisect_left(late_at, start),
                )
            )
        return told

    async def _step(self, project: str, events: Sequence[TrackEvent]) -> IngestOutcome:
        if not events:
            return IngestOutcome()
        started = time.perf_counter()
        now = self.store.clock.now_ms()
        nonce = secrets.token_urlsafe(16)
        latest = now + MAX_SKEW_MS
        hits = []
        for i, event in enumerate(events):
            ts = event.timestamp
            if ts is None or ts > latest:
                ts = now
            if event.device_id is not None:
                devices: tuple[str, ...] = (event.device_id,)
            elif event.ip is not None:
                devices = await self.devices.candidates(
                    project, event.ip, event.user_agent or "", ts
                )
            else:
                devices = ()
            client_id = event.event_id
            hit = Hit(
                f"{nonce}.{i}" if client_id is None else client_id,
                event.name, ts, now, devices, client_id is not None, event.profile_id,
                event.path, event.referrer, event.utm_source, event.utm_medium,
                event.utm_campaign, event.utm_term, event.utm_content, event.revenue,
                event.properties,
            )  # fmt: skip
            hits.append(hit)
        outcome = await self.backend.sessionize(
            project, self.rules(project), hits, now, f"s_{nonce}"
        )
        m = self.metrics
        m.ingest_latency.labels(project).observe(time.perf_counter() - started)
        for name in ("joined", "late", "duplicate", "unattached"):
            count = getattr(outcome, name)
            if count:
                m.events.labels(project, name).inc(count)
        if outcome.started:
            m.sessions.labels(project, "started").inc(outcome.started)
        if outcome.ended:
            m.sessions.labels(project, "ended").inc(outcome.ended)
        return outcome

    async def open_sessions(self, project: str) -> int:
        """How many sessions of the project are open in the store now: live, where the
        sink's rows lag by the drainer and count only what it has stored."""
        return await self.backend.open_sessions(check_project(project))

    def refused(self, project: str, count: int) -> None:
        """Count events refused before ingest (malformed, reserved names)."""
        if count:
            self.metrics.events.labels(project, "refused").inc(count)

    # -- jobs -----------------------------------------------------------------------------------

    async def reap(self, limit: int = 1000) -> int:
        """Close every session idle past its project's timeout; returns how many."""
        self.metrics.jobs.labels("reaper").inc()
        now = self.store.clock.now_ms()
        total = 0
        for project in await self.projects():
            while True:
                closed = await self.backend.close_idle(project, self.rules(project), now, limit)
                total += closed
                if closed:
                    self.metrics.sessions.labels(project, "ended").inc(closed)
                    self.metrics.found.labels("reaper", "closed").inc(closed)
                if closed < limit:
                    break
            self.metrics.active.labels(project).set(await self.backend.open_sessions(project))
        return total

    async def vacuum(
        self, older_than: timedelta = timedelta(days=7), limit: int = 10_000
    ) -> VacuumReport:
        """Close sessions whose last event is older than `older_than` (emitting the
        session_end owed), forget device states, index entries, pointers and event ids
        that are no longer needed. Returns what it cleaned, over all projects."""
        self.metrics.jobs.labels("vacuum").inc()
        now = self.store.clock.now_ms()
        age = to_ms(older_than)
        total = VacuumReport()
        for project in await self.projects():
            report = await self.backend.vacuum(project, self.rules(project), now, age, limit)
            for kind in ("closed", "states", "index", "pointers", "dedup"):
                count = getattr(report, kind)
                setattr(total, kind, getattr(total, kind) + count)
                if count:
                    self.metrics.found.labels("vacuum", kind).inc(count)
            if report.closed:
                self.metrics.sessions.labels(project, "ended").inc(report.closed)
        return total

    async def drain(self, limit: int = 500) -> int:
        """Hand the outbox to the sink, oldest first, acknowledging what it stored; returns
        the entries drained. A sink failure leaves the entries for the next drain (raised)."""
        if self.sink is None:
            raise RuntimeError("this Sessionizer has no sink to drain to")
        self.metrics.jobs.labels("drainer").inc()
        drained = 0
        for project in await self.projects():
            while True:
                entries = await self.backend.outbox(project, limit)
                if not entries:
                    break
                try:
                    await self.sink.write(entries)
                except Exception:
                    self.metrics.found.labels("drainer", "sink_failures").inc()
                    raise
                await self.backend.ack(project, [entry.id for entry in entries])
                drained += len(entries)
                self.metrics.found.labels("drainer", "entries").inc(len(entries))
        return drained

    async def check(
        self, *, repair: bool = False, backlog_age: timedelta = timedelta(minutes=5)
    ) -> list[Finding]:
        """What the jobs owe, per project (`sessionary check`): sessions open past their
        timeout + reap lag (the wall-clock backstop: a reaper closes them, so some found here
        mean none runs), and an outbox whose oldest entry was written more than `backlog_age`
        ago (a drainer that does not run, or a sink that refuses). With `repair`, what the
        jobs do: close those sessions (emitting their session_end), and drain the outbox to
        the sink if this Sessionizer has one.

        An outbox entry's age is that of its hits' receipt; an entry the reaper wrote (it
        holds closes only) tells no age, and is counted without one. Sink rows missing for
        acknowledged entries cannot be told: an entry is gone once acknowledged, and the
        sink stores what it was given without a record of what it was sent."""
        now = self.store.clock.now_ms()
        findings: list[Finding] = []
        for project in await self.projects():
            rules = self.rules(project)
            place = f"analytics:{project}"
            cutoff = now - rules.timeout_ms - rules.reap_lag_ms
            overdue = await self.backend.idle_sessions(project, cutoff)
            if overdue:
                if repair:  # as the reaper: until nothing idle is left to close
                    while await self.backend.close_idle(project, rules, now, _BACKLOG_COUNT):
                        pass
                repaired = repair and await self.backend.idle_sessions(project, cutoff) == 0
                findings.append(
                    Finding(
                        OPEN_PAST_TIMEOUT,
                        place,
                        None,
                        f"{overdue} sessions open past timeout + reap lag",
                        repaired,
                    )
                )
            entries = await self.backend.outbox(project, _BACKLOG_COUNT)
            received = [hit.received_at for hit in entries[0].hits] if entries else []
            if received and now - max(received) > to_ms(backlog_age):
                count = f"{len(entries)}+" if len(entries) == _BACKLOG_COUNT else len(entries)
                age = (now - max(received)) // 1000
                drained = repair and self.sink is not None
                if drained:
                    await self.drain()
                findings.append(
                    Finding(
                        OUTBOX_BACKLOG,
                        place,
                        entries[0].id,
                        f"{count} outbox entries undrained, the oldest written {age} s ago",
                        drained and not await self.backend.outbox(project, 1),
                    )
                )
        return findings

    async def run_forever(
        self,
        *,
        reap_every: timedelta = timedelta(seconds=10),
        drain_every: timedelta = timedelta(seconds=1),
        vacuum_every: timedelta = timedelta(hours=1),
        vacuum_age: timedelta = timedelta(days=7),
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        statuses: dict[str, JobStatus] | None = None,
    ) -> None:
        """The reaper, the drainer and the vacuum, each on its own period (in tasks named
        `sessionary-analytics-<job>`), until cancelled. While the store or the sink is
        down, a job tries again later and later (doubling from its period up to a minute,
        jittered), with a warning when it fails and an info line when it works again.
        `statuses` gets each job's `JobStatus` (as `analytics-<job>`, on the store's clock)
        before it first runs."""
        jobs: list[tuple[str, Callable[[], Awaitable[object]], timedelta]] = [
            ("reaper", self.reap, reap_every),
            ("vacuum", lambda: self.vacuum(vacuum_age), vacuum_every),
        ]
        if self.sink is not None:
            jobs.append(("drainer", self.drain, drain_every))
        async with asyncio.TaskGroup() as group:
            for name, job, every in jobs:
                status = JobStatus(f"analytics-{name}", self.store.clock)
                if statuses is not None:
                    statuses[status.name] = status
                outage = OutageLog(log, f"analytics {name}", settle=0, wall=status.clock)
                group.create_task(
                    repeat(job, every.total_seconds(), outage, sleep=sleep, status=status),
                    name=f"sessionary-analytics-{name}",
                )
