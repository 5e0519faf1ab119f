"""The store's health as this process sees it, under /v1 behind an admin API key allowed on
every namespace ("*"): what the console's "Store health" page shows, number for number.

    GET  /v1/health   readiness (as /readyz, the ping bounded by `READINESS_TIMEOUT_S`), which
                      parts of the process see the store as down, the background jobs' last
                      runs
    POST /v1/check    what `sessionary check` finds (`sessionary.web.checks`), never repairing

/v1/health answers 200 whatever the store's state: it reports that state, so it must answer
while the store is down, and quickly. Both concern every namespace (a check walks them all,
the jobs sweep them all), hence the key allowed on all of them. With `sessionary serve
--workers N` each worker runs its own jobs and sees its own outages: the answer is the one of
the worker that took the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Request, Security
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sessionary.errors import StoreUnavailable
from sessionary.http.errors import JSONResponse, ResponseError, error_response
from sessionary.http.handlers import guarded
from sessionary.http.openapi import ADMIN_KEY, STORE, Integral, errors
from sessionary.outage import JobStatus, OutageLog
from sessionary.store import Store
from sessionary.web.auth import ApiKeys
from sessionary.web.checks import DEFAULT_LIMIT, check_store, shown

if TYPE_CHECKING:
    from sessionary.web.app import Features

#: the longest /v1/health waits for the store's answer to its readiness ping, in seconds:
#: a store that does not answer makes the page slow by this much, never more
READINESS_TIMEOUT_S = 1.0


class OutageOut(BaseModel):
    """A part of this process that calls the store, and whether it sees the store as down."""

    name: str = Field(
        description="store: every call of the service's requests; the others: a background job"
    )
    down: bool = Field(description="it sees the store as down now")
    since: int | None = Field(
        description="when its current (or last) outage began, ms since the epoch; null: never"
    )
    failures: int = Field(description="failed calls or runs in that outage")
    last_error: str | None = Field(description="the latest failure; null: never failed")


class JobOut(BaseModel):
    """A background job's runs since the process started."""

    name: str = Field(
        description="reaper, run-leases, analytics-reaper, analytics-drainer, analytics-vacuum"
    )
    runs: int
    failures: int
    last_started_at: int | None = Field(description="ms since the epoch; null: not run yet")
    last_finished_at: int | None = Field(
        description="ms since the epoch; null: its first run has not ended"
    )
    last_duration_ms: int | None
    last_error: str | None = Field(
        description="the latest failed run's error (kept after a success: `ok` says whether "
        "the last run failed); null: none failed"
    )
    ok: bool | None = Field(description="the last run succeeded; null: none ended yet")


class HealthOut(BaseModel):
    ready: bool = Field(description="the store answers and takes a write, as /readyz says")
    store: str = Field(description="the store, its password masked")
    readiness_error: str | None = Field(description="why it is not ready; null: it is")
    outages: list[OutageOut] = Field(description="the store first, then each job's")
    jobs: list[JobOut] = Field(description="the jobs this process runs, by name")


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    limit: Annotated[
        Integral,
        Field(
            ge=1,
            le=DEFAULT_LIMIT,
            json_schema_extra={"minimum": 1, "maximum": DEFAULT_LIMIT},
            description="stop checking a namespace after this many findings",
        ),
    ] = DEFAULT_LIMIT


class FindingOut(BaseModel):
    kind: str = Field(description="a stable code, as `sessionary check` reports it")
    place: str = Field(description="a namespace, or a feature's place (an analytics project)")
    session_id: str | None = Field(
        description="the session or entry concerned, by its first 12 characters and an "
        "ellipsis; null: the finding is about the whole place"
    )
    detail: str
    repaired: bool = Field(description="always false: this check repairs nothing")


class CheckOut(BaseModel):
    findings: list[FindingOut]
    examined: dict[str, int] = Field(description="namespace -> index entries and records examined")
    limited: list[str] = Field(
        description="the namespaces where the check stopped at `limit` findings: rerun it"
    )


async def readiness_error(store: Store, within: float = READINESS_TIMEOUT_S) -> str | None:
    """Why `store` is not ready (as /readyz: it answers and takes a write), or None if it is;
    a store that has not answered within `within` seconds is not."""
    try:
        async with asyncio.timeout(within):
            await store.ping(write=True)
    except StoreUnavailable as exc:
        return f"the store does not answer: {exc}"
    except TimeoutError:
        return f"the store did not answer within {within:g} s"
    return None


def _outage_json(name: str, outage: OutageLog) -> dict[str, object]:
    return {
        "name": name,
        "down": outage.down,
        "since": outage.since_ms,
        "failures": outage.failures,
        "last_error": None if outage.error is None else str(outage.error),
    }


def _job_json(job: JobStatus) -> dict[str, object]:
    return {
        "name": job.name,
        "runs": job.runs,
        "failures": job.failures,
        "last_started_at": job.last_started_at,
        "last_finished_at": job.last_finished_at,
        "last_duration_ms": job.last_duration_ms,
        "last_error": job.last_error,
        "ok": job.ok,
    }


async def health_json(store: Store, features: Features, store_name: str) -> dict[str, object]:
    """The answer of `GET /v1/health` (`HealthOut`), for `features` on `store` (named
    `store_name`): what the console's page shows too."""
    problem = await readiness_error(store)
    outages: Mapping[str, OutageLog] = features.outages(store)
    return {
        "ready": problem is None,
        "store": store_name,
        "readiness_error": problem,
        "outages": [_outage_json(name, log) for name, log in outages.items()],
        "jobs": [_job_json(job) for _, job in sorted(features.jobs.items())],
    }


async def check_json(
    store: Store, features: Features, limit: int = DEFAULT_LIMIT
) -> dict[str, object]:
    """The answer of `POST /v1/check` (`CheckOut`): what a check of `features` on `store`
    finds, repairing nothing; `StoreUnavailable` if the store goes down meanwhile."""
    checked = await check_store(store, features, limit=limit)
    return {
        "findings": [
            {
                "kind": finding.kind,
                "place": finding.namespace,
                "session_id": shown(finding.id),
                "detail": finding.detail,
                "repaired": finding.repaired,
            }
            for finding in checked.findings
        ],
        "examined": checked.examined,
        "limited": checked.limited,
    }


def health_router(
    store: Callable[[], Awaitable[Store]],
    features: Features,
    keys: ApiKeys,
    store_name: str,
) -> APIRouter:
    """/v1/health and /v1/check over the store `store()` opens and the `features` the
    service started on it (their jobs, as they run). `store_name`: the store as the answer
    names it (no password)."""

    def key_first(request: Request) -> None:
        if not keys.require(request, None).allows("*"):
            raise ResponseError(
                error_response(
                    403,
                    "forbidden",
                    'the store\'s health spans every namespace: use an API key allowed on "*"',
                )
            )

    router = APIRouter(
        prefix="/v1",
        tags=["admin"],
        route_class=guarded(key_first),
        dependencies=[Security(ADMIN_KEY)],
        responses=errors(401, 403),
    )

    @router.get("/health", response_model=HealthOut, responses=errors(500))
    async def health() -> Response:
        """The store's health as this process sees it: readiness (200 either way, with
        `ready` false and why), which of its parts see the store as down, and its background
        jobs' last runs."""
        return JSONResponse(await health_json(await store(), features, store_name))

    @router.post("/check", response_model=CheckOut, responses=errors(400, 413, 422, *STORE))
    async def check(body: CheckIn | None = None) -> Response:
        """What `sessionary check` finds (index entries against records in every namespace,
        runs whose lease lapsed, analytics work the jobs owe), without repairing anything:
        `sessionary check --repair` does. A namespace's check stops after `limit` findings."""
        limit = DEFAULT_LIMIT if body is None else body.limit
        return JSONResponse(await check_json(await store(), features, limit))

    return router
