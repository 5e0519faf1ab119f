"""`/docs`: Swagger UI over the service's OpenAPI document, served from this process.

FastAPI's own page loads Swagger UI from a CDN, so it is blank on a machine without the
internet (an operator's laptop on a plane, a server behind an egress firewall). Here its
JavaScript and CSS come from the `fastapi-offline` package (a Swagger UI 5 build: it reads
OpenAPI 3.1, which FastAPI writes), mounted under `ASSETS`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS = "/docs"
ASSETS = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """Serve `/docs` and its assets; create `app` with `docs_url=None` (FastAPI's page)."""
    app.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get(DOCS, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        )
