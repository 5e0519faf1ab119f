"""Backends: where sessions are stored. `open_backend(url)` picks one by the URL's scheme.

Built in: `memory://`, `sqlite:///path` (the default) and `redis://` / `rediss://` / `unix://`
(Redis 7+ and Valkey; `redis+cluster://` and `rediss+cluster://` for a Redis Cluster,
`redis+sentinel://` and `rediss+sentinel://` for a primary that Redis Sentinel names). A
third party adds a scheme with an entry point in the group
`sessionary.backends` naming an async callable `(url: str) -> Backend`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import cast

from sessionary.contract import Backend
from sessionary.errors import BadStoreURL
from sessionary.extras import require

_REDIS_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "unix",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
    }
)


async def open_backend(url: str) -> Backend:
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise BadStoreURL(f"the store URL {url!r} has no scheme: {_with_a_scheme(url)}")
    if scheme == "memory":
        from sessionary.backends.memory import MemoryBackend

        return MemoryBackend.from_url(url)
    if scheme == "sqlite":
        from sessionary.backends.sqlite import SQLiteBackend

        return await SQLiteBackend.open(url)
    if scheme in _REDIS_SCHEMES:
        require("redis", "redis", f"a {scheme}:// store")
        from sessionary.backends.redis import RedisBackend

        return RedisBackend.from_url(url)
    for entry in entry_points(group="sessionary.backends", name=scheme):
        factory = cast(Callable[[str], Awaitable[Backend]], entry.load())
        return await factory(url)
    raise BadStoreURL(
        f"no backend for scheme {scheme!r}: use memory://, sqlite:///path or redis://host:port/db"
    )


def _with_a_scheme(url: str) -> str:
    """The fix of a URL written without its scheme, as the operator most likely meant it."""
    if re.fullmatch(r"[\w.-]+:\d+(/\d+)?", url):  # host:port, as redis-cli takes it
        return f"write redis://{url}" + ("" if "/" in url else "/0")
    if url.endswith((".db", ".sqlite", ".sqlite3")):
        return f"write sqlite:///{url}"
    return "write sqlite:///path.db, redis://host:6379/0 or memory://"
