"""The namespace Django's sessions live in, from the project's settings.

    SESSIONARY = {
        "store": "redis://localhost:6379/0",  # or a SyncStore; default: sessionary.db
        "namespace": "django",                # default
        "absolute_ttl": 30 * 24 * 3600,       # seconds, or None for no cap; default 30 days
    }

The idle lifetime is Django's own `SESSION_COOKIE_AGE`: a session unused for that long is
gone. `absolute_ttl` caps a session's whole life however active it is (Django has no such
setting; a stolen session id should not live for ever). The default store is an SQLite file
`sessionary.db` in `BASE_DIR` (as `startproject` defines it), else in the working directory.

The settings are read on every call (cheaply), so `override_settings` works; one `SyncStore`
per store URL serves the whole process (its own loop thread and connections, re-opened in a
forked worker).
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from sessionary.store import DEFAULT_URL
from sessionary.sync import SyncNamespace, SyncStore, connect_sync

DEFAULT_NAMESPACE = "django"
DEFAULT_ABSOLUTE_TTL_S = 30 * 24 * 3600

_STORES: dict[str, SyncStore] = {}
_NAMESPACES: dict[tuple[SyncStore, str, int, int | None], SyncNamespace] = {}
_LOCK = threading.Lock()


def namespace() -> SyncNamespace:
    """The namespace the settings name, on the process's store for them."""
    options: dict[str, Any] = getattr(settings, "SESSIONARY", {})
    unknown = set(options) - {"store", "namespace", "absolute_ttl"}
    if unknown:
        raise ImproperlyConfigured(f"SESSIONARY has unknown keys: {sorted(unknown)}")
    store = options.get("store") or _default_url()
    name = options.get("namespace", DEFAULT_NAMESPACE)
    idle_s = settings.SESSION_COOKIE_AGE
    absolute_s = options.get("absolute_ttl", DEFAULT_ABSOLUTE_TTL_S)
    sync_store = store if isinstance(store, SyncStore) else _shared(store)
    key = (sync_store, name, idle_s, absolute_s)
    found = _NAMESPACES.get(key)
    if found is None:
        with _LOCK:
            found = _NAMESPACES.get(key)
            if found is None:
                found = _NAMESPACES[key] = sync_store.namespace(
                    name,
                    idle_ttl=timedelta(seconds=idle_s),
                    absolute_ttl=None if absolute_s is None else timedelta(seconds=absolute_s),
                )
    return found


def close_stores() -> None:
    """Close every store this module opened from a URL (at shutdown; tests between runs).
    The next session opens them again."""
    with _LOCK:
        stores = list(_STORES.values())
        _STORES.clear()
        _NAMESPACES.clear()
    for store in stores:
        store.close()


def _shared(url: str) -> SyncStore:
    found = _STORES.get(url)
    if found is None:
        with _LOCK:
            found = _STORES.get(url)
            if found is None:
                found = _STORES[url] = connect_sync(url)
    return found


def _default_url() -> str:
    base = getattr(settings, "BASE_DIR", None)
    if base is None:
        return DEFAULT_URL
    return f"sqlite:///{Path(base).resolve() / 'sessionary.db'}"
