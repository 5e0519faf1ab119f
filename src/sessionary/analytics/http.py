"""The analytics API.

    POST /api/v1/track                               202: one event or an array of up to 1,000
    GET  /api/v1/projects/{project_id}/sessions      sessions, newest first, paged (admin key)
    GET  /api/v1/projects/{project_id}/stats         sessions, bounce rate, durations, paths,
                                                     sessions over time, open now (admin key)

`/track` takes a project key (`Authorization: Bearer <key>`). An event without a device_id or a
profile_id is anonymous web traffic: its device id is hashed from the client's IP (behind
trusted proxies, as for the playground) and User-Agent. A batch with bad events answers 422
with the index and reason of each, having accepted the good ones. Times are integer ms (UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Security
from pydantic import BaseModel, Field
from starlette.responses import Response

from sessionary.analytics.coalesce import GroupCommit
from sessionary.analytics.events import EVENT_SCHEMA, BadEvent, TrackEvent
from sessionary.analytics.service import (
    _PROJECT_RE,
    MAX_BATCH,
    MAX_STEP,
    Sessionizer,
    Told,
)
from sessionary.analytics.sink import MAX_BUCKETS, Interval, Sink, Stats
from sessionary.codec import INT64_MAX
from sessionary.http.bearer import BearerKeys
from sessionary.http.clientip import ClientIP
from sessionary.http.errors import JSONResponse, ResponseError, error_response
from sessionary.http.handlers import DirectRoute, JSONErrorRoute, guarded
from sessionary.http.limits import ByteBudget
from sessionary.http.openapi import ADMIN_KEY, PROJECT_KEY, STORE, errors
from sessionary.sessionize import SessionRow

# ms since the epoch, as a backend stores them; `from` is a Python keyword
From = Annotated[int | None, Query(alias="from", ge=0, le=INT64_MAX)]
To = Annotated[int | None, Query(ge=0, le=INT64_MAX)]


#: a project's id, as the settings take it
ProjectId = Annotated[str, Path(json_schema_extra={"pattern": f"^{_PROJECT_RE.pattern}$"})]
#: a page cursor of the sessions (base64url, as `sessionary.analytics.sink` issues it)
PAGE_CURSOR = {"pattern": "^[A-Za-z0-9_-]+$"}


class Accepted(BaseModel):
    accepted: int = Field(description="events accepted")
    duplicates: int = Field(description="events already tracked (by event_id): ignored")
    late: int = Field(description="events too late for their session: ignored")


class PathSessions(BaseModel):
    path: str
    sessions: int = Field(description="sessions that entered (or left) by the path")


class BucketOut(BaseModel):
    start: int = Field(description="ms since the epoch: the start of the bucket's UTC hour or day")
    sessions: int = Field(description="sessions that started in the bucket")
    bounces: int = Field(description="of those, the bounces")


class StatsOut(BaseModel):
    project_id: str
    sessions: int = Field(description="sessions that started in [from, to)")
    bounce_rate: float = Field(description="bounces / sessions (0 without sessions)")
    average_duration_ms: float
    events_per_session: float
    top_entry_paths: list[PathSessions] = Field(
        description="by sessions, most first, then by path (code point order); at most 10"
    )
    top_exit_paths: list[PathSessions] = Field(description="the same, by exit path")
    interval: Interval = Field(description="the buckets' width, as asked")
    sessions_over_time: list[BucketOut] = Field(
        description="oldest first, empty buckets included: with from and to, every bucket of "
        "[from, to) (the first holds from); otherwise from the first session's bucket to the "
        "last's"
    )
    open_sessions: int = Field(
        description="sessions of the project open in the store now: live, whatever from and to"
    )


def track_body(projects: Sequence[str]) -> dict[str, Any]:
    """The body of /track, which reads it itself (a bad event of a batch is reported, the
    others kept): one event or a batch. An event's project_id, when it says one, is the
    key's project (one of `projects`)."""
    event = {**EVENT_SCHEMA, "properties": dict(EVENT_SCHEMA["properties"])}
    event["properties"]["project_id"] = {
        "type": ["string", "null"],
        "enum": [*projects, None],
        "description": "the key's project (or left out)",
    }
    batch = {"type": "array", "items": event, "maxItems": MAX_BATCH}
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [event, batch]}}},
    }


def session_json(row: SessionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "project_id": row.project_id,
        "device_id": row.device_id,
        "profile_id": row.profile_id,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "duration_ms": row.duration_ms,
        "event_count": row.event_count,
        "screen_view_count": row.screen_view_count,
        "is_bounce": row.is_bounce,
        "entry_path": row.entry_path,
        "exit_path": row.exit_path,
        "referrer": row.referrer,
        "utm_source": row.utm_source,
        "utm_medium": row.utm_medium,
        "utm_campaign": row.utm_campaign,
        "utm_term": row.utm_term,
        "utm_content": row.utm_content,
        "revenue": row.revenue,
        "version": row.version,
        "closed": row.closed,
    }


def stats_json(
    project_id: str, stats: Stats, interval: Interval, open_sessions: int
) -> dict[str, Any]:
    """The body of /stats (`StatsOut`)."""
    return {
        "project_id": project_id,
        "sessions": stats.sessions,
        "bounce_rate": stats.bounce_rate,
        "average_duration_ms": stats.average_duration_ms,
        "events_per_session": stats.events_per_session,
        "top_entry_paths": [{"path": p, "sessions": n} for p, n in stats.top_entry_paths],
        "top_exit_paths": [{"path": p, "sessions": n} for p, n in stats.top_exit_paths],
        "interval": interval,
        "sessions_over_time": [
            {"start": b.start, "sessions": b.sessions, "bounces": b.bounces}
            for b in stats.sessions_over_time
        ],
        "open_sessions": open_sessions,
    }


async def project_stats(
    sessionizer: Sessionizer,
    project: str,
    start: int | None,
    end: int | None,
    interval: Interval,
) -> dict[str, Any]:
    """The body of /stats for a known project: what the route answers, and what the console
    shows (so their numbers cannot differ). Raises `TooManyBuckets` (see `Sink.stats`), a
    503 `ResponseError` without a sink."""
    found = await _sink(sessionizer).stats(project, start=start, end=end, interval=interval)
    return stats_json(project, found, interval, await sessionizer.open_sessions(project))


def analytics_router(
    sessionizer: Callable[[], Sessionizer],
    keys: BearerKeys[str],
    projects: Sequence[str],
    authorize_admin: Callable[[Request], object],
    client_ip: ClientIP,
    budget: ByteBudget,
) -> APIRouter:
    """The routes, over the `Sessionizer` that `sessionizer()` returns (known once the store
    is open). `budget` bounds the bytes of /track batches in flight. `authorize_admin`
    raises a `ResponseError` for a request without the admin key; the project routes call it
    before they look at anything else of the request."""
    router = APIRouter(prefix="/api/v1", tags=["analytics"], route_class=JSONErrorRoute)
    project_routes = APIRouter(
        route_class=guarded(authorize_admin),
        dependencies=[Security(ADMIN_KEY)],
        responses=errors(400, 401, 403, 404, 422, *STORE),
    )
    known = frozenset(projects)

    async def step(project: str, batches: list[list[TrackEvent]]) -> list[Told]:
        return await sessionizer().ingest_together(project, batches)

    # concurrent requests of a project share a step (group commit): see coalesce.py
    together: GroupCommit[str, list[TrackEvent], Told] = GroupCommit(step, limit=MAX_STEP, size=len)

    async def track(request: Request) -> Response:
        """Track one event (a JSON object) or a batch (an array of up to 1,000). 503
        `overloaded` with Retry-After while the batches in flight fill the server's budget."""
        project = keys.require(request, "project key")
        with budget.hold(request.scope):
            return await ingest(request, project)

    router.add_api_route(
        "/track",
        track,
        methods=["POST"],
        status_code=202,
        response_model=Accepted,
        dependencies=[Security(PROJECT_KEY)],  # documents the key: `track` checks it
        openapi_extra={"requestBody": track_body(projects)},
        responses=errors(
            401,
            413,
            *STORE,
            described={
                400: "invalid_json, batch_too_large; invalid_events: the one event sent is "
                "invalid (errors)",
                422: "invalid_events: some events of the batch are invalid (errors); the "
                "others were accepted (accepted, duplicates, late)",
            },
        ),
        route_class_override=DirectRoute,  # the busiest route: see DirectRoute
    )

    async def ingest(request: Request, project: str) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error_response(400, "invalid_json", "the body is not JSON")
        raws = body if isinstance(body, list) else [body]
        if len(raws) > MAX_BATCH:
            return error_response(
                400, "batch_too_large", f"a batch holds at most {MAX_BATCH} events"
            )
        client = None  # (IP, User-Agent), worked out for the first anonymous event only
        events: list[TrackEvent] = []
        errors: list[dict[str, Any]] = []
        for index, raw in enumerate(raws):
            if client is None and _anonymous(raw):
                address = client_ip.of(request.scope)
                client = (
                    "unknown" if address is None else address.compressed,
                    request.headers.get("user-agent", ""),
                )
            try:
                events.append(TrackEvent.parse(raw, project_id=project, client=client))
            except BadEvent as exc:
                errors.append({"index": index, "reason": str(exc)})
        outcome = await together.submit(project, events) if events else Told(0, 0)
        sessionizer().refused(project, len(errors))
        accepted: dict[str, Any] = {
            "accepted": len(events),
            "duplicates": outcome.duplicate,
            "late": outcome.late,
        }
        if errors:
            return error_response(
                422 if events or len(raws) > 1 else 400,
                "invalid_events",
                f"{len(errors)} of {len(raws)} events are invalid; the others were accepted",
                errors=errors,
                **accepted,
            )
        return JSONResponse(accepted, 202)

    def project_for_admin(project_id: str) -> str:
        if project_id not in known:
            raise ResponseError(
                error_response(404, "project_not_found", f"no project {project_id!r}")
            )
        return project_id

    @project_routes.get("/projects/{project_id}/sessions")
    async def sessions(
        project_id: ProjectId,
        start: From = None,
        to: To = None,
        device_id: Annotated[str | None, Query(max_length=256)] = None,
        profile_id: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[
            str | None,
            Query(max_length=512, description="the page's cursor", json_schema_extra=PAGE_CURSOR),
        ] = None,
    ) -> Response:
        """Sessions that started in [from, to), newest first; `next` pages on."""
        project = project_for_admin(project_id)
        page = await _sink(sessionizer()).sessions(
            project, start=start, end=to, device_id=device_id, profile_id=profile_id,
            limit=limit, after=after,
        )  # fmt: skip
        return JSONResponse(
            {"sessions": [session_json(row) for row in page.sessions], "next": page.next}
        )

    @project_routes.get(
        "/projects/{project_id}/stats",
        response_model=StatsOut,
        responses=errors(
            described={
                400: f"too_many_buckets: the sessions in the range span more than "
                f"{MAX_BUCKETS:,} buckets of the interval (ask for a coarser one or a shorter "
                "range)"
            }
        ),
    )
    async def stats(
        project_id: ProjectId,
        start: From = None,
        to: To = None,
        interval: Annotated[
            Interval, Query(description="the width of the sessions_over_time buckets (UTC)")
        ] = "day",
    ) -> Response:
        """Sessions, bounce rate, average duration, events per session, the top entry and
        exit paths and the sessions (and bounces) per hour or day, over the sessions that
        started in [from, to), from the sink (what the drainer has stored): one snapshot, so
        the buckets add up to `sessions`. `open_sessions` is live, from the store: the
        sessions open now, not bounded by from and to."""
        project = project_for_admin(project_id)
        return JSONResponse(await project_stats(sessionizer(), project, start, to, interval))

    router.include_router(project_routes)
    return router


def _anonymous(raw: object) -> bool:
    """Whether an event as sent is the visitor's by IP and User-Agent (`TrackEvent.parse`)."""
    return isinstance(raw, dict) and raw.get("device_id") is None and raw.get("profile_id") is None


def _sink(sessionizer: Sessionizer) -> Sink:
    if sessionizer.sink is None:
        raise ResponseError(
            error_response(503, "no_sink", "analytics has no sink configured to query")
        )
    return sessionizer.sink
