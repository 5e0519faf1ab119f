"""The console's sessions page: the namespaces with their live counts, a subject's sessions
(with the device each recorded) and revoking one or all of them, and the counter groups'
counters. What it shows is the admin API's: `GET /v1/namespaces/{ns}/subjects/{subject}/sessions`
renders the same `session_json`, revoking is the same `Namespace.delete` / `revoke_subject`,
and a group's counters are `GET /v1/counters/{group}`'s `counters_json`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sessionary.errors import InvalidCursor, InvalidSessionId, ValidationError
from sessionary.store import Namespace
from sessionary.web.admin import counters_json, namespaces_json, session_json
from sessionary.web.console.app import Admin, Console, base, notice, said

#: the counters a group's table shows at a time (the admin API's default page)
COUNTERS_PAGE = 100


def routes(console: Console) -> list[BaseRoute]:
    def visible(admin: Admin) -> dict[str, Namespace]:
        """The namespaces the admin's key may act on, by name."""
        return {
            name: ns
            for name, ns in sorted(console.services.namespaces().items())
            if admin.allows(name)
        }

    async def counter_groups(
        request: Request, admin: Admin
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The service's counter groups the admin's key may act on (by name, as the admin
        API authorizes them), each with a page of its counters: the first, or for the group
        the query names, the page its `after` names. And what was wrong with that cursor."""
        named, after = request.query_params.get("group"), request.query_params.get("after")
        problem = None
        listed = []
        for counters in sorted(console.services.features.groups, key=lambda c: c.group):
            if not admin.allows(counters.group):
                continue
            cursor = after if counters.group == named and after else None
            try:
                page = await counters.list(COUNTERS_PAGE, cursor)
            except InvalidCursor:
                problem = f"That page of {counters.group!r} is gone; here is its first page."
                cursor, page = None, await counters.list(COUNTERS_PAGE)
            listed.append({"name": counters.group, "after": cursor, **counters_json(page)})
        return listed, problem

    async def page(request: Request, admin: Admin) -> Response:
        shown = visible(admin)
        groups, counters_problem = await counter_groups(request, admin)
        listed = await namespaces_json(shown)
        name = request.query_params.get("namespace", "")
        subject = request.query_params.get("subject", "").strip()
        found = None
        problem = None
        if subject and name:
            space = shown.get(name)
            if space is None:
                problem = f"No namespace {name!r} that your key may act on."
            else:
                try:
                    found = [session_json(s) for s in await space.list_subject(subject)]
                except ValidationError as exc:
                    problem = str(exc)
        context = {
            "page": "sessions",
            "title": "Sessions",
            "namespaces": listed,
            "namespace": name,
            "subject": subject,
            "found": found,
            "problem": problem,
            "groups": groups,
            "counters_problem": counters_problem,
            "notice": notice(request, admin),
        }
        bad = problem or counters_problem
        return console.render(request, "sessions.html", context, admin, status=400 if bad else 200)

    async def live_counts(request: Request, admin: Admin) -> Response:
        """{name: live sessions}, for the page's refresh."""
        listed = await namespaces_json(visible(admin))
        counts = {entry["name"]: entry["sessions"] for entry in listed}
        return JSONResponse(counts, headers={"Cache-Control": "no-store"})

    async def revoke(request: Request, admin: Admin) -> Response:
        form = request.state.form
        space = visible(admin).get(form.get("namespace", ""))
        if space is None:
            return _back(request, admin, "No such namespace: nothing was revoked.")
        try:
            deleted = await space.delete(form.get("session_id", ""))
        except InvalidSessionId:
            deleted = False
        return _back(request, admin, "Revoked 1 session." if deleted else "No such live session.")

    async def revoke_all(request: Request, admin: Admin) -> Response:
        form = request.state.form
        space = visible(admin).get(form.get("namespace", ""))
        if space is None:
            return _back(request, admin, "No such namespace: nothing was revoked.")
        try:
            revoked = await space.revoke_subject(form.get("subject", ""))
        except ValidationError as exc:
            return _back(request, admin, f"Nothing was revoked: {exc}")
        return _back(request, admin, f"Revoked {revoked} session{'' if revoked == 1 else 's'}.")

    return [
        Route("/sessions", console.guarded(page), methods=["GET"]),
        Route("/sessions/counts", console.guarded(live_counts), methods=["GET"]),
        Route("/sessions/revoke", console.guarded(revoke), methods=["POST"]),
        Route("/sessions/revoke-all", console.guarded(revoke_all), methods=["POST"]),
    ]


def _back(request: Request, admin: Admin, done: str) -> Response:
    """Back to the subject's listing the form was posted from, saying what was done."""
    form = request.state.form
    query = {"namespace": form.get("namespace", ""), "subject": form.get("subject", "")}
    return said(f"{base(request)}/sessions?{urlencode(query)}", done, admin)
