"""`sessionary check` for the features, through the store's API only (as the features work),
on every backend: runs whose lease is gone or lapsed, analytics work the jobs owe; and the
command itself, run as a process (exit status, --json)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from sessionary import ManualClock, Store, connect, ids
from sessionary.analytics import Rules, Sessionizer, TrackEvent
from sessionary.analytics.service import OPEN_PAST_TIMEOUT, OUTBOX_BACKLOG
from sessionary.analytics.sink import Sink
from sessionary.backends.redis import RedisBackend
from sessionary.runs import Runs
from sessionary.runs.service import RUNS_LEASE_LAPSED, _lease_id
from sessionary.runs.settings import RunsSettings

LEASE = timedelta(seconds=30)


async def running_run(runs: Runs, retries: int = 0) -> str:
    """A run marked running as a producer marks it, and no lease taken: the state a lost
    lease leaves behind."""
    conversation = await runs.create_conversation("alice")
    run = await runs.start(conversation.id, "alice", retries=retries)
    session = await runs.runs.get(run.id)
    assert session is not None
    data = {**session.data, "status": "running", "attempt": 1, "worker": "w1"}
    await runs.runs.update(run.id, data=data)
    return run.id


async def test_a_running_run_with_its_lease_is_no_finding(store: Store) -> None:
    runs = Runs(store, RunsSettings(lease_ttl=LEASE))
    run_id = await running_run(runs)
    await runs.leases.create(id=_lease_id(run_id), data={"run_id": run_id, "worker": "w1"})
    assert await runs.check() == []


async def test_a_running_run_whose_lease_is_gone_is_found_and_ended(store: Store) -> None:
    runs = Runs(store, RunsSettings(lease_ttl=LEASE))
    run_id = await running_run(runs)
    [finding] = await runs.check()
    assert (finding.kind, finding.namespace, finding.id) == (RUNS_LEASE_LAPSED, "runs", run_id)
    assert not finding.repaired
    assert (await runs.get(run_id)).status == "running"  # a check alone changes nothing
    [repaired] = await runs.check(repair=True)
    assert repaired.repaired
    assert (await runs.get(run_id)).status == "error"
    assert await runs.check() == []


async def test_a_lapsed_lease_with_retries_left_sends_the_run_back_to_the_queue(
    store: Store, clock: ManualClock
) -> None:
    runs = Runs(store, RunsSettings(lease_ttl=LEASE))
    run_id = await running_run(runs, retries=1)
    await runs.leases.create(id=_lease_id(run_id), data={"run_id": run_id, "worker": "w1"})
    clock.advance(LEASE)  # lapsed, and no sweep came
    assert [f.id for f in await runs.check(repair=True)] == [run_id]
    assert (await runs.get(run_id)).status == "queued"
    assert await runs.leases.reap() == []  # the lapsed lease went with the repair
    assert await runs.check() == []


def event(**fields: Any) -> TrackEvent:
    return TrackEvent.parse({"name": "screen_view", **fields})


async def test_analytics_owed_a_close_and_a_drain_is_found_and_repaired(
    store: Store, clock: ManualClock, sink: Sink
) -> None:
    rules = Rules(timeout_ms=60_000, reap_lag_ms=10_000)
    sessionizer = Sessionizer(store, {"shop": rules}, sink=sink)
    await sessionizer.ingest("shop", [event(device_id="d1"), event(device_id="d2")])
    clock.advance(70_000)  # timeout + lag, not yet past
    assert await sessionizer.check(backlog_age=timedelta(minutes=5)) == []
    clock.advance(5 * 60_000)  # past both, no reaper nor drainer ran
    findings = await sessionizer.check(backlog_age=timedelta(minutes=5))
    assert sorted((f.kind, f.namespace) for f in findings) == [
        (OPEN_PAST_TIMEOUT, "analytics:shop"),
        (OUTBOX_BACKLOG, "analytics:shop"),
    ]
    overdue = next(f for f in findings if f.kind == OPEN_PAST_TIMEOUT)
    assert overdue.detail.startswith("2 sessions")
    repaired = await sessionizer.check(repair=True)
    assert all(f.repaired for f in repaired)
    assert len(repaired) == 2
    assert await sessionizer.backend.open_sessions("shop") == 0
    assert await sessionizer.backend.outbox("shop", 10) == []
    assert await sessionizer.check() == []


# -- the command ----------------------------------------------------------------------------


async def sessionary_check(cwd: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONARY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sessionary",
        "check",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_exits_1_on_a_lost_lease_and_0_once_repaired(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with await connect(url) as store:
        run_id = await running_run(Runs(store))
    code, out, _ = await sessionary_check(tmp_path, "--store", url, "--json")
    assert code == 1
    assert json.loads(out) == [
        {
            "kind": RUNS_LEASE_LAPSED,
            "namespace": "runs",
            "id": run_id[:12] + "…",
            "detail": "running, but its worker's lease is gone or lapsed",
            "repaired": False,
        }
    ]
    code, out, _ = await sessionary_check(tmp_path, "--store", url, "--repair")
    assert code == 0, out
    assert RUNS_LEASE_LAPSED in out
    code, out, _ = await sessionary_check(tmp_path, "--store", url)
    assert (code, out.strip()) == (0, "clean: nothing found")


async def test_the_command_finds_a_lost_session_key_on_redis(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    async with await connect(redis_url) as store:
        session = await store.namespace("web", idle_ttl=timedelta(hours=1)).create(subject="a")
        backend = store.backend
        assert isinstance(backend, RedisBackend)
        keys = backend.shard_keys("web", ids.shard_of(session.id))
    await redis_client.delete(keys.session + session.id)
    config = tmp_path / "sessionary.toml"
    config.write_text('[namespaces.web]\nidle_ttl = "1h"\n')
    args = ("--store", redis_url, "--config", str(config))
    code, out, _ = await sessionary_check(tmp_path, *args, "--json")
    assert code == 1
    assert sorted((f["kind"], f["namespace"]) for f in json.loads(out)) == [
        ("expiry_index_orphan", "web"),
        ("subject_index_orphan", "web"),
    ]
    code, out, _ = await sessionary_check(tmp_path, *args, "--repair")
    assert code == 0, out
    assert "2 found, 2 repaired, 0 left" in out
    assert (await sessionary_check(tmp_path, *args))[0] == 0
