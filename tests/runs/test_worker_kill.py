"""Issue 12's proof: 1,000 queued runs, four real `sessionary worker` processes, two of them
killed with SIGKILL while runs are in flight. No run is lost, none is executed by two workers
at once, every log stays whole, and every run a dead worker held ends (retries=0) or goes back
to the queue and completes elsewhere (retries=1) within the lease bound, 1.25 x the lease,
swept by the surviving workers alone (this process sweeps nothing)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sessionary import connect
from sessionary.logs import LogEvent
from sessionary.runs import Runs, RunsSettings
from tests.runs.workers import CHUNKS, Workers, worker_config
from tests.servers import eventually

RUNS = 1000
WORKERS = 4
KILLED = 2
CONCURRENCY = 8
LEASE = timedelta(seconds=2)
#: the sweep's own round trips, on a 2-core machine busy with 1,000 runs
SLACK_MS = 1000
LAPSED = "the worker stopped renewing its lease"


@dataclass
class Holding:
    """One execution of a run, as its log tells it: from the `running` status event that
    opened it to the `retry` or `end` event that closed it."""

    worker: str
    attempt: int
    chunks: list[LogEvent] = field(default_factory=list)
    closed_by: LogEvent | None = None


def holdings_of(run_id: str, events: list[LogEvent]) -> list[Holding]:
    """The run's log cut into its holdings, checking on the way that it is whole (seqs
    1..n, `queued` first, one `end`, last) and that while one worker held the run, nobody
    else wrote to it: no other `status` before a `retry`/`end`, every chunk signed by the
    holder and its attempt."""
    where = f"run {run_id}: {[(e.type, e.data) for e in events]}"
    assert [e.cursor.seq for e in events] == list(range(1, len(events) + 1)), where
    assert (events[0].type, events[0].data) == ("status", {"status": "queued"}), where
    assert [e.type for e in events].count("end") == 1, where
    assert events[-1].type == "end", where
    holdings: list[Holding] = []
    holder: Holding | None = None
    for event in events[1:]:
        if event.type == "status" and event.data.get("status") == "running":
            assert holder is None, where
            holder = Holding(event.data["worker"], event.data["attempt"])
            assert holder.attempt == len(holdings) + 1, where
            holdings.append(holder)
        elif event.type == "status":  # a waiting worker woken: the run is nobody's yet
            assert holder is None, where
            assert event.data["status"] == "queued", where
        elif event.type == "chunk":
            assert holder is not None, where
            assert (event.data["worker"], event.data["attempt"]) == (
                holder.worker,
                holder.attempt,
            ), where
            holder.chunks.append(event)
        elif event.type in ("retry", "end"):
            assert holder is not None, where
            holder.closed_by = event
            holder = None
        else:
            raise AssertionError(f"an unexpected event {event.type}: {where}")
    return holdings


async def start_runs(runs: Runs) -> dict[str, int]:
    """`RUNS` runs, one conversation each, half with one retry: their retries by id."""
    retries: dict[str, int] = {}
    for n in range(RUNS):
        owner = f"owner{n}"
        conversation = await runs.create_conversation(owner)
        run = await runs.start(conversation.id, owner, retries=n % 2)
        retries[run.id] = n % 2
    return retries


async def test_killing_two_of_four_workers_loses_no_run(
    shared_url: str, tmp_path: Path, workers: Workers
) -> None:
    backend = shared_url.split(":")[0]
    store = await connect(shared_url)
    try:
        runs = Runs(store, RunsSettings(dispatch="queue", lease_ttl=LEASE))
        began = time.monotonic()
        retries = await start_runs(runs)
        started_s = time.monotonic() - began

        config = worker_config(tmp_path, LEASE)
        processes = [
            workers.start(
                f"w{n}",
                "--store",
                shared_url,
                "--config",
                str(config),
                "--handler",
                "tests.runs.workers:chunks",
                "--concurrency",
                str(CONCURRENCY),
            )
            for n in range(WORKERS)
        ]
        for process in processes:
            await process.started()
        working = time.monotonic()

        async def ended() -> int:
            depth = await runs.queue.depth()  # a run's item is acked once the run ended
            return RUNS - depth.waiting - depth.held

        await eventually(lambda: _at_least(ended, RUNS * 3 // 10), 120, "30% never ended")
        ended_at_kill = await ended()
        killed = {process.name for process in processes[:KILLED]}
        kill_ms = store.clock.now_ms()
        for process in processes[:KILLED]:
            process.kill()
        dead_ms = store.clock.now_ms()  # the killed workers wrote nothing after this
        await eventually(lambda: _at_least(ended, RUNS), 120, "not every run ended")
        finished_s = time.monotonic() - working
        after_kill_s = (store.clock.now_ms() - kill_ms) / 1000

        outcomes: Counter[str] = Counter()
        retry_events = 0
        woken = 0  # `status queued` events after the first: a waiting worker woken
        delays_ms: list[int] = []
        for run_id, allowed in retries.items():
            run = await runs.get(run_id)
            events = (await runs.runs.read(run_id, limit=10_000)).events
            holdings = holdings_of(run_id, events)
            where = f"run {run_id} (retries={allowed}): {[(e.type, e.data) for e in events]}"
            assert holdings, where  # every run was executed
            retry_events += [e.type for e in events].count("retry")
            woken += sum(e.type == "status" and e.data["status"] == "queued" for e in events[1:])
            for holding in holdings:
                closing = holding.closed_by
                assert closing is not None, where
                if closing.type == "end" and closing.data["status"] == "completed":
                    assert [c.data["n"] for c in holding.chunks] == list(range(CHUNKS)), where
                    assert closing.data["result"] == {
                        "worker": holding.worker,
                        "attempt": holding.attempt,
                    }, where
                    if holding.worker in killed:
                        assert closing.ts <= dead_ms, where  # not written after its death
                    continue
                # anything but completing: only a dead worker's lapsed lease, swept in time
                assert holding.worker in killed, where
                expected = (
                    ("retry", {"attempt": holding.attempt + 1, "retries": 1, "error": LAPSED})
                    if allowed
                    else ("end", {"status": "error", "error": LAPSED})
                )
                assert (closing.type, closing.data) == expected, where
                delays_ms.append(closing.ts - kill_ms)
            last = holdings[-1].closed_by
            assert last is not None, where
            assert run.status == last.data["status"], where
            outcome = run.status if len(holdings) == 1 else f"{run.status} after a retry"
            outcomes[f"retries={allowed}: {outcome}"] += 1
            # retries=1 runs all complete: no worker died twice (nothing was killed after)
            assert allowed == 0 or run.status == "completed", where
            assert len(holdings) <= 1 + allowed, where

        bound_ms = int(runs.lease_bound.total_seconds() * 1000)
        summary = (
            f"{backend}: {RUNS} runs started in {started_s:.1f} s; {WORKERS} workers x "
            f"{CONCURRENCY}; killed {sorted(killed)} when {ended_at_kill} had ended; all "
            f"ended {finished_s:.1f} s after the workers started ({after_kill_s:.1f} s after "
            f"the kill); {dict(sorted(outcomes.items()))}; retry events: {retry_events}; "
            f"waiting workers woken: {woken}; "
            f"runs a dead worker held: {len(delays_ms)}, kill to retry/end: "
            f"min {min(delays_ms, default=0)} ms, max {max(delays_ms, default=0)} ms "
            f"(bound {bound_ms} ms + {SLACK_MS} ms slack)"
        )
        print(summary)
        lapsed_with_retry = outcomes["retries=1: completed after a retry"]
        lapsed_without = outcomes["retries=0: error"]
        assert delays_ms, f"the killed workers held no run: {summary}"
        assert retry_events == lapsed_with_retry, summary
        assert len(delays_ms) == lapsed_with_retry + lapsed_without, summary
        assert all(0 < delay <= bound_ms + SLACK_MS for delay in delays_ms), summary
        assert sum(outcomes.values()) == RUNS, summary
        for process in processes[KILLED:]:  # the survivors, idle now, stop cleanly
            process.terminate()
            assert await process.exited() == 0, process.stderr
    finally:
        await store.close()


async def _at_least(count: Callable[[], Awaitable[int]], target: int) -> bool:
    return await count() >= target
