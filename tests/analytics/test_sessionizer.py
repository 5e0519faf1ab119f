"""The Sessionizer on every backend: event validation, clamping, anonymous device ids and their
daily salts, the jobs (reap, vacuum, drain) and a sink that fails."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from sessionary import ManualClock, Store, connect, ids
from sessionary.analytics import BadEvent, Rules, Sessionizer, TrackEvent
from sessionary.analytics.devices import DAY_MS, day_of
from sessionary.analytics.sink import Sink
from sessionary.errors import ValidationError
from sessionary.sessionize import OutboxEntry

T = 30 * 60_000
_ids = itertools.count()


def event(**fields: Any) -> TrackEvent:
    return TrackEvent.parse({"name": "screen_view", **fields})


@pytest.fixture
def project() -> str:
    return f"shop{next(_ids)}"


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([], "a JSON object"),
        ({"device_id": "d"}, "name is"),
        ({"name": "session_start", "device_id": "d"}, "emitted by sessionary"),
        ({"name": "session_end", "device_id": "d"}, "emitted by sessionary"),
        ({"name": "x", "device_id": "d", "timestamp": "yesterday"}, "timestamp"),
        ({"name": "x", "device_id": "d", "timestamp": 1.5}, "timestamp"),
        ({"name": "x", "device_id": "d", "event_id": "a/b"}, "event_id"),
        ({"name": "x", "device_id": "d", "revenue": 9.99}, "revenue"),
        ({"name": "x", "device_id": "d", "revenue": 10**13}, "revenue"),
        ({"name": "x", "device_id": "d", "properties": [1]}, "properties"),
        ({"name": "x", "device_id": "d", "properties": {"a": "x" * 17000}}, "16 KiB"),
        ({"name": "x", "device_id": "d", "path": 3}, "path"),
        ({"name": "x", "device_id": "d", "colour": "red"}, "unknown field 'colour'"),
        ({"name": "x"}, "needs a device_id"),
        ({"name": "x", "device_id": "d", "project_id": "other"}, "another project"),
    ],
)
def test_bad_events_say_why(raw: Any, reason: str) -> None:
    with pytest.raises(BadEvent, match=reason):
        TrackEvent.parse(raw, project_id="shop")


def test_utm_and_path_come_from_the_url_when_absent() -> None:
    parsed = event(
        device_id="d",
        url="https://shop.example/pricing?utm_source=hn&utm_medium=social&utm_campaign=x",
        utm_medium="email",
    )
    assert parsed.path == "/pricing"
    assert (parsed.utm_source, parsed.utm_medium, parsed.utm_campaign) == ("hn", "email", "x")
    assert parsed.utm_term is None
    assert event(device_id="d", url="https://a.example", path="/own").path == "/own"


# -- ingest -------------------------------------------------------------------------------------


async def test_future_events_are_clamped_beyond_a_minute_of_skew(
    store: Store, clock: ManualClock, sink: Sink, project: str
) -> None:
    s = Sessionizer(store, sink=sink)
    now = clock.now_ms()
    await s.ingest(project, [event(device_id="a", timestamp=now + 60_000)])
    await s.ingest(project, [event(device_id="b", timestamp=now + 60_001)])
    await s.ingest(project, [event(device_id="c")])
    entries = await s.backend.outbox(project, 10)
    assert [e.hits[0].ts for e in entries] == [now + 60_000, now, now]
    assert await s.backend.watermark(project) == now + 60_000


async def test_a_batch_is_one_project_and_at_most_a_thousand(store: Store, project: str) -> None:
    s = Sessionizer(store)
    with pytest.raises(ValidationError, match="at most 1000"):
        await s.ingest(project, [event(device_id="d")] * 1001)
    with pytest.raises(ValidationError, match="project id"):
        await s.ingest("no{braces}", [event(device_id="d")])
    assert (await s.ingest(project, [])).joined == 0


async def test_anonymous_visitors_get_a_stable_daily_device_id(
    store: Store, clock: ManualClock, project: str
) -> None:
    s = Sessionizer(store)
    visitor = {"ip": "203.0.113.9", "user_agent": "Firefox"}
    first = await s.devices.candidates(project, "203.0.113.9", "Firefox", clock.now_ms())
    again = await s.devices.candidates(project, "203.0.113.9", "Firefox", clock.now_ms())
    other = await s.devices.candidates(project, "203.0.113.10", "Firefox", clock.now_ms())
    elsewhere = await s.devices.candidates("other", "203.0.113.9", "Firefox", clock.now_ms())
    assert first == again
    assert first[0] != other[0]
    assert first[0] != elsewhere[0]
    assert "203.0.113.9" not in first[0]
    outcome = await s.ingest(project, [event(**visitor), event(**visitor)])
    assert (outcome.joined, outcome.started) == (2, 1)


async def test_a_session_open_at_2355_continues_past_midnight_and_salts_die_after_48h(
    store: Store, clock: ManualClock, project: str
) -> None:
    clock.advance(DAY_MS - clock.now_ms() % DAY_MS - 5 * 60_000)  # 23:55 UTC
    day = day_of(clock.now_ms())
    s = Sessionizer(store)
    visitor = {"ip": "198.51.100.4", "user_agent": "Safari"}
    before = await s.devices.candidates(
        project, visitor["ip"], visitor["user_agent"], clock.now_ms()
    )
    await s.ingest(project, [event(**visitor)])
    clock.advance(10 * 60_000)  # 00:05, a new day and a new salt
    after = await s.devices.candidates(
        project, visitor["ip"], visitor["user_agent"], clock.now_ms()
    )
    assert after[0] != before[0]  # today's id is new...
    assert after[1] == before[0]  # ...and yesterday's is still tried
    outcome = await s.ingest(project, [event(**visitor)])
    assert (outcome.joined, outcome.started) == (1, 0)  # the same session
    (entry,) = (await s.backend.outbox(project, 10))[1:]
    assert entry.placements[0].device == before[0]
    # a new visitor today gets today's id only
    fresh = await s.ingest(project, [event(ip="198.51.100.5", user_agent="Safari")])
    assert fresh.started == 1
    # 48 h after its day began, a salt is gone for good, from the store too
    assert await s.devices.salt(day) != b""
    clock.advance(DAY_MS - 5 * 60_000)  # the day after tomorrow, 00:00
    assert await s.devices.salt(day) == b""
    await s.devices.namespace.reap()
    assert await s.devices.namespace.get(ids.derived(f"analytics.salt:{day}")) is None
    assert await s.devices.namespace.count() == 1  # yesterday's, still tried for today


async def test_the_salt_is_shared_by_every_process(shared_url: str, clock: ManualClock) -> None:
    one, two = await connect(shared_url, clock=clock), await connect(shared_url, clock=clock)
    try:
        a, b = Sessionizer(one), Sessionizer(two)
        now = clock.now_ms()
        assert await a.devices.candidates("p", "192.0.2.1", "UA", now) == (
            await b.devices.candidates("p", "192.0.2.1", "UA", now)
        )
    finally:
        await one.close()
        await two.close()


# -- jobs ---------------------------------------------------------------------------------------


async def test_reap_drain_and_vacuum_end_to_end(
    store: Store, clock: ManualClock, sink: Sink, project: str
) -> None:
    s = Sessionizer(store, {project: Rules()}, sink=sink)
    now = clock.now_ms()
    await s.ingest(
        project,
        [
            event(device_id=f"d{i}", timestamp=now + k * 1000, path=f"/{k}")
            for i in range(5)
            for k in range(3)
        ],
    )
    await s.ingest(project, [event(device_id="late", timestamp=now - T)])  # opens one more
    clock.advance(T + 5 * 60_000 + 3000)
    assert await s.reap() == 6
    assert await s.reap() == 0
    assert await s.drain() >= 3
    page = await sink.sessions(project)
    assert len(page.sessions) == 6
    assert all(row.closed for row in page.sessions)
    assert sorted(row.event_count for row in page.sessions) == [1, 3, 3, 3, 3, 3]
    stats = await sink.stats(project, start=None, end=None)
    assert stats.sessions == 6
    report = await s.vacuum(timedelta(days=7))
    assert report.total() == 0  # nothing is a week old yet
    clock.advance(timedelta(days=8))
    assert (await s.vacuum(timedelta(days=7))).states == 6
    assert await s.backend.open_sessions(project) == 0


class FlakySink:
    """Writes through to a real sink, but the first write fails after storing half."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.failures = 1

    async def write(self, entries: Sequence[OutboxEntry]) -> None:
        if self.failures:
            self.failures -= 1
            await self.inner.write(entries[: len(entries) // 2])
            raise ConnectionError("the sink went away mid-write")
        await self.inner.write(entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_sink_that_fails_once_ends_with_exactly_one_row_each(
    store: Store, clock: ManualClock, sink: Sink, project: str
) -> None:
    flaky = FlakySink(sink)
    s = Sessionizer(store, sink=flaky)
    for i in range(4):
        await s.ingest(project, [event(device_id=f"d{i}", event_id=f"e{i}")])
    with pytest.raises(ConnectionError):
        await s.drain()
    assert len(await s.backend.outbox(project, 10)) == 4  # nothing acknowledged
    assert await s.drain() == 4
    assert await s.drain() == 0
    page = await sink.sessions(project)
    assert len(page.sessions) == 4
    clock.advance(T * 3)
    await s.reap()
    await s.drain()
    rows = (await sink.sessions(project)).sessions
    assert len(rows) == 4
    assert all(row.closed for row in rows)
