"""The console's sessions page: the namespaces with their live counts, a subject's sessions
(with the device each recorded) and revoking one or all of them. What it shows is the admin
API's: `GET /v1/namespaces/{ns}/subjects/{subject}/sessions` renders the same
`session_json`, and revoking is the same `Namespace.delete` / `revoke_subject`."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from sessionary.errors import InvalidSessionId, ValidationError
from sessionary.store import Namespace
from sessionary.web.admin import namespaces_json, session_json
from sessionary.web.console.app import Admin, Console, base, notice


def routes(console: Console) -> list[BaseRoute]:
    def visible(admin: Admin) -> dict[str, Namespace]:
        """The namespaces the admin's key may act on, by name."""
        return {
            name: ns
            for name, ns in sorted(console.services.namespaces().items())
            if admin.allows(name)
        }

    async def page(request: Request, admin: Admin) -> Response:
        shown = visible(admin)
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
            "notice": notice(request),
        }
        return console.render(
            request, "sessions.html", context, admin, status=400 if problem else 200
        )

    async def live_counts(request: Request, admin: Admin) -> Response:
        """{name: live sessions}, for the page's refresh."""
        listed = await namespaces_json(visible(admin))
        counts = {entry["name"]: entry["sessions"] for entry in listed}
        return JSONResponse(counts, headers={"Cache-Control": "no-store"})

    async def revoke(request: Request, admin: Admin) -> Response:
        form = request.state.form
        space = visible(admin).get(form.get("namespace", ""))
        if space is None:
            return _back(request, form, "No such namespace: nothing was revoked.")
        try:
            deleted = await space.delete(form.get("session_id", ""))
        except InvalidSessionId:
            deleted = False
        return _back(request, form, "Revoked 1 session." if deleted else "No such live session.")

    async def revoke_all(request: Request, admin: Admin) -> Response:
        form = request.state.form
        space = visible(admin).get(form.get("namespace", ""))
        if space is None:
            return _back(request, form, "No such namespace: nothing was revoked.")
        try:
            revoked = await space.revoke_subject(form.get("subject", ""))
        except ValidationError as exc:
            return _back(request, form, f"Nothing was revoked: {exc}")
        return _back(request, form, f"Revoked {revoked} session{'' if revoked == 1 else 's'}.")

    return [
        Route("/sessions", console.guarded(page), methods=["GET"]),
        Route("/sessions/counts", console.guarded(live_counts), methods=["GET"]),
        Route("/sessions/revoke", console.guarded(revoke), methods=["POST"]),
        Route("/sessions/revoke-all", console.guarded(revoke_all), methods=["POST"]),
    ]


def _back(request: Request, form: dict[str, str], notice: str) -> Response:
    """Back to the subject's listing (post, redirect, get), saying what was done."""
    query = {"namespace": form.get("namespace", ""), "subject": form.get("subject", "")}
    query["done"] = notice
    return RedirectResponse(f"{base(request)}/sessions?{urlencode(query)}", 303)
