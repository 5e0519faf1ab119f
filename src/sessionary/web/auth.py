"""Admin API keys: `Authorization: Bearer <key>`, compared in constant time."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request

from sessionary.http.bearer import BearerKeys
from sessionary.http.errors import ResponseError, error_response
from sessionary.web.settings import ApiKey


class ApiKeys:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = BearerKeys((key.key.get_secret_value(), key) for key in keys)

    def require(self, request: Request, namespace: str | None) -> ApiKey:
        """The key the request presents, if it may act on `namespace` (None: any); else
        401 (no or wrong key) or 403 (a key not allowed there)."""
        found = self._keys.require(request, "admin API key")
        if namespace is not None and not found.allows(namespace):
            raise ResponseError(
                error_response(403, "forbidden", f"this API key may not act on {namespace!r}")
            )
        return found
