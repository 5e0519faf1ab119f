"""The store's health, as the console's page reads it: each background job's runs recorded by
`repeat` (success, the store down, a bug), `GET /v1/health` with the store up and its jobs
listed once they ran, `POST /v1/check` finding a planted problem without repairing it, and who
may ask (a key allowed on every namespace). The store down under /v1/health: the fault suite
(tests/faults/test_health_under_faults.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock, Store
from sessionary.backends.memory import MemoryBackend
from sessionary.contract import Backend
from sessionary.errors import StoreUnavailable
from sessionary.outage import JobStatus, OutageLog, repeat
from sessionary.runs.service import RUNS_LEASE_LAPSED
from sessionary.web.app import create_app
from sessionary.web.checks import INDEXES_UNCHECKED, SHOWN
from sessionary.web.settings import Settings
from tests.servers import eventually
from tests.test_check_features import running_run
from tests.web.conftest import ADMIN, API_KEY, PROJECT_KEY, client_for

WEB_ONLY = {"Authorization": "Bearer web-only-key-0123456789"}
PERIOD = "20ms"  # the jobs' real period: the test waits for their runs, bounded
JOBS_LATE = "the background jobs did not run in time"
LOG = logging.getLogger("tests.health")


def ends_after(turns: int, sleeps: list[float]) -> Callable[[float], Any]:
    """A `sleep` for `repeat` that sleeps not at all: it notes each delay and ends the loop
    (CancelledError) at the `turns`-th."""

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == turns:
            raise asyncio.CancelledError

    return sleep


async def test_a_run_that_works_is_recorded_with_its_times_and_duration() -> None:
    clock = ManualClock()
    started = clock.now_ms()
    status = JobStatus("job", clock)
    log = OutageLog(LOG, "job", settle=0)

    async def job() -> None:
        clock.advance(250)  # the run takes 250 ms by the job's clock

    with pytest.raises(asyncio.CancelledError):
        await repeat(job, 5, log, sleep=ends_after(2, []), status=status)
    assert (status.runs, status.failures, status.ok, status.last_error) == (2, 0, True, None)
    assert status.last_started_at == started + 250
    assert status.last_finished_at == started + 500
    assert status.last_duration_ms == 250
    assert status.outage is log
    assert not log.down


async def test_failed_runs_are_recorded_and_a_success_keeps_the_last_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store down (StoreUnavailable) and a bug (any other error) each count as a failure
    with its error; the job's outage is dated by the job's clock; a run that works again sets
    `ok` back, the last error stays for the page to show."""
    clock = ManualClock()
    status = JobStatus("job", clock)
    log = OutageLog(LOG, "job", settle=0, wall=clock)
    outcomes: list[Exception] = [StoreUnavailable("Redis is gone"), ValueError("a bug")]
    seen: list[tuple[int, int, bool | None, str | None]] = []

    async def job() -> None:
        clock.advance(10)
        if outcomes:
            raise outcomes.pop(0)

    async def sleep(seconds: float) -> None:
        seen.append((status.runs, status.failures, status.ok, status.last_error))
        if len(seen) == 1:
            assert log.down
            assert log.since_ms == clock.now_ms()
        if len(seen) == 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await repeat(job, 5, log, sleep=sleep, status=status)
    assert seen == [
        (1, 1, False, "StoreUnavailable: Redis is gone"),
        (2, 2, False, "ValueError: a bug"),
        (3, 2, True, "ValueError: a bug"),
    ]
    assert not log.down  # settle=0: the run that worked ended the outage
    assert "job failed" in caplog.text  # the bug, with its traceback, as before


async def test_a_job_run_without_a_status_behaves_as_before() -> None:
    sleeps: list[float] = []
    log = OutageLog(LOG, "job", settle=0)

    async def job() -> None:
        pass

    with pytest.raises(asyncio.CancelledError):
        await repeat(job, 5, log, sleep=ends_after(2, sleeps))
    assert sleeps == [5, 5]


# -- the API -----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def app(make_app: Callable[..., FastAPI], tmp_path: Any) -> AsyncIterator[FastAPI]:
    """The service with every background job running, on the test's clock (the jobs' periods
    are real: short)."""
    built = make_app(
        reaper={"every": PERIOD},
        analytics={
            "sink": f"sqlite:///{tmp_path / 'analytics.db'}",
            "projects": {"shop": {"key": PROJECT_KEY}},
            "reap_every": PERIOD,
            "drain_every": PERIOD,
        },
    )
    async with built.router.lifespan_context(built):
        yield built


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as opened:
        yield opened


JOBS = ["analytics-drainer", "analytics-reaper", "analytics-vacuum", "reaper", "run-leases"]


async def test_the_health_of_a_store_that_works(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    async def every_job_ran() -> bool:
        body = (await client.get("/v1/health", headers=ADMIN)).json()
        return all(job["runs"] >= 1 for job in body["jobs"])

    await eventually(every_job_ran, within=10, what=JOBS_LATE)
    response = await client.get("/v1/health", headers=ADMIN)
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["readiness_error"] is None
    assert body["store"]
    assert [job["name"] for job in body["jobs"]] == JOBS
    for job in body["jobs"]:
        assert (job["ok"], job["failures"], job["last_error"]) == (True, 0, None)
        # the store's clock (the test's, standing still): the jobs' times are its
        assert job["last_started_at"] == job["last_finished_at"] == clock.now_ms()
        assert job["last_duration_ms"] == 0
    assert [o["name"] for o in body["outages"]] == ["store", *JOBS]
    assert not any(outage["down"] for outage in body["outages"])
    assert all(outage["since"] is None for outage in body["outages"])


async def test_a_service_without_jobs_lists_none(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()  # the reaper and the analytics jobs off
    async with app.router.lifespan_context(app), client_for(app) as client:
        body = (await client.get("/v1/health", headers=ADMIN)).json()
    assert body["ready"] is True
    assert body["jobs"] == []
    assert [o["name"] for o in body["outages"]] == ["store"]


async def test_a_check_finds_a_run_whose_lease_is_gone_and_repairs_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await client.post("/v1/check", headers=ADMIN)).json()["findings"] == []
    run_id = await running_run(app.state.features.runs)
    for body in (None, {"limit": 5}):
        response = await client.post("/v1/check", headers=ADMIN, json=body)
        assert response.status_code == 200, response.text
        checked = response.json()
        assert checked["findings"] == [
            {
                "kind": RUNS_LEASE_LAPSED,
                "place": "runs",
                "session_id": run_id[:SHOWN] + "…",
                "detail": "running, but its worker's lease is gone or lapsed",
                "repaired": False,
            }
        ]
        assert checked["limited"] == []
        assert {"web", "runs", "sessionary.secrets"} <= checked["examined"].keys()
    assert (await app.state.features.runs.get(run_id)).status == "running"


async def test_a_check_leaves_the_shared_secrets_to_the_service(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The check reads the secrets' namespace as the store keeps it: the service's own uses of
    it (the playground's IP hash) go on after a check, and a check after them."""
    store = app.state.sessionary.opened
    assert (await client.post("/v1/check", headers=ADMIN)).status_code == 200
    secret = await store.shared_secret("tests.health")
    assert (await client.post("/v1/check", headers=ADMIN)).status_code == 200
    assert await store.shared_secret("tests.health") == secret


@pytest.mark.parametrize(
    "body",
    [{"limit": 0}, {"limit": 10_001}, {"limit": "5"}, {"limit": 5.5}, {"repair": True}, [1]],
)
async def test_a_check_refuses_a_bad_body(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post("/v1/check", headers=ADMIN, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/health"), ("POST", "/v1/check")])
async def test_only_a_key_allowed_on_every_namespace_may_ask(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    nobody = await client.request(method, path)
    assert (nobody.status_code, nobody.json()["error"]) == (401, "unauthorized")
    wrong = await client.request(method, path, headers={"Authorization": f"Bearer x{API_KEY}"})
    assert wrong.status_code == 401
    restricted = await client.request(method, path, headers=WEB_ONLY)
    assert (restricted.status_code, restricted.json()["error"]) == (403, "forbidden")
    assert '"*"' in restricted.json()["message"]
    assert (await client.request(method, path, headers=ADMIN)).status_code == 200


class WithoutIndexCheck:
    """A third party's backend that cannot check its indexes: the memory backend's every
    method but `check_indexes`."""

    def __init__(self) -> None:
        self._backend = MemoryBackend()

    def __getattr__(self, name: str) -> Any:
        if name == "check_indexes":
            raise AttributeError(name)
        return getattr(self._backend, name)

    def __repr__(self) -> str:
        return "WithoutIndexCheck()"


async def test_a_check_of_a_backend_that_cannot_check_says_so() -> None:
    store = Store(cast(Backend, WithoutIndexCheck()))
    app = create_app(
        Settings(api_keys=[API_KEY], reaper={"enabled": False}, analytics={"enabled": False}),
        store=store,
    )
    async with app.router.lifespan_context(app), client_for(app) as client:
        checked = await client.post("/v1/check", headers=ADMIN)
    assert checked.status_code == 200, checked.text
    assert checked.json()["findings"] == [
        {
            "kind": INDEXES_UNCHECKED,
            "place": "*",
            "session_id": None,
            "detail": "WithoutIndexCheck() cannot check its indexes (it implements no IndexCheck)",
            "repaired": False,
        }
    ]
