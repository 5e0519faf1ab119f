"""The console's store health page: readiness, which parts of this process see the store as
down, the background jobs' last runs, and, on demand, what `sessionary check` finds (never
repairing). Its numbers are those of `GET /v1/health` and `POST /v1/check`, made by the same
functions (`sessionary.web.health`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sessionary.web.console.app import Admin, Console
from sessionary.web.health import check_json, health_json


def routes(console: Console) -> list[BaseRoute]:
    services = console.services

    async def page(request: Request, admin: Admin, checked: object = None) -> Response:
        store = await services.source.get()
        context = {
            "page": "health",
            "title": "Store health",
            "health": await health_json(store, services.features, services.store_name),
            "checked": checked,
        }
        return console.render(request, "health.html", context, admin)

    async def check(request: Request, admin: Admin) -> Response:
        store = await services.source.get()
        return await page(request, admin, await check_json(store, services.features))

    return [
        Route("/health", console.guarded(page, needs="*"), methods=["GET"]),
        Route("/health/check", console.guarded(check, needs="*"), methods=["POST"]),
    ]
