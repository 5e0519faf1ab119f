"""Cross-site request forgery: a state change authenticated by a cookie (the browser sends it
whichever page asks) must come from a page of this origin, or of one the caller allows.

A browser sends `Origin` with every cross-origin POST, and with same-origin POSTs in all
current engines; lacking it, Fetch Metadata's `Sec-Fetch-Site` (set by the browser, which a
page cannot forge) says same-origin or not. A request with neither is not from a current
browser's page: refused too, as a cookie is a browser's credential. Used by the runs API's
cookie-authenticated POSTs and by every form of the console."""

from __future__ import annotations

from collections.abc import Container

from starlette.requests import Request

from sessionary.http.errors import ResponseError, error_response


def own_origin(request: Request) -> str:
    """The origin the request was sent to (its scheme and Host), as a browser writes it:
    without the scheme's default port."""
    url = request.url
    default = {"http": 80, "https": 443}.get(url.scheme)
    port = "" if url.port is None or url.port == default else f":{url.port}"
    return f"{url.scheme}://{(url.hostname or '').lower()}{port}"


def require_same_origin(request: Request, allowed: Container[str] = frozenset()) -> None:
    """Refuse (403 `csrf_rejected`) a request that no page of this origin, nor of an origin
    in `allowed` (lowercase), made (see the module)."""
    origin = request.headers.get("origin")
    if origin is not None:
        if origin.lower() == own_origin(request) or origin.lower() in allowed:
            return
        reason = f"a request from {origin!r} may not use the session cookie here"
    elif request.headers.get("sec-fetch-site") == "same-origin":
        return
    else:
        reason = "a cookie-authenticated request must carry Origin (or Sec-Fetch-Site)"
    raise ResponseError(error_response(403, "csrf_rejected", reason))
