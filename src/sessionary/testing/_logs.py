"""The event-log half of the conformance suite."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from sessionary.clock import ManualClock
from sessionary.errors import (
    InvalidCursor,
    LogClosed,
    SessionNotFound,
    ValidationError,
    VersionConflict,
)
from sessionary.logs import Cursor, Event, LogEvent, LogReset
from sessionary.store import Namespace, Store

HOUR = timedelta(hours=1)


async def collect(ns: Namespace, session_id: str, after: Any = None) -> list[Any]:
    return [item async for item in ns.follow(session_id, after)]


class LogConformance:
    """Every session's event log: cursors, idempotent appends, trimming, following."""

    @pytest.mark.asyncio
    async def test_events_round_trip_in_order(self, store: Store, clock: ManualClock) -> None:
        runs = store.namespace("log-rt", idle_ttl=HOUR)
        session = await runs.create()
        values = [None, 1, 2**62, 1.5, "text ✓", [1, {"a": []}], {"nested": {"x": [True]}}]
        cursors = []
        for n, value in enumerate(values):
            clock.advance(n)
            cursors.append(await runs.append(session.id, f"t{n}", value))
        assert [c.seq for c in cursors if c is not None] == list(range(1, len(values) + 1))
        page = await runs.read(session.id)
        assert [e.data for e in page.events] == values
        assert [e.type for e in page.events] == [f"t{n}" for n in range(len(values))]
        assert [e.cursor for e in page.events] == cursors
        assert page.events[-1].ts == clock.now_ms()
        assert (page.reset, page.closed, page.last) == (None, False, cursors[-1])
        assert (await runs.read(session.id, after=cursors[-1])).last_ts == clock.now_ms()
        after_third = await runs.read(session.id, after=cursors[2])
        assert [e.data for e in after_third.events] == values[3:]
        assert (await runs.read(session.id, after=str(cursors[-1]))).events == []
        limited = await runs.read(session.id, limit=2)
        assert [e.data for e in limited.events] == values[:2]
        fresh = await runs.create()
        empty = await runs.read(fresh.id)
        assert (empty.events, empty.last, empty.reset, empty.last_ts) == ([], None, None, None)

    @pytest.mark.asyncio
    async def test_a_retried_append_is_stored_once(self, store: Store) -> None:
        runs = store.namespace("log-idem", idle_ttl=HOUR)
        session = await runs.create()
        first = await runs.append(session.id, "chunk", "a", producer="w1", seq=1)
        again = await runs.append(session.id, "chunk", "a", producer="w1", seq=1)
        assert first is not None
        assert again is None
        await runs.append(session.id, "chunk", "x", producer="w2", seq=1)  # another producer
        cursors = await runs.extend(
            session.id,
            [Event("chunk", "b", producer="w1", seq=2), Event("chunk", "a", producer="w1", seq=1)],
        )
        assert cursors[1] is None
        page = await runs.read(session.id)
        assert [e.data for e in page.events] == ["a", "x", "b"]

    @pytest.mark.asyncio
    async def test_a_final_event_closes_the_log(self, store: Store) -> None:
        runs = store.namespace("log-final", idle_ttl=HOUR)
        session = await runs.create()
        await runs.append(session.id, "chunk", 1)
        end = await runs.append(session.id, "end", {"status": "completed"}, final=True)
        with pytest.raises(LogClosed):
            await runs.append(session.id, "chunk", 2)
        with pytest.raises(LogClosed):
            await runs.update(session.id, data={"late": True}, append=[Event("chunk", 3)])
        page = await runs.read(session.id)
        assert (page.closed, page.last, page.events[-1].final) == (True, end, True)
        stored = await runs.get(session.id)
        assert stored is not None
        assert stored.data == {}  # the refused update wrote nothing
        with pytest.raises(ValidationError):
            await runs.extend(session.id, [Event("end", final=True), Event("after")])

    @pytest.mark.asyncio
    async def test_cursors_of_other_logs_the_future_or_garbage_are_refused(
        self, store: Store
    ) -> None:
        runs = store.namespace("log-cursor", idle_ttl=HOUR)
        one, other = await runs.create(), await runs.create()
        mine = await runs.append(one.id, "e")
        theirs = await runs.append(other.id, "e")
        assert mine is not None
        assert theirs is not None
        with pytest.raises(InvalidCursor):
            await runs.read(one.id, after=theirs)
        with pytest.raises(InvalidCursor):
            await runs.read(one.id, after=Cursor.of(runs.name, one.id, 5))  # not issued yet
        for garbage in ("", "abc", "1", "1-zzzzzzzz", "-1-00000000", str(mine) + "0", 7):
            with pytest.raises(InvalidCursor):
                await runs.read(one.id, after=garbage)  # type: ignore[arg-type]
        with pytest.raises(InvalidCursor):
            await collect(runs, one.id, after=theirs)
        assert mine < Cursor.of(runs.name, one.id, 10)  # cursors compare by number

    @pytest.mark.asyncio
    async def test_trimming_by_length_signals_a_reset(self, store: Store) -> None:
        runs = store.namespace("log-len", idle_ttl=HOUR, log_max_length=5)
        session = await runs.create()
        cursors = [await runs.append(session.id, "e", n) for n in range(1, 13)]
        whole = await runs.read(session.id)
        assert [e.data for e in whole.events] == [8, 9, 10, 11, 12]
        assert whole.reset == LogReset(cursors[7], cursors[11], False)
        behind = await runs.read(session.id, after=cursors[2])
        assert behind.reset is not None
        assert [e.data for e in behind.events] == [8, 9, 10, 11, 12]
        current = await runs.read(session.id, after=cursors[8])
        assert current.reset is None
        assert [e.data for e in current.events] == [10, 11, 12]
        followed = await asyncio.wait_for(
            _until_final(runs, session.id, cursors[2], [Event("end", final=True)]), 10
        )
        assert isinstance(followed[0], LogReset)
        assert [e.data for e in followed[1:]][:5] == [8, 9, 10, 11, 12]

    @pytest.mark.asyncio
    async def test_trimming_by_age_keeps_the_newest(self, store: Store, clock: ManualClock) -> None:
        runs = store.namespace("log-age", idle_ttl=HOUR, log_max_age=timedelta(seconds=1))
        session = await runs.create()
        await runs.append(session.id, "e", 1)
        clock.advance(500)
        await runs.append(session.id, "e", 2)
        clock.advance(1100)
        await runs.append(session.id, "e", 3)
        page = await runs.read(session.id)
        assert [e.data for e in page.events] == [3]
        assert page.reset is not None
        clock.advance(5000)  # nothing new: nothing trimmed, the newest stays
        assert [e.data for e in (await runs.read(session.id)).events] == [3]

    @pytest.mark.asyncio
    async def test_update_and_append_land_together_or_not_at_all(
        self, store: Store, clock: ManualClock
    ) -> None:
        runs = store.namespace("log-cas", idle_ttl=HOUR, absolute_ttl=24 * HOUR)
        session = await runs.create(data={"status": "running"})
        done = await runs.update(
            session.id,
            data={"status": "completed"},
            expected_version=1,
            expires_at=clock.now_ms() + 60_000,
            append=[Event("end", {"status": "completed"}, final=True)],
        )
        assert done.expires_at == clock.now_ms() + 60_000
        with pytest.raises(VersionConflict):
            await runs.update(
                session.id,
                data={"status": "cancelled"},
                expected_version=1,
                append=[Event("end", {"status": "cancelled"}, final=True)],
            )
        page = await runs.read(session.id)
        assert [(e.type, e.data) for e in page.events] == [("end", {"status": "completed"})]
        longer = await runs.update(session.id, expires_at=clock.now_ms() + 10 * 3_600_000 * 24)
        assert longer.expires_at == clock.now_ms() + 3_600_000  # never past the policy

    @pytest.mark.asyncio
    async def test_the_log_lives_and_dies_with_its_session(
        self, store: Store, clock: ManualClock
    ) -> None:
        runs = store.namespace("log-life", idle_ttl=HOUR)
        session = await runs.create()
        await runs.extend(session.id, [Event("e", n) for n in range(5)])
        rotated = await runs.rotate(session.id)
        assert [e.data for e in (await runs.read(rotated.id)).events] == [0, 1, 2, 3, 4]
        with pytest.raises(SessionNotFound):
            await runs.read(session.id)
        with pytest.raises(SessionNotFound):
            await runs.append(session.id, "e")
        assert await runs.delete(rotated.id)
        with pytest.raises(SessionNotFound):
            await runs.read(rotated.id)
        expiring = await runs.create()
        await runs.append(expiring.id, "e")
        clock.advance(HOUR)
        with pytest.raises(SessionNotFound):
            await runs.read(expiring.id)
        assert [s.id for s in await runs.reap()] == [expiring.id]

    @pytest.mark.asyncio
    async def test_follow_replays_then_waits_with_no_gap_and_no_duplicate(
        self, store: Store
    ) -> None:
        runs = store.namespace("log-follow", idle_ttl=HOUR)
        session = await runs.create()
        await runs.extend(session.id, [Event("e", n) for n in range(50)])
        readers = [asyncio.create_task(collect(runs, session.id)) for _ in range(2)]
        late = asyncio.create_task(
            collect(runs, session.id, after=Cursor.of(runs.name, session.id, 25))
        )
        for n in range(50, 300):
            await runs.append(session.id, "e", n, producer="p", seq=n)
            if n % 37 == 0:
                await asyncio.sleep(0)  # let the followers catch up now and then
        await runs.append(session.id, "end", None, final=True)
        results = await asyncio.wait_for(asyncio.gather(*readers, late), 30)
        for got in results[:2]:
            assert [e.data for e in got] == [*range(300), None]
        assert [e.data for e in results[2]] == [*range(25, 300), None]
        assert all(isinstance(e, LogEvent) for r in results for e in r)
        assert await collect(runs, session.id, after=results[0][-1].cursor) == []

    @pytest.mark.asyncio
    async def test_a_read_bounded_in_bytes_stops_before_the_event_past_the_bound(
        self, store: Store
    ) -> None:
        runs = store.namespace("log-bytes", idle_ttl=HOUR)
        session = await runs.create()
        texts = ["x" * 98, "y" * 98, "z" * 98, "w" * 2000, "v"]  # 100, 100, 100, 2002, 3 bytes
        await runs.extend(session.id, [Event("e", t) for t in texts])
        page = await runs.read(session.id, max_bytes=250)
        assert [e.data for e in page.events] == texts[:2]
        assert page.last is not None
        assert page.last.seq == 5
        page = await runs.read(session.id, after=page.events[-1].cursor, max_bytes=250)
        assert [e.data for e in page.events] == texts[2:3]
        page = await runs.read(session.id, after=page.events[-1].cursor, max_bytes=1)
        assert [e.data for e in page.events] == texts[3:4]  # one event, even past the bound
        whole = await runs.read(session.id, max_bytes=0)
        assert [e.data for e in whole.events] == texts
        with pytest.raises(ValidationError):
            await runs.read(session.id, max_bytes=-1)
        # a follower pages through a log larger than its page bound, with no gap
        big = "b" * 60_000
        await runs.extend(session.id, [Event("e", big) for _ in range(10)])
        await runs.append(session.id, "end", None, final=True)
        assert [e.data for e in await collect(runs, session.id)] == [*texts, *[big] * 10, None]

    @pytest.mark.asyncio
    async def test_follow_of_an_unknown_session_raises(self, store: Store) -> None:
        from sessionary import ids

        runs = store.namespace("log-unknown", idle_ttl=HOUR)
        with pytest.raises(SessionNotFound):
            await collect(runs, ids.new_id())

    @pytest.mark.asyncio
    async def test_follow_ends_when_the_session_goes_away(self, store: Store) -> None:
        runs = store.namespace("log-gone", idle_ttl=HOUR)
        session = await runs.create()
        await runs.append(session.id, "e", 1)
        follower = asyncio.create_task(_collect_quick(runs, session.id))
        await asyncio.sleep(0)
        await runs.delete(session.id)
        got = await asyncio.wait_for(follower, 10)
        assert [e.data for e in got] == [1]


async def _collect_quick(ns: Namespace, session_id: str) -> list[Any]:
    return [item async for item in ns.follow(session_id, idle_s=0.05)]


async def _until_final(
    ns: Namespace, session_id: str, after: Cursor | None, closing: list[Event]
) -> list[Any]:
    follower = asyncio.create_task(collect(ns, session_id, after))
    await asyncio.sleep(0)
    await ns.extend(session_id, closing)
    return await follower
