"""Runs on every backend, driven by an injected clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from sessionary import ManualClock, Store
from sessionary.contract import LogEntry
from sessionary.logs import LogEvent
from sessionary.runs import (
    ActiveRunExists,
    ConversationNotFound,
    NotOwner,
    RunBusy,
    RunFinished,
    RunNotFound,
    Runs,
    RunsSettings,
)


@pytest.fixture
def runs(store: Store) -> Runs:
    return Runs(store, RunsSettings(lease_ttl="30s", retention="1h"))


async def events_of(runs: Runs, run_id: str, after: Any = None) -> list[LogEvent]:
    return [e async for e in runs.events(run_id, after) if isinstance(e, LogEvent)]


async def test_a_run_from_start_to_end_with_real_times(runs: Runs, clock: ManualClock) -> None:
    conversation = await runs.create_conversation("alice")
    created_at = clock.now_ms()
    run = await runs.start(conversation.id, "alice")
    assert (run.status, run.started_at, run.created_at) == ("queued", None, created_at)
    assert run.id.startswith("run_")
    clock.advance(1_000)
    async with runs.producer(run.id, worker="w1") as producer:
        running = await runs.get(run.id)
        assert (running.status, running.started_at) == ("running", created_at + 1_000)
        for n in range(3):
            clock.advance(100)
            await producer.emit("chunk", {"n": n})
        live = await runs.get(run.id)
        assert live.started_at is not None
        assert live.started_at <= live.last_activity_at <= clock.now_ms()
        assert live.last_activity_at == clock.now_ms()  # the last chunk, not a guess
        clock.advance(100)
        assert await producer.complete({"tokens": 3})
    done = await runs.get(run.id)
    assert (done.status, done.finished_at, done.result) == (
        "completed",
        clock.now_ms(),
        {"tokens": 3},
    )
    assert done.duration_ms == 400
    events = await events_of(runs, run.id)
    assert [e.type for e in events] == ["status", "status", "chunk", "chunk", "chunk", "end"]
    assert events[-1].data == {"status": "completed", "result": {"tokens": 3}}
    assert events[-1].final
    assert done.cursor == events[-1].cursor


async def test_policies_when_a_run_is_active(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    first = await runs.start(conversation.id, "alice")
    with pytest.raises(ActiveRunExists):
        await runs.start(conversation.id, "alice")  # reject, the default
    queued = await runs.start(conversation.id, "alice", "enqueue")
    assert (await runs.latest(conversation.id)).id == first.id  # the active one comes first
    interrupting = await runs.start(conversation.id, "alice", "interrupt")
    cancelled = await runs.get(first.id)
    assert cancelled.status == "cancelled"
    assert [e.type for e in await events_of(runs, first.id)][-1] == "end"  # events kept
    state = (await runs.conversation(conversation.id)).data
    assert state["active"] == interrupting.id
    assert state["queue"] == [queued.id]
    async with runs.producer(interrupting.id) as producer:
        await producer.emit("chunk", 1)
    state = (await runs.conversation(conversation.id)).data
    assert (state["active"], state["queue"]) == (queued.id, [])  # the queued one's turn now


async def test_an_enqueued_run_waits_for_its_turn(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    first = await runs.start(conversation.id, "alice")
    second = await runs.start(conversation.id, "alice", "enqueue")
    order: list[str] = []

    async def work(run_id: str) -> None:
        async with runs.producer(run_id) as producer:
            order.append(run_id)
            await producer.emit("chunk", run_id)

    waiting = asyncio.create_task(work(second.id))
    await asyncio.sleep(0)
    assert order == []  # not its turn yet
    await work(first.id)
    await asyncio.wait_for(waiting, 20)
    assert order == [first.id, second.id]
    assert (await runs.get(second.id)).status == "completed"


async def test_a_run_cancelled_while_queued_never_starts(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    cancelled = await runs.cancel(run.id, "alice")
    assert cancelled.status == "cancelled"
    with pytest.raises(RunFinished):
        async with runs.producer(run.id):
            pass
    with pytest.raises(RunFinished):
        await runs.cancel(run.id, "alice")  # a terminal run changes nothing
    assert [e.type for e in await events_of(runs, run.id)] == ["status", "end"]


async def test_cancel_is_heard_between_chunks(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    async with runs.producer(run.id) as producer:
        await producer.emit("chunk", 1)
        await runs.stop(conversation.id, "alice")
        await asyncio.wait_for(producer.until_cancelled(), 10)  # heard without emitting
        assert producer.cancelled
        with pytest.raises(RunFinished):
            await producer.emit("chunk", 2)
        assert not await producer.complete()  # the cancel won: nothing changes
    run_now = await runs.get(run.id)
    assert run_now.status == "cancelled"
    assert [e.type for e in await events_of(runs, run.id)].count("end") == 1


async def test_a_producer_does_not_read_back_its_own_events(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its watch (which hears a cancel) skips what the producer wrote itself: reading back
    every event emitted would cost the store a read per event, and the process their
    decoding. A cancel after them is heard all the same."""
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    decoded: list[str] = []
    of = LogEvent.of

    def counted(namespace: str, session_id: str, entry: LogEntry) -> LogEvent:
        decoded.append(entry.type)
        return of(namespace, session_id, entry)

    monkeypatch.setattr(LogEvent, "of", staticmethod(counted))
    async with runs.producer(run.id) as producer:
        for n in range(300):
            await producer.emit("chunk", n)
            if n % 30 == 0:
                await asyncio.sleep(0.01)  # the watch gets its turns meanwhile
        assert decoded.count("chunk") < 30  # not 300
        await runs.stop(conversation.id, "alice")
        await asyncio.wait_for(producer.until_cancelled(), 10)
    assert (await runs.get(run.id)).status == "cancelled"


async def test_cancel_racing_completion_ends_once_every_time(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    for _ in range(100):
        run = await runs.start(conversation.id, "alice")
        async with runs.producer(run.id) as producer:
            await producer.emit("chunk", 1)
            outcomes = await asyncio.gather(
                producer.complete("done"),
                runs.cancel(run.id, "alice"),
                return_exceptions=True,
            )
        completed, cancel = outcomes
        final = await runs.get(run.id)
        if completed is True:
            assert isinstance(cancel, RunFinished)
            assert final.status == "completed"
        else:
            assert completed is False
            assert final.status == "cancelled"
        ends = [e for e in await events_of(runs, run.id) if e.type == "end"]
        assert len(ends) == 1
        assert ends[0].data["status"] == final.status


async def test_a_vanished_worker_errors_within_one_lease(runs: Runs, clock: ManualClock) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    producer = runs.producer(run.id, worker="doomed")
    await producer.__aenter__()
    await producer.emit("chunk", "last words")
    await producer._stop_tasks()  # the worker process dies: nobody renews the lease
    with pytest.raises(RunBusy):
        await runs.producer(run.id).__aenter__()
    clock.advance(timedelta(seconds=29))
    await runs.reap()
    assert (await runs.get(run.id)).status == "running"
    clock.advance(timedelta(seconds=1))
    await runs.reap()
    failed = await runs.get(run.id)
    assert failed.status == "error"
    assert failed.error == "the worker stopped renewing its lease"
    events = await events_of(runs, run.id)
    assert [e.type for e in events][-2:] == ["chunk", "end"]
    assert (await runs.conversation(conversation.id)).data["active"] is None


async def test_resume_after_every_cursor_of_a_1000_event_run(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    async with runs.producer(run.id) as producer:
        for start in range(0, 1000, 100):
            await asyncio.gather(*(producer.emit("chunk", n) for n in range(start, start + 100)))
    everything = await events_of(runs, run.id)
    assert len(everything) == 1003  # queued, running, 1,000 chunks, end
    for index, event in enumerate(everything):
        page = await runs.runs.read(run.id, after=event.cursor, limit=2000)
        assert [e.cursor for e in page.events] == [e.cursor for e in everything[index + 1 :]]
    for index in (0, 1, 500, 1001):
        rest = await events_of(runs, run.id, after=str(everything[index].cursor))
        assert rest == everything[index + 1 :]


async def test_two_readers_and_a_live_producer(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    readers = [asyncio.create_task(events_of(runs, run.id)) for _ in range(2)]
    async with runs.producer(run.id) as producer:
        for n in range(200):
            await producer.emit("chunk", n)
    got = await asyncio.wait_for(asyncio.gather(*readers), 30)
    assert got[0] == got[1]
    assert [e.data for e in got[0] if e.type == "chunk"] == list(range(200))


async def test_owners_only(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    with pytest.raises(NotOwner):
        await runs.cancel(run.id, "mallory")
    with pytest.raises(NotOwner):
        await runs.stop(conversation.id, "mallory")
    with pytest.raises(NotOwner):
        await runs.start(conversation.id, "mallory")
    assert (await runs.get(run.id)).status == "queued"  # unharmed
    with pytest.raises(ConversationNotFound):
        await runs.start("conv_" + "A" * 43, "alice")
    with pytest.raises(RunNotFound):
        await runs.get("run_" + "A" * 43)


async def test_latest_is_by_recency_not_by_string(runs: Runs, clock: ManualClock) -> None:
    conversation = await runs.create_conversation("alice")
    made = []
    for _ in range(10):
        clock.advance(1)
        run = await runs.start(conversation.id, "alice")
        async with runs.producer(run.id):
            pass
        made.append(run.id)
    latest = await runs.latest(conversation.id, "alice")
    assert latest is not None
    assert latest.id == made[-1]


async def test_estimates_come_from_recent_durations(runs: Runs, clock: ManualClock) -> None:
    conversation = await runs.create_conversation("alice")
    for seconds in (10, 20, 30):
        run = await runs.start(conversation.id, "alice")
        async with runs.producer(run.id):
            clock.advance(timedelta(seconds=seconds))
    run = await runs.start(conversation.id, "alice")
    async with runs.producer(run.id) as producer:
        live = await runs.get(run.id)
        assert live.started_at is not None
        assert await runs.estimated_completion(live) == live.started_at + 20_000
        await producer.fail("not counted: only completed runs make estimates")
    other = await runs.create_conversation("bob")  # no history: the namespace's
    queued = await runs.start(other.id, "bob")
    assert await runs.estimated_completion(queued) == clock.now_ms() + 20_000


async def test_finished_runs_are_kept_for_the_retention_period(
    runs: Runs, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    async with runs.producer(run.id):
        pass
    clock.advance(timedelta(minutes=59))
    assert (await runs.get(run.id)).status == "completed"
    clock.advance(timedelta(minutes=1))
    with pytest.raises(RunNotFound):
        await runs.get(run.id)
    await runs.reap()
    assert await runs.latest(conversation.id) is None
