"""Conformance of the analytics storage contract (`sessionary.sessionize`): every rule at
T - 1, T and T + 1 ms, racing reapers and ingests, vacuum, the outbox; and a Hypothesis
comparison of the backend against the rules run in Python (the memory backend)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionary.backends.memory import MemoryBackend
from sessionary.clock import ManualClock
from sessionary.sessionize import (
    Hit,
    OutboxEntry,
    Placement,
    Rules,
    SessionizeBackend,
    SessionRow,
)
from sessionary.store import Store, connect

T = 30 * 60_000  # the default timeout
L = 15 * 60_000  # the default lateness
DAY = 24 * 3_600_000


@dataclass
class Step:
    """What one call did, gathered from the outbox entries it wrote."""

    outcome: Any
    placements: list[Placement] = field(default_factory=list)
    rows: dict[str, SessionRow] = field(default_factory=dict)
    started: list[tuple[str, int]] = field(default_factory=list)
    ended: list[tuple[str, int]] = field(default_factory=list)

    @property
    def sessions(self) -> list[str]:
        """The session of each placement ("" for none)."""
        return [p.session_id or "" for p in self.placements]

    @property
    def statuses(self) -> list[str]:
        return [p.status for p in self.placements]


class Analytics:
    """A test's handle on one project: builds hits, calls the contract, reads the outbox."""

    _projects = itertools.count()

    def __init__(self, sz: SessionizeBackend, clock: ManualClock, rules: Rules) -> None:
        self.sz = sz
        self.clock = clock
        self.rules = rules
        self.project = f"p{next(self._projects)}"
        self.t0 = clock.now_ms()
        self._events = itertools.count()
        self._nonces = itertools.count()

    def hit(self, device: str | None, at: int, name: str = "screen_view", **fields: Any) -> Hit:
        """A hit at t0 + `at` ms from `device` (None: a profile-only hit)."""
        devices = fields.pop("devices", (device,) if device is not None else ())
        return Hit(
            event_id=fields.pop("event_id", f"e{next(self._events)}"),
            name=name,
            ts=self.t0 + at,
            received_at=self.clock.now_ms(),
            devices=devices,
            **fields,
        )

    async def ingest(self, *hits: Hit) -> Step:
        nonce = f"s{next(self._nonces):05d}x"
        outcome = await self.sz.sessionize(
            self.project, self.rules, list(hits), self.clock.now_ms(), nonce
        )
        return await self._collect(outcome)

    async def reap(self, limit: int = 1000) -> Step:
        closed = await self.sz.close_idle(self.project, self.rules, self.clock.now_ms(), limit)
        return await self._collect(closed)

    async def _collect(self, outcome: Any) -> Step:
        step = Step(outcome)
        for entry in await self.drain():
            step.placements += entry.placements
            step.started += entry.started
            step.ended += entry.ended
            step.rows.update({row.id: row for row in entry.sessions})
        return step

    async def drain(self) -> list[OutboxEntry]:
        entries = await self.sz.outbox(self.project, 10_000)
        await self.sz.ack(self.project, [e.id for e in entries])
        return entries


class SessionizeConformance:
    """The analytics contract. Mixed into `StoreConformance`."""

    def analytics(self, store: Store, clock: ManualClock, **rules: Any) -> Analytics:
        return Analytics(store.sessionization, clock, Rules(**rules))

    # -- the timeout, at T - 1, T and T + 1 --------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("gap", "same"), [(T - 1, True), (T, True), (T + 1, False)])
    async def test_timeout_extends_up_to_exactly_t(
        self, store: Store, clock: ManualClock, gap: int, same: bool
    ) -> None:
        a = self.analytics(store, clock)
        first = await a.ingest(a.hit("d1", 0, path="/a"))
        assert first.statuses == ["joined"]
        (sid,) = first.sessions
        assert first.started == [(sid, a.t0 - 1)]
        second = await a.ingest(a.hit("d1", gap, path="/b"))
        assert second.statuses == ["joined"]
        if same:
            assert second.sessions == [sid]
            assert (second.started, second.ended) == ([], [])
            row = second.rows[sid]
            assert (row.started_at, row.ended_at, row.duration_ms) == (a.t0, a.t0 + gap, gap)
            assert (row.event_count, row.entry_path, row.exit_path) == (2, "/a", "/b")
            assert not row.closed
        else:
            (new,) = second.sessions
            assert new != sid
            assert second.ended == [(sid, a.t0 + 1)]  # its last event + 1 ms
            assert second.started == [(new, a.t0 + gap - 1)]
            closed = second.rows[sid]
            assert closed.closed
            assert (closed.ended_at, closed.duration_ms, closed.event_count) == (a.t0, 0, 1)
        assert await a.sz.open_sessions(a.project) == 1

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("extra", "same"), [(-1, True), (0, True), (1, False)])
    async def test_max_length_rolls_to_a_new_session(
        self, store: Store, clock: ManualClock, extra: int, same: bool
    ) -> None:
        a = self.analytics(store, clock, max_length_ms=3 * T)
        sid = (await a.ingest(a.hit("d1", 0))).sessions[0]
        for k in (1, 2):
            assert (await a.ingest(a.hit("d1", k * T))).sessions == [sid]
        last = await a.ingest(a.hit("d1", 3 * T + extra))
        assert (last.sessions == [sid]) is same
        assert len(last.ended) == (0 if same else 1)

    @pytest.mark.asyncio
    async def test_no_max_length_lets_a_session_run(self, store: Store, clock: ManualClock) -> None:
        a = self.analytics(store, clock, max_length_ms=None)
        sid = (await a.ingest(a.hit("d1", 0))).sessions[0]
        step = await a.ingest(*(a.hit("d1", k * T) for k in range(1, 200)))
        assert set(step.sessions) == {sid}
        assert step.rows[sid].duration_ms == 199 * T

    # -- out of order --------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_an_earlier_event_inside_joins_without_moving_the_end(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        sid = await a.ingest(a.hit("d1", 0, path="/in"), a.hit("d1", 600_000, path="/out"))
        step = await a.ingest(a.hit("d1", 300_000, path="/middle", name="click"))
        assert step.sessions == sid.sessions[:1]
        row = step.rows[sid.sessions[0]]
        assert (row.started_at, row.ended_at) == (a.t0, a.t0 + 600_000)
        assert (row.entry_path, row.exit_path, row.event_count) == ("/in", "/out", 3)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("before", "joins"), [(T - 1, True), (T, True), (T + 1, False)])
    async def test_an_event_up_to_t_before_the_start_moves_it_back(
        self, store: Store, clock: ManualClock, before: int, joins: bool
    ) -> None:
        a = self.analytics(store, clock, lateness_ms=3 * T)  # so only the T rule decides
        first = await a.ingest(a.hit("d1", 0, path="/second", referrer="https://b.example"))
        sid = first.sessions[0]
        step = await a.ingest(
            a.hit("d1", -before, path="/first", referrer="https://a.example", utm_source="ads")
        )
        if joins:
            assert step.placements == [Placement("joined", sid, "d1")]
            row = step.rows[sid]
            assert (row.started_at, row.ended_at) == (a.t0 - before, a.t0)
            assert (row.entry_path, row.exit_path) == ("/first", "/second")
            assert (row.referrer, row.utm_source) == ("https://a.example", "ads")
        else:
            assert step.placements == [Placement("late", None, "d1")]
            assert (step.started, step.ended, step.rows) == ([], [], {})

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("behind", "late"), [(L - 1, False), (L, False), (L + 1, True)])
    async def test_lateness_behind_the_devices_newest_event(
        self, store: Store, clock: ManualClock, behind: int, late: bool
    ) -> None:
        a = self.analytics(store, clock)
        sid = (await a.ingest(a.hit("d1", 0), a.hit("d1", 20 * 60_000))).sessions[0]
        step = await a.ingest(a.hit("d1", 20 * 60_000 - behind))
        if late:
            assert step.placements == [Placement("late", None, "d1")]
            assert step.outcome.late == 1
            assert step.rows == {}
        else:
            assert step.placements == [Placement("joined", sid, "d1")]
            assert step.rows[sid].event_count == 3

    @pytest.mark.asyncio
    async def test_a_closed_session_never_reopens_or_overlaps(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        first = (await a.ingest(a.hit("d1", 0), a.hit("d1", 60_000))).sessions[0]
        clock.advance(60_000 + T + 5 * 60_000 + 1)  # the wall-clock backstop closes it
        assert (await a.reap()).ended == [(first, a.t0 + 60_001)]
        # an event that would have extended it, had it come in time, opens a new session
        second = await a.ingest(a.hit("d1", 60_000 + 5 * 60_000))
        assert len(second.started) == 1
        (sid,) = second.sessions
        assert sid != first
        # within the lateness, and within T before the new start, but inside the closed one
        inside = await a.ingest(a.hit("d1", 60_000), a.hit("d1", 30_000))
        assert inside.placements == [Placement("late", None, "d1")] * 2
        assert (inside.started, inside.ended, inside.rows) == ([], [], {})
        assert inside.outcome.late == 2
        # one ms after the closed session's last event: the new one's start moves back
        after = await a.ingest(a.hit("d1", 60_001))
        assert after.placements == [Placement("joined", sid, "d1")]
        assert after.rows[sid].started_at == a.t0 + 60_001
        # closed too: nothing at or before its end opens anything, later events do
        clock.advance(10 * T)
        assert (await a.reap()).outcome == 1
        assert (await a.ingest(a.hit("d1", 60_000 + 5 * 60_000))).statuses == ["late"]
        later = await a.ingest(a.hit("d1", 60_000 + 5 * 60_000 + 1))
        assert later.statuses == ["joined"]
        assert len(later.started) == 1
        assert await a.sz.open_sessions(a.project) == 1

    # -- duplicates ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_duplicate_changes_nothing_for_a_day(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock, max_length_ms=None)
        step = await a.ingest(a.hit("d1", 0, event_id="x1", dedup=True, revenue=500))
        sid = step.sessions[0]
        again = await a.ingest(
            a.hit("d1", 1000, event_id="x1", dedup=True, revenue=500),
            a.hit("d1", 2000, event_id="x1", dedup=True),
        )
        assert again.placements == [Placement("duplicate"), Placement("duplicate")]
        assert again.outcome.duplicate == 2
        assert (again.rows, again.started) == ({}, [])
        clock.advance(DAY - 1)
        assert (await a.ingest(a.hit("d1", 3000, event_id="x1", dedup=True))).statuses == [
            "duplicate"
        ]
        clock.advance(1)
        later = await a.ingest(a.hit("d1", 4000, event_id="x1", dedup=True, revenue=500))
        assert later.placements == [Placement("joined", sid, "d1")]
        assert later.rows[sid].revenue == 1000
        # ids the server generated are not remembered: the same one twice is two events
        twice = await a.ingest(a.hit("d1", 5000, event_id="g"), a.hit("d1", 5000, event_id="g"))
        assert twice.statuses == ["joined", "joined"]

    @pytest.mark.asyncio
    async def test_a_step_says_which_of_its_hits_were_late_and_which_duplicates(
        self, store: Store, clock: ManualClock
    ) -> None:
        """The indices a shared step splits its senders' counts by (`ingest_together`)."""
        a = self.analytics(store, clock)
        await a.ingest(a.hit("d1", 0, event_id="x1", dedup=True), a.hit("d2", L + 10_000))
        step = await a.ingest(
            a.hit("d1", 1000, event_id="x2", dedup=True),
            a.hit("d1", 2000, event_id="x1", dedup=True),  # seen in the earlier step
            a.hit("d2", 9_999),  # more than L behind d2's newest
            a.hit("d1", 3000, event_id="x2", dedup=True),  # seen earlier in this step
            a.hit(None, 3000, profile_id="nobody"),
            a.hit("d2", L + 20_000),
            a.hit("d2", 0),
        )
        assert step.statuses == [
            "joined", "duplicate", "late", "duplicate", "unattached", "joined", "late",
        ]  # fmt: skip
        o = step.outcome
        assert (o.joined, o.late, o.duplicate, o.unattached) == (2, 2, 2, 1)
        assert (o.late_at, o.duplicate_at) == ((2, 6), (1, 3))
        # the common case: none, and nothing more in the reply
        plain = (await a.ingest(a.hit("d1", 4000), a.hit("d3", 4000))).outcome
        assert (plain.late_at, plain.duplicate_at) == ((), ())

    # -- identity ------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_identify_and_profile_only_events(self, store: Store, clock: ManualClock) -> None:
        a = self.analytics(store, clock)
        assert (await a.ingest(a.hit(None, 0, profile_id="u1"))).placements == [
            Placement("unattached")
        ]
        anon = await a.ingest(a.hit("d1", 0))
        sid = anon.sessions[0]
        assert anon.rows[sid].profile_id is None
        identified = await a.ingest(a.hit("d1", 1000, name="login", profile_id="u1"))
        assert identified.rows[sid].profile_id == "u1"
        server = await a.ingest(a.hit(None, 2000, name="purchase", profile_id="u1", revenue=42))
        assert server.placements == [Placement("joined", sid, "d1")]
        assert (server.rows[sid].revenue, server.rows[sid].ended_at) == (42, a.t0 + 2000)
        # a profile-only event that does not fit the session's timing opens nothing
        beyond = await a.ingest(a.hit(None, 2000 + T + 1, profile_id="u1"))
        assert beyond.placements == [Placement("unattached")]
        assert beyond.started == []
        # the session ends: the pointer goes with it
        clock.advance(10 * T)
        assert (await a.reap()).outcome == 1
        assert (await a.ingest(a.hit(None, 3000, profile_id="u1"))).statuses == ["unattached"]

    @pytest.mark.asyncio
    async def test_a_pointer_naming_another_device_survives_an_older_sessions_end(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        on_phone = (await a.ingest(a.hit("phone", 0, profile_id="u1"))).sessions[0]
        on_laptop = (await a.ingest(a.hit("laptop", 60_000, profile_id="u1"))).sessions[0]
        # the phone's session ends (split by a new event), the laptop's stays open
        await a.ingest(a.hit("phone", 60_000 + T + 1))
        step = await a.ingest(a.hit(None, 60_000 + 1000, profile_id="u1"))
        assert step.placements == [Placement("joined", on_laptop, "laptop")]
        assert on_phone != on_laptop

    @pytest.mark.asyncio
    async def test_a_session_continues_under_the_previous_days_device_id(
        self, store: Store, clock: ManualClock
    ) -> None:
        """Anonymous traffic: today's hash is preferred, but an open session under
        yesterday's (a session open across midnight) continues."""
        a = self.analytics(store, clock)
        sid = (await a.ingest(a.hit("yesterday", 0))).sessions[0]
        both = ("today", "yesterday")
        step = await a.ingest(a.hit(None, 60_000, devices=both))
        assert step.placements == [Placement("joined", sid, "yesterday")]
        other = await a.ingest(a.hit(None, 60_000, devices=("today2", "yesterday2")))
        assert other.placements[0].device == "today2"
        assert other.started == [(other.sessions[0], a.t0 + 60_000 - 1)]

    # -- rows --------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_session_row_adds_up_its_events(self, store: Store, clock: ManualClock) -> None:
        a = self.analytics(store, clock)
        step = await a.ingest(
            a.hit("d1", 0, path="/", referrer="https://news.example", utm_source="hn",
                  utm_medium="social", utm_campaign="launch", utm_term="t", utm_content="c"),
            a.hit("d1", 10_000, path="/pricing", utm_source="other"),
            a.hit("d1", 20_000, name="purchase", path="/pay", revenue=1999),
            a.hit("d1", 30_000, name="purchase", path="/pay", revenue=1),
        )  # fmt: skip
        row = step.rows[step.sessions[0]]
        assert (row.event_count, row.screen_view_count, row.revenue) == (4, 2, 2000)
        assert (row.entry_path, row.exit_path) == ("/", "/pay")
        assert (row.referrer, row.utm_source, row.utm_medium) == (
            "https://news.example", "hn", "social",
        )  # fmt: skip
        assert (row.utm_campaign, row.utm_term, row.utm_content) == ("launch", "t", "c")
        assert (row.device_id, row.project_id, row.duration_ms) == ("d1", a.project, 30_000)
        assert not row.is_bounce
        single = await a.ingest(a.hit("d2", 0))
        assert single.rows[single.sessions[0]].is_bounce
        clicked = await a.ingest(a.hit("d3", 0), a.hit("d3", 1, name="click"))
        assert not clicked.rows[clicked.sessions[0]].is_bounce

    @pytest.mark.asyncio
    async def test_versions_grow_with_every_change(self, store: Store, clock: ManualClock) -> None:
        a = self.analytics(store, clock)
        sid = (await a.ingest(a.hit("d1", 0))).sessions[0]
        seen = [(await a.ingest(a.hit("d1", k * 1000))).rows[sid].version for k in range(1, 5)]
        assert seen == sorted(seen)
        assert len(set(seen)) == 4
        clock.advance(10 * T)
        closed = await a.reap()
        assert closed.rows[sid].version > seen[-1]
        assert closed.rows[sid].closed

    # -- the reaper ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("idle", "closes"), [(T - 1, False), (T, False), (T + 1, True)])
    async def test_the_reaper_follows_the_projects_newest_event(
        self, store: Store, clock: ManualClock, idle: int, closes: bool
    ) -> None:
        a = self.analytics(store, clock)
        sid = (await a.ingest(a.hit("d1", 0))).sessions[0]
        await a.ingest(a.hit("d2", idle))  # moves the watermark; the wall clock stays
        assert await a.sz.watermark(a.project) == a.t0 + idle
        step = await a.reap()
        assert step.outcome == int(closes)
        assert step.ended == ([(sid, a.t0 + 1)] if closes else [])
        if closes:
            assert step.rows[sid].closed
            assert (step.rows[sid].ended_at, step.rows[sid].duration_ms) == (a.t0, 0)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("idle", "closes"), [(-1, False), (0, False), (1, True)])
    async def test_the_wall_clock_backstop(
        self, store: Store, clock: ManualClock, idle: int, closes: bool
    ) -> None:
        """No events anywhere (a paused ingest), yet sessions close once the wall clock is
        past timeout + reap lag."""
        a = self.analytics(store, clock, reap_lag_ms=5 * 60_000)
        a.t0 = clock.now_ms()
        await a.ingest(a.hit("d1", 0))
        clock.advance(T + 5 * 60_000 + idle)
        assert (await a.reap()).outcome == int(closes)

    @pytest.mark.asyncio
    async def test_idle_sessions_counts_open_sessions_last_seen_before_the_cutoff(
        self, store: Store, clock: ManualClock
    ) -> None:
        """What `sessionary check` reports as owed a close: open sessions only, and a
        session whose last event is at the cutoff is not before it."""
        a = self.analytics(store, clock)
        await a.ingest(a.hit("d1", 0), a.hit("d2", 10))
        counts = [await a.sz.idle_sessions(a.project, a.t0 + at) for at in (0, 1, 10, 11)]
        assert counts == [0, 1, 1, 2]
        clock.advance(T + a.rules.reap_lag_ms + 11)
        assert (await a.reap()).outcome == 2
        assert await a.sz.idle_sessions(a.project, clock.now_ms()) == 0

    @pytest.mark.asyncio
    async def test_a_session_extended_after_the_close_was_due_stays_open(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        sid = (await a.ingest(a.hit("d1", 0))).sessions[0]
        await a.ingest(a.hit("d2", T + 1))  # d1 is now due by the watermark
        extended = await a.ingest(a.hit("d1", T))  # exactly T: joins, before any reaper
        assert extended.sessions == [sid]
        step = await a.reap()
        assert (step.outcome, step.ended) == (0, [])

    @pytest.mark.asyncio
    async def test_reapers_and_ingests_racing_close_each_session_once(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        devices = [f"d{i}" for i in range(40)]
        opened = await a.ingest(*(a.hit(d, 0) for d in devices))
        await a.ingest(a.hit("clock", T + 1))
        # five reapers race each other and an event per device that would extend its session
        results = await asyncio.gather(
            *(a.sz.close_idle(a.project, a.rules, clock.now_ms(), 7) for _ in range(5)),
            *(a.sz.sessionize(a.project, a.rules, [a.hit(d, T)], clock.now_ms(), f"r{d}x")
              for d in devices),
        )  # fmt: skip
        entries = await a.drain()
        ended = Counter(sid for e in entries for sid, _ in e.ended)
        started = Counter(sid for e in entries for sid, _ in e.started)
        assert all(n == 1 for n in ended.values())
        assert all(n == 1 for n in started.values())
        closed_by_reapers = sum(r for r in results[:5] if isinstance(r, int))
        assert closed_by_reapers == len(ended)
        # a device whose session was closed first got a new one for its event; the others
        # were extended and stay open
        assert len(started) == len(ended)
        assert set(ended) <= set(opened.sessions)
        assert await a.sz.open_sessions(a.project) == len(devices) + 1

    @pytest.mark.asyncio
    async def test_concurrent_batches_for_one_device_open_one_session(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        await asyncio.gather(
            *(a.sz.sessionize(a.project, a.rules, [a.hit("d1", i)], clock.now_ms(), f"c{i}x")
              for i in range(50))
        )  # fmt: skip
        entries = await a.drain()
        assert sum(len(e.started) for e in entries) == 1
        sessions = {p.session_id for e in entries for p in e.placements}
        assert len(sessions) == 1
        rows = [r for e in entries for r in e.sessions]
        assert max(r.event_count for r in rows) == 50
        assert max(r.version for r in rows) == 50

    # -- vacuum and the outbox -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_vacuum_closes_what_is_owed_and_forgets_old_state(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        week = 7 * DAY
        stuck = (await a.ingest(a.hit("stuck", 0, profile_id="u1"))).sessions[0]
        await a.ingest(a.hit("gone", 0), a.hit("gone", T + 1))  # one closed, one open
        await a.ingest(a.hit("dup", 0, event_id="once", dedup=True))
        clock.advance(week + T + 2)  # every last event is now more than a week old
        report = await a.sz.vacuum(a.project, a.rules, clock.now_ms(), week, 1000)
        assert report.closed == 3  # stuck, gone's second, dup's
        assert report.dedup == 1
        entries = await a.drain()
        ended = [sid for e in entries for sid, _ in e.ended]
        assert stuck in ended
        assert len(ended) == 3
        again = await a.sz.vacuum(a.project, a.rules, clock.now_ms() + week + 1, week, 1000)
        assert again.states == 3  # the closed sessions' memories, once they are old too
        assert again.closed == 0
        assert await a.sz.open_sessions(a.project) == 0
        # the id is forgotten: it counts again; the state is gone: the device starts afresh
        fresh = await a.ingest(a.hit("dup", 0, event_id="once", dedup=True))
        assert fresh.statuses == ["joined"]
        assert len(fresh.started) == 1

    @pytest.mark.asyncio
    async def test_the_outbox_keeps_entries_until_acknowledged(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        for k in range(5):
            await a.sz.sessionize(a.project, a.rules, [a.hit(f"d{k}", k)], clock.now_ms(), f"o{k}x")
        first = await a.sz.outbox(a.project, 2)
        assert [e.placements[0].device for e in first] == ["d0", "d1"]
        assert (await a.sz.outbox(a.project, 2))[0].id == first[0].id  # not taken by reading
        await a.sz.ack(a.project, [first[0].id])
        await a.sz.ack(a.project, [first[0].id])  # idempotent
        rest = await a.sz.outbox(a.project, 10)
        assert [e.placements[0].device for e in rest] == ["d1", "d2", "d3", "d4"]
        hit = rest[0].hits[0]
        assert (hit.event_id, hit.ts, hit.name) == ("e1", a.t0 + 1, "screen_view")
        assert a.project in await a.sz.projects()
        assert await a.sz.outbox("never-seen", 10) == []
        assert await a.sz.watermark("never-seen") is None

    @pytest.mark.asyncio
    async def test_hits_round_trip_through_the_outbox(
        self, store: Store, clock: ManualClock
    ) -> None:
        a = self.analytics(store, clock)
        hit = a.hit(
            "d1", 5, name="purchase", event_id="ünïcode-id", dedup=True, profile_id="p ✓",
            path="/ä?x=1", referrer="https://r.example/?q=1", utm_source="s",
            utm_medium="m", utm_campaign="c", utm_term="t", utm_content="k", revenue=-250,
            properties=b'{"plan":"pro","n":[1,2.5,null]}',
        )  # fmt: skip
        await a.sz.sessionize(a.project, a.rules, [hit], clock.now_ms(), "rtx")
        (entry,) = await a.drain()
        assert entry.hits == [hit]

    # -- the same answers as the rules in Python -------------------------------------------------

    def test_matches_the_rules_on_random_traffic(self, store_url: str) -> None:
        """The backend and the rules in Python (the memory backend) agree on every placement,
        row, emission and count, over random traffic around the rules' edges."""
        clock = ManualClock()
        with asyncio.Runner() as runner:
            store = runner.run(connect(store_url, clock=clock))
            reference = MemoryBackend()

            @settings(
                max_examples=getattr(self, "hypothesis_examples", 50),
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(traffic())
            def agree(ops: list[tuple[str, Any]]) -> None:
                runner.run(self._compare(store, reference, clock, ops))

            try:
                agree()
            finally:
                runner.run(store.close())

    async def _compare(
        self, store: Store, reference: MemoryBackend, clock: ManualClock, ops: list[tuple[str, Any]]
    ) -> None:
        a = self.analytics(store, clock, max_length_ms=4 * T)
        b = Analytics(reference, clock, a.rules)
        b.project = a.project
        for n, (op, arg) in enumerate(ops):
            if op == "ingest":
                hits = [_hit(a, *spec) for spec in arg]
                nonce = f"{a.project}o{n}x"
                got: Any = await a.sz.sessionize(a.project, a.rules, hits, clock.now_ms(), nonce)
                want: Any = await b.sz.sessionize(b.project, b.rules, hits, clock.now_ms(), nonce)
            else:
                clock.advance(arg)
                got = await a.sz.close_idle(a.project, a.rules, clock.now_ms(), 1000)
                want = await b.sz.close_idle(b.project, b.rules, clock.now_ms(), 1000)
            assert got == want, (op, arg)
            assert _comparable(await a.drain()) == _comparable(await b.drain()), (op, arg)
        assert await a.sz.open_sessions(a.project) == await b.sz.open_sessions(b.project)
        assert await a.sz.watermark(a.project) == await b.sz.watermark(b.project)


def _hit(
    a: Analytics, device: int, at: int, name: str, profile: int | None, dup: int | None
) -> Hit:
    devices = () if device < 0 else (f"d{device}",)
    fields: dict[str, Any] = {"devices": devices}
    if profile is not None:
        fields["profile_id"] = f"u{profile}"
    elif not devices:
        fields["profile_id"] = "u0"
    if dup is not None:
        fields.update(event_id=f"x{dup}", dedup=True)
    return a.hit(None, at, name, path=f"/{at % 7}", revenue=at % 3, **fields)


def _comparable(entries: list[OutboxEntry]) -> list[Any]:
    return [
        (
            e.placements,
            sorted(e.sessions, key=lambda row: row.id),
            e.started,
            e.ended,
            [h.event_id for h in e.hits],
        )
        for e in entries
    ]


def traffic() -> st.SearchStrategy[list[tuple[str, Any]]]:
    """Batches of hits from a few devices, at times that cluster around the rules' edges,
    mixed with reaper runs after the clock moves."""
    near = st.sampled_from([0, 1, T - 1, T, T + 1, L, L + 1, 4 * T, 4 * T + 1]).flatmap(
        lambda edge: st.integers(edge - 2, edge + 2)
    )
    offsets = st.one_of(near, st.integers(-T, 6 * T), near.map(lambda x: -x))
    hit = st.tuples(
        st.integers(-1, 3),  # the device (-1: profile only)
        offsets,
        st.sampled_from(["screen_view", "screen_view", "click"]),
        st.one_of(st.none(), st.integers(0, 2)),  # the profile
        st.one_of(st.none(), st.integers(0, 5)),  # a client id that may repeat
    )
    op = st.one_of(
        st.tuples(st.just("ingest"), st.lists(hit, min_size=1, max_size=8)),
        st.tuples(st.just("reap"), st.sampled_from([0, T, T + 1, 2 * T, 10 * T])),
    )
    return st.lists(op, min_size=1, max_size=12)
