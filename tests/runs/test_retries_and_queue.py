"""Retries and the runs work queue, on every backend, driven by an injected clock: a run
whose worker died goes back to `queued` with a `retry` event and its log goes on; only the
producer of the current attempt may end it; `Worker.consume` executes dispatched runs and
acks them; `Worker.stop` hands a run with a retry left back rather than failing it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sessionary import ManualClock, Store
from sessionary.errors import ValidationError
from sessionary.http.metrics import Metrics
from sessionary.logs import LogEvent
from sessionary.queues import QueueDepth
from sessionary.runs import Producer, RunBusy, Runs, RunsSettings, service
from sessionary.runs.service import _lease_id
from sessionary.runs.worker import Worker
from tests.servers import eventually

LEASE = timedelta(seconds=30)


@pytest.fixture
def runs(store: Store) -> Runs:
    return Runs(store, RunsSettings(lease_ttl=LEASE, retention="1h", dispatch="queue"))


async def events_of(runs: Runs, run_id: str) -> list[LogEvent]:
    """The run's events so far (not waiting for its end)."""
    return (await runs.runs.read(run_id, after=None, limit=1000)).events


async def dies(producer: Producer) -> None:
    """The producer's process dies: nobody renews its lease or watches its run."""
    await producer._stop_tasks()


async def test_a_dead_workers_run_is_retried_then_fails_when_out_of_retries(
    runs: Runs, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice", retries=1)
    assert (run.attempt, run.retries) == (0, 1)
    first = runs.producer(run.id, worker="w1")
    await first.__aenter__()
    assert first.attempt == 1
    await first.emit("chunk", "from the first attempt")
    await dies(first)
    clock.advance(LEASE)
    await runs.reap()
    retried = await runs.get(run.id)
    assert (retried.status, retried.attempt) == ("queued", 1)
    assert (await runs.conversation(conversation.id)).data["active"] == run.id  # still its turn

    async with runs.producer(run.id, worker="w2") as second:
        assert second.attempt == 2
        await second.emit("chunk", "from the second attempt")
        await dies(second)  # it dies too, and no retry is left
        clock.advance(LEASE)
        await runs.reap()
    failed = await runs.get(run.id)
    assert (failed.status, failed.attempt, failed.error) == (
        "error",
        2,
        "the worker stopped renewing its lease",
    )
    events = await events_of(runs, run.id)
    assert [
        (e.type, e.data.get("status") if isinstance(e.data, dict) else e.data) for e in events
    ] == [
        ("status", "queued"),
        ("status", "running"),
        ("chunk", "from the first attempt"),
        ("retry", None),
        ("status", "running"),
        ("chunk", "from the second attempt"),
        ("end", "error"),
    ]
    assert events[3].data == {
        "attempt": 2,
        "retries": 1,
        "error": "the worker stopped renewing its lease",
    }
    running = [e.data for e in events if e.type == "status" and e.data["status"] == "running"]
    assert [(d["worker"], d["attempt"]) for d in running] == [("w1", 1), ("w2", 2)]
    assert [e.cursor.seq for e in events] == list(range(1, 8))  # one log, no gap


async def test_a_worker_that_died_before_starting_its_run_leaves_it_queued(
    runs: Runs, clock: ManualClock
) -> None:
    """Between taking the lease and marking the run running, the worker dies: the run
    never ran, so it is neither failed nor retried; it stays queued (a `status` event wakes
    whoever waits on it) for the next worker."""
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    await runs.leases.create(id=_lease_id(run.id), data={"run_id": run.id, "worker": "dead"})
    clock.advance(LEASE)
    await runs.reap()
    after = await runs.get(run.id)
    assert (after.status, after.attempt, after.error) == ("queued", 0, None)
    assert [(e.type, e.data) for e in await events_of(runs, run.id)][-1] == (
        "status",
        {"status": "queued", "lease": "lapsed"},
    )
    async with runs.producer(run.id, worker="w2") as producer:
        assert producer.attempt == 1
        await producer.complete("done")
    assert (await runs.get(run.id)).status == "completed"


async def test_a_lost_producer_gives_the_run_back_and_never_touches_the_next_attempt(
    runs: Runs, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice", retries=1)
    lost = runs.producer(run.id, worker="w1")
    await lost.__aenter__()
    await dies(lost)
    clock.advance(LEASE)
    await runs.reap()  # retried: attempt 2 may begin
    async with runs.producer(run.id, worker="w2") as current:
        lost._lose()
        await lost.__aexit__(None, None, None)  # it comes back, finds it lost the run
        assert await runs.leases.get(_lease_id(run.id)) is not None  # w2's lease untouched
        assert (await runs.get(run.id)).status == "running"
        await current.complete("by w2")
    assert (await runs.get(run.id)).result == "by w2"


async def test_a_run_without_retries_errors_as_before(runs: Runs, clock: ManualClock) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    producer = runs.producer(run.id, worker="w1")
    await producer.__aenter__()
    await dies(producer)
    clock.advance(LEASE)
    await runs.reap()
    assert (await runs.get(run.id)).status == "error"
    assert "retry" not in [e.type for e in await events_of(runs, run.id)]


async def test_a_producer_that_lost_its_lease_cannot_end_the_retried_run(
    runs: Runs, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice", retries=3)
    paused = runs.producer(run.id, worker="paused")
    await paused.__aenter__()
    await dies(paused)  # paused longer than its lease, not dead: it will come back
    clock.advance(LEASE)
    await runs.reap()
    async with runs.producer(run.id, worker="w2") as current:
        assert not await paused.complete("stale")  # fenced: attempt 1 is over
        assert (await runs.get(run.id)).status == "running"
        await current.emit("chunk", "fresh")
        assert await current.complete("fresh")
    done = await runs.get(run.id)
    assert (done.status, done.result, done.attempt) == ("completed", "fresh", 2)
    assert [e.type for e in await events_of(runs, run.id)].count("end") == 1


async def test_a_producer_hears_it_lost_the_run_and_may_not_emit(
    runs: Runs, clock: ManualClock
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice", retries=1)
    producer = runs.producer(run.id, worker="slow")
    await producer.__aenter__()
    try:
        clock.advance(LEASE)  # it did not renew in time (a long pause, say)
        await runs.reap()
        await eventually(lambda: producer.cancelled, 10)  # its watch hears the `retry` event
        assert producer.lost
        with pytest.raises(RunBusy):
            await producer.emit("chunk", "too late")
    finally:
        await producer.__aexit__(None, None, None)
    assert (await runs.get(run.id)).status == "queued"  # still there for the next attempt


async def test_a_retry_between_a_producers_own_events_is_heard(
    runs: Runs, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its watch skips the producer's own events, never one of someone else's between them:
    a `retry` landing between two of its emits (while the watch pauses, as it does once it
    saw the producer's latest) still tells it the run is lost."""
    monkeypatch.setattr(service, "_WATCH_PAUSE_S", 1.0)
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice", retries=1)
    producer = runs.producer(run.id, worker="slow")
    await producer.__aenter__()
    try:
        await producer.emit("chunk", 1)
        clock.advance(LEASE)
        await runs.reap()  # the `retry` event
        with contextlib.suppress(RunBusy):  # unless its watch heard the retry already
            await producer.emit("chunk", 2)  # after the retry: the log has a gap of its own
        await eventually(lambda: producer.lost, 10)
    finally:
        await producer.__aexit__(None, None, None)
    assert (await runs.get(run.id)).status == "queued"


async def test_retries_are_checked(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    for bad in (-1, 101, 1.5, "1", True):
        with pytest.raises(ValidationError):
            await runs.start(conversation.id, "alice", retries=bad)  # type: ignore[arg-type]


async def echo(producer: Producer, given: Any) -> Any:
    await producer.emit("chunk", given)
    return {"echo": given}


async def test_consume_executes_each_dispatched_run_once_and_acks_it(runs: Runs) -> None:
    started = []
    for n in range(6):
        conversation = await runs.create_conversation(f"user-{n}")
        started.append(await runs.start(conversation.id, f"user-{n}", input=n))
    assert await runs.queue.depth() == QueueDepth(6, 0)
    worker = Worker(runs, echo, name="w1")
    consuming = asyncio.create_task(worker.consume(concurrency=2))
    try:

        async def all_done() -> bool:
            return all([(await runs.get(r.id)).status == "completed" for r in started])

        async def acked() -> bool:
            return await runs.queue.depth() == QueueDepth(0, 0)

        await eventually(all_done, 20)
        await eventually(acked, 10)
    finally:
        await worker.stop(timedelta(seconds=5))
        await consuming
    for n, run in enumerate(started):
        done = await runs.get(run.id)
        assert (done.result, done.attempt) == ({"echo": n}, 1)
        chunks = [e.data for e in await events_of(runs, run.id) if e.type == "chunk"]
        assert chunks == [n]


async def test_a_queued_run_cancelled_before_any_worker_took_it_is_acked_unexecuted(
    runs: Runs,
) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    await runs.cancel(run.id)
    called = []

    async def handler(producer: Producer, given: Any) -> None:
        called.append(given)

    worker = Worker(runs, handler, name="w1")
    consuming = asyncio.create_task(worker.consume())
    try:

        async def acked() -> bool:
            return await runs.queue.depth() == QueueDepth(0, 0)

        await eventually(acked, 10)
    finally:
        await worker.stop(timedelta(seconds=1))
        await consuming
    assert called == []
    assert (await runs.get(run.id)).status == "cancelled"


async def test_execute_waits_while_another_producer_holds_the_run(runs: Runs) -> None:
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice")
    called = []

    async def handler(producer: Producer, given: Any) -> None:
        called.append(given)

    async with runs.producer(run.id, worker="first") as first:
        second = asyncio.create_task(Worker(runs, handler, name="second").execute(run.id))
        await asyncio.sleep(0.1)  # it would have produced by now, were it free to
        assert not second.done()
        await first.complete("by the first")
    await asyncio.wait_for(second, 10)
    assert called == []
    assert (await runs.get(run.id)).result == "by the first"


async def test_stop_hands_back_a_run_with_a_retry_left_and_fails_one_without(
    runs: Runs, clock: ManualClock
) -> None:
    began = asyncio.Event()
    entered = 0

    async def endless(producer: Producer, given: Any) -> None:
        nonlocal entered
        entered += 1
        if entered == 2:
            began.set()
        await asyncio.Event().wait()

    with_retry = await runs.start((await runs.create_conversation("a")).id, "a", retries=1)
    without = await runs.start((await runs.create_conversation("b")).id, "b")
    worker = Worker(runs, endless, name="w1")
    consuming = asyncio.create_task(worker.consume(concurrency=2))
    await asyncio.wait_for(began.wait(), 10)
    await worker.stop(timedelta(milliseconds=50))
    await consuming
    handed_back = await runs.get(with_retry.id)
    assert (handed_back.status, handed_back.attempt) == ("queued", 1)
    retry = [e for e in await events_of(runs, with_retry.id) if e.type == "retry"]
    assert [e.data["error"] for e in retry] == ["the worker was stopped mid-run"]
    failed = await runs.get(without.id)
    assert (failed.status, failed.error) == ("error", "the worker was stopped mid-run")

    async def finish(producer: Producer, given: Any) -> str:
        return "second attempt"

    # the handed-back run's queue item was released (a lease of 1 ms): the next worker
    # executes it at once
    clock.advance(1)
    successor = Worker(runs, finish, name="w2")
    consuming = asyncio.create_task(successor.consume())
    try:

        async def completed() -> bool:
            return (await runs.get(with_retry.id)).status == "completed"

        await eventually(completed, 10)
    finally:
        await successor.stop(timedelta(seconds=1))
        await consuming
    done = await runs.get(with_retry.id)
    assert (done.result, done.attempt) == ("second attempt", 2)


async def test_a_worker_counts_what_it_executed_by_outcome(runs: Runs) -> None:
    """The service's metrics (`sessionary_runs_executed{outcome}`, `sessionary_runs_in_flight`)
    as a worker reports them: each execution once, by how it ended."""
    metrics = Metrics(CollectorRegistry())

    async def handler(producer: Producer, given: Any) -> str:
        if given == "fail":
            raise RuntimeError("no")
        if given == "cancel":
            await producer.until_cancelled()  # as a handler should, between chunks
        if given == "hold":
            await asyncio.Event().wait()  # until the worker is stopped
        return "ok"

    worker = Worker(runs, handler, name="w1", metrics=metrics)
    started = {
        given: await runs.start(
            (await runs.create_conversation(given)).id, given, input=given, retries=1
        )
        for given in ("ok", "fail", "hold", "cancel")
    }
    consuming = asyncio.create_task(worker.consume(concurrency=4))

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    try:
        await eventually(lambda: sample("sessionary_runs_executed_total", outcome="error"), 10)
        await eventually(lambda: sample("sessionary_runs_in_flight") == 2, 10)  # hold, cancel
        await runs.cancel(started["cancel"].id)
        await eventually(
            lambda: sample("sessionary_runs_executed_total", outcome="ended_elsewhere"), 10
        )
    finally:
        await worker.stop(timedelta(milliseconds=50))  # "hold" is handed back: retried
        await consuming
    assert {
        outcome: sample("sessionary_runs_executed_total", outcome=outcome)
        for outcome in ("completed", "error", "ended_elsewhere", "retried", "lost")
    } == {"completed": 1, "error": 1, "ended_elsewhere": 1, "retried": 1, "lost": 0}
    assert sample("sessionary_runs_in_flight") == 0
