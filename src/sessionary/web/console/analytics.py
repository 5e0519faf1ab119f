"""The console's analytics page: per project and date range, the sessions over time (a uPlot
chart, with its numbers in a table beside it), bounce rate, average duration, events per
session, the top entry and exit paths, and the sessions open now (refreshed live). Every
number is the body of `GET /api/v1/projects/{project}/stats` for the same range and
interval (`project_stats`, the route's own function)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sessionary.analytics.http import project_stats
from sessionary.analytics.service import Sessionizer
from sessionary.analytics.sink import INTERVAL_MS, Interval
from sessionary.errors import ValidationError
from sessionary.web.console.app import Admin, Console

#: the range shown when none is asked for: the last week, today included
DEFAULT_DAYS = 7


def routes(console: Console) -> list[BaseRoute]:
    def sessionizer() -> Sessionizer | None:
        return console.services.features.analytics

    async def page(request: Request, admin: Admin) -> Response:
        projects = list(console.services.projects)
        context: dict[str, Any] = {"page": "analytics", "title": "Analytics", "projects": projects}
        analytics = sessionizer()
        if analytics is None or not projects:
            context["off"] = True
            return console.render(request, "analytics.html", context, admin)
        query = request.query_params
        project = query.get("project") or projects[0]
        today = datetime.fromtimestamp(analytics.store.clock.now_ms() / 1000, UTC).date()
        try:
            first = _day(query.get("from"), today - timedelta(days=DEFAULT_DAYS - 1))
            last = _day(query.get("to"), today)
            interval = _interval(query.get("interval", "day"))
            if project not in projects:
                raise ValidationError(f"no project {project!r}")
            if last < first:
                raise ValidationError("the range ends before it starts: swap from and to")
        except ValidationError as exc:
            context.update(problem=str(exc), project=project, interval="day")
            return console.render(request, "analytics.html", context, admin, status=400)
        start, end = _ms(first), _ms(last + timedelta(days=1))  # [from, to], days included
        context.update(project=project, first=first, last=last, interval=interval)
        context.update(start=start, end=end)
        try:
            context["stats"] = await project_stats(analytics, project, start, end, interval)
        except ValidationError as exc:  # too many buckets: the message says what to change
            context["problem"] = str(exc)
            return console.render(request, "analytics.html", context, admin, status=400)
        return console.render(request, "analytics.html", context, admin)

    async def open_now(request: Request, admin: Admin) -> Response:
        """{"open_sessions": n} of a project, for the page's refresh."""
        analytics = sessionizer()
        project = request.query_params.get("project", "")
        if analytics is None or project not in console.services.projects:
            return JSONResponse({"error": "project_not_found"}, status_code=404)
        count = await analytics.open_sessions(project)
        return JSONResponse({"open_sessions": count}, headers={"Cache-Control": "no-store"})

    return [
        Route("/analytics", console.guarded(page, needs="analytics"), methods=["GET"]),
        Route("/analytics/open", console.guarded(open_now, needs="analytics"), methods=["GET"]),
    ]


def _day(text: str | None, default: date) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _interval(text: str) -> Interval:
    if text == "hour":
        return "hour"
    if text == "day":
        return "day"
    raise ValidationError(f"the interval is one of {', '.join(INTERVAL_MS)}, not {text!r}")


def _ms(day: date) -> int:
    """The start of `day` in UTC, in ms since the epoch."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
