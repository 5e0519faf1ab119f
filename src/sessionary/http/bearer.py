"""`Authorization: Bearer <key>`: keys that each stand for something (an admin key's scope, a
user's subject, a project), compared in constant time against every key."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Generic, TypeVar

from starlette.requests import Request

from sessionary.http.errors import ResponseError, error_response

T = TypeVar("T")


def presented_key(request: Request) -> bytes | None:
    """The Bearer key of the request, or None when it sends none."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip().encode()


class BearerKeys(Generic[T]):
    def __init__(self, keys: Iterable[tuple[str, T]]) -> None:
        self._keys = [(secret.encode(), value) for secret, value in keys]

    def match(self, request: Request) -> T | None:
        """What the request's key stands for; None without a key or with a wrong one. Every
        key is compared, with no early exit: the time taken says nothing about the keys."""
        candidate = presented_key(request)
        return None if candidate is None else self.find(candidate)

    def find(self, candidate: bytes) -> T | None:
        """What `candidate` stands for (None: no key), every key compared as `match` says."""
        found = None
        for secret, value in self._keys:
            if hmac.compare_digest(secret, candidate) and found is None:
                found = value
        return found

    def require(self, request: Request, what: str) -> T:
        """What the request's key stands for, else a 401 naming `what` to send."""
        candidate = presented_key(request)
        if candidate is None:
            raise unauthorized(f"send the {what} as 'Authorization: Bearer <key>'")
        found = self.find(candidate)
        if found is None:
            raise unauthorized(f"the {what} is not valid")
        return found


def unauthorized(message: str) -> ResponseError:
    return ResponseError(
        error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
    )
