"""The console's runs page: an owner's conversations, each with its active and recent runs;
one run with its events as they arrive; cancelling it. What it shows is the runs API's: a
run is rendered from the same `run_json` as `GET /api/v1/conversations/{id}/runs/{run_id}`,
its events are the same stream (`event_stream`), and cancelling is the same `Runs.cancel`,
without the owner check (an admin acts on anyone's run)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from sessionary.errors import InvalidSessionId, SessionaryError, ValidationError
from sessionary.http.errors import error_response, response_for
from sessionary.model import Session
from sessionary.runs.http import HEARTBEAT_S, event_stream, run_json
from sessionary.runs.model import ConversationNotFound, RunFinished, RunNotFound
from sessionary.runs.service import Runs
from sessionary.web.console.app import Admin, Console, base, notice, said

#: the most conversations an owner search reads (the newest), each with its recent runs
#: (at most 20, `Runs` keeps no more): a bounded page, whoever the owner
MAX_CONVERSATIONS = 20
_OFF = "The runs feature is off in this service's settings ([runs] enabled = false)."
#: a conversation as the page lists it (its id, owner, active run, runs as `run_json`)
Conversation = dict[str, Any]


def routes(console: Console) -> list[BaseRoute]:
    def feature() -> Runs | None:
        return console.services.features.runs

    def off(request: Request, admin: Admin) -> Response:
        context = {"page": "runs", "title": "Runs", "off": _OFF}
        return console.render(request, "runs.html", context, admin)

    async def page(request: Request, admin: Admin) -> Response:
        runs = feature()
        if runs is None:
            return off(request, admin)
        owner = request.query_params.get("owner", "").strip()
        wanted = request.query_params.get("id", "").strip()
        found: list[Conversation] | None = None
        total = 0
        problem = None
        status = 200
        try:
            if wanted.startswith(runs.runs.id_prefix):
                await runs.get(wanted)  # an unknown run is said here, under the search form
                return RedirectResponse(f"{base(request)}/runs/{quote(wanted)}", 303)
            if wanted:
                listed = [await runs.conversation(wanted)]
            elif owner:
                listed = await runs.conversations.list_subject(owner)
            else:
                listed = []
            total = len(listed)
            if wanted or owner:
                found = await _conversations(runs, listed[:MAX_CONVERSATIONS])
        except (RunNotFound, ConversationNotFound):
            problem = f"No conversation or run {wanted!r} (a finished run is kept for a while)."
            status = 404
        except ValidationError as exc:
            problem, status = str(exc), 400
        except InvalidSessionId as exc:
            problem = f"{exc} (a conversation id starts with conv_, a run id with run_)"
            status = 400
        context = {
            "page": "runs",
            "title": "Runs",
            "owner": owner,
            "wanted": wanted,
            "conversations": found,
            "total": total,
            "problem": problem,
            "notice": notice(request, admin),
        }
        return console.render(request, "runs.html", context, admin, status=status)

    async def run_page(request: Request, admin: Admin) -> Response:
        runs = feature()
        if runs is None:
            return off(request, admin)
        run_id = request.path_params["run_id"]
        try:
            run = await runs.get(run_id)
        except (RunNotFound, InvalidSessionId) as exc:
            message = (
                f"No run {run_id!r}: a finished run is kept for a while, then forgotten."
                if isinstance(exc, RunNotFound)
                else f"{exc}."
            )
            missing = {"page": "runs", "title": "No such run", "message": message}
            return console.render(request, "message.html", missing, admin, status=exc.http_status)
        context = {
            "page": "runs",
            "run": run_json(run),
            "owner": run.owner,
            "active": run.active,
            "result": None if run.result is None else _pretty(run.result),
            "notice": notice(request, admin),
        }
        return console.render(request, "run.html", context, admin)

    async def events(request: Request, admin: Admin) -> Response:
        """The run's events as the API streams them (`Last-Event-ID`, else `?after=`, to
        resume), for the run page's `EventSource`; errors are JSON, as the API's."""
        runs = feature()
        if runs is None:
            return error_response(404, "runs_disabled", _OFF)
        position = request.headers.get("last-event-id") or request.query_params.get("after")
        try:
            run = await runs.get(request.path_params["run_id"])
            return await event_stream(
                runs,
                run,
                position,
                heartbeat_s=HEARTBEAT_S,
                send_timeout_s=runs.settings.stream_send_timeout.total_seconds(),
            )
        except SessionaryError as exc:  # an unknown run, a bad cursor, the store down
            return response_for(exc)

    async def cancel(request: Request, admin: Admin) -> Response:
        runs = feature()
        if runs is None:
            return off(request, admin)
        run_id = request.path_params["run_id"]
        try:
            cancelled = await runs.cancel(run_id)
        except RunFinished as exc:
            done = f"The run had already ended ({exc.status}): nothing was cancelled."
        except (RunNotFound, InvalidSessionId):
            return said(f"{base(request)}/runs", "No such run: nothing was cancelled.", admin)
        else:
            done = f"Cancelled the run (now {cancelled.status})."
        return said(f"{base(request)}/runs/{quote(run_id)}", done, admin)

    return [
        Route("/runs", console.guarded(page, needs="runs"), methods=["GET"]),
        Route("/runs/{run_id}", console.guarded(run_page, needs="runs"), methods=["GET"]),
        Route("/runs/{run_id}/events", console.guarded(events, needs="runs"), methods=["GET"]),
        Route("/runs/{run_id}/cancel", console.guarded(cancel, needs="runs"), methods=["POST"]),
    ]


async def _conversations(runs: Runs, listed: list[Session]) -> list[Conversation]:
    """Each conversation with its runs still kept, newest first, as the API renders them:
    every run of every conversation read at once (at most `MAX_CONVERSATIONS` x 20)."""

    async def read(run_id: str) -> dict[str, Any] | None:
        with contextlib.suppress(RunNotFound):  # past its retention: no longer kept
            return run_json(await runs.get(run_id))
        return None

    ids = [list(reversed(c.data.get("recent", []))) for c in listed]
    read_all = await asyncio.gather(*(read(run_id) for each in ids for run_id in each))
    found = iter(read_all)
    shown = []
    for conversation, recent in zip(listed, ids, strict=True):
        kept = [run for run in (next(found) for _ in recent) if run is not None]
        shown.append(
            {
                "id": conversation.id,
                "owner": conversation.subject,
                "createdAt": conversation.created_at,
                "active": conversation.data.get("active"),
                "queued": len(conversation.data.get("queue", [])),
                "runs": kept,
                "gone": len(recent) - len(kept),
            }
        )
    return shown


def _pretty(value: Any) -> str:
    """A run's result as the page prints it: indented JSON."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
