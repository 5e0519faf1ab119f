"""Reading and writing the session cookie."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import cookie_parser


@dataclass(frozen=True, slots=True)
class CookieSpec:
    """How a session cookie is written. With `secure` and `host_prefix`, the name gets the
    `__Host-` prefix when there is no `domain` (the browser then refuses it from plain http,
    subdomains and other paths), and `__Secure-` when there is one."""

    name: str
    secure: bool = True
    http_only: bool = True
    same_site: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    domain: str | None = None
    max_age: int | None = None  # seconds; None: a browser-session cookie
    host_prefix: bool = True

    @property
    def full_name(self) -> str:
        if not self.secure or not self.host_prefix:
            return self.name
        return (
            f"__Host-{self.name}"
            if self.domain is None and self.path == "/"
            else f"__Secure-{self.name}"
        )

    def header(self, value: str, max_age: int | None = None) -> tuple[bytes, bytes]:
        """The Set-Cookie header carrying `value` (an id: URL-safe, needs no quoting)."""
        parts = [f"{self.full_name}={value}", f"Path={self.path}"]
        age = self.max_age if max_age is None else max_age
        if age is not None:
            parts.append(f"Max-Age={age}")
        if self.domain is not None:
            parts.append(f"Domain={self.domain}")
        if self.secure:
            parts.append("Secure")
        if self.http_only:
            parts.append("HttpOnly")
        parts.append(f"SameSite={self.same_site.capitalize()}")
        return b"set-cookie", "; ".join(parts).encode("latin-1")

    def clearing_header(self) -> tuple[bytes, bytes]:
        return self.header("", max_age=0)

    def read(self, scope: Mapping[str, Any]) -> str | None:
        """The cookie's value in a request, or None."""
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                found = cookie_parser(value.decode("latin-1")).get(self.full_name)
                if found:
                    return found
        return None
