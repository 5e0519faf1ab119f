"""One OpenTelemetry span per HTTP request of the service, when the application traces
(`sessionary.telemetry`).

Its own, not opentelemetry-instrumentation-asgi's: that one records the request's path and
query (`url.path`, `url.query`), and sessionary's paths carry session, run and conversation
ids (`/v1/namespaces/web/sessions/<id>`), which are credentials. This span records the route
template (`http.route`: `/v1/namespaces/{namespace}/sessions/{session_id}`), the method and
the status, under the names of OpenTelemetry's HTTP semantic conventions, and continues the
caller's trace (`traceparent`, through the global propagator).
"""

from __future__ import annotations

from typing import Any

from starlette.routing import replace_params
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.telemetry import ERROR_TYPE, outcome_of, tracers

METHOD = "http.request.method"
ROUTE = "http.route"
STATUS = "http.response.status_code"
#: a method outside these is recorded as "_OTHER" (OpenTelemetry's HTTP conventions): a
#: client's made-up methods must not make a span name each
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
OTHER_METHOD = "_OTHER"


class Traced:
    """ASGI middleware: each HTTP request in a server span named "<method> <route>"."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = tracers.current() if scope["type"] == "http" else None
        if tracer is None:
            await self.app(scope, receive, send)
            return
        # a tracer exists only with the API installed (the server extra brings it along)
        from opentelemetry import trace as otel_trace
        from opentelemetry.propagate import extract

        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        with tracer.start_as_current_span(
            method,
            context=extract(headers),
            kind=otel_trace.SpanKind.SERVER,
            attributes={METHOD: method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:

            async def send_and_note(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute(STATUS, status)
                    if status >= 500:
                        span.set_status(otel_trace.StatusCode.ERROR)
                await send(message)

            try:
                await self.app(scope, receive, send_and_note)
            except BaseException as exc:
                span.set_attribute(ERROR_TYPE, outcome_of(exc))
                span.set_status(otel_trace.StatusCode.ERROR)
                raise
            finally:
                route = route_template(scope)
                if route is not None:
                    span.set_attribute(ROUTE, route)
                    span.update_name(f"{method} {route}")


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (the router sets the route in the scope), or None
    for a request no route matched: its path is the client's, and may carry anything.

    FastAPI (0.16x) keeps the prefix given to `include_router` out of its routes' `path`
    (the playground's `GET /session` is served at `/api/v1/playground/session`): the path's
    part before what the route matched is that prefix, written in the code, put back in
    front. A prefix with parameters of its own (whose values the path holds) is left out."""
    known = scope.get(_TEMPLATE)
    if known is not None:  # the tracing and the metrics of one request ask once each
        return str(known)
    route: Any = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return None
    found = _template(scope, route, str(template))
    scope[_TEMPLATE] = found
    return found


#: where a request's scope keeps its route template once worked out (an ASGI extension key)
_TEMPLATE = "sessionary.route_template"


def _template(scope: Scope, route: Any, template: str) -> str:
    path_format = getattr(route, "path_format", None)
    convertors = getattr(route, "param_convertors", None)
    if path_format is None or convertors is None:
        return template
    rendered, unused = replace_params(path_format, convertors, dict(scope.get("path_params", {})))
    path = str(scope.get("path", ""))
    if unused or not path.endswith(rendered):
        return template
    return path[: len(path) - len(rendered)] + template
