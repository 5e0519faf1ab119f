"""Admin API keys: `Authorization: Bearer <key>`, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.requests import Request

from sessionary.http.errors import ResponseError, error_response
from sessionary.web.settings import ApiKey


class ApiKeys:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = [(key.key.get_secret_value().encode(), key) for key in keys]

    def require(self, request: Request, namespace: str | None) -> ApiKey:
        """The key the request presents, if it may act on `namespace` (None: any); else
        401 (no or wrong key) or 403 (a key not allowed there)."""
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthorized("send the admin API key as 'Authorization: Bearer <key>'")
        candidate = presented.strip().encode()
        found = None
        for secret, key in self._keys:  # compare against every key: no early exit
            if hmac.compare_digest(secret, candidate) and found is None:
                found = key
        if found is None:
            raise _unauthorized("the API key is not valid")
        if namespace is not None and not found.allows(namespace):
            raise ResponseError(
                error_response(403, "forbidden", f"this API key may not act on {namespace!r}")
            )
        return found


def _unauthorized(message: str) -> ResponseError:
    return ResponseError(
        error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
    )
