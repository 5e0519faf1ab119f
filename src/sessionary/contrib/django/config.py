"""The namespace Django's sessions live in, from the project's settings.

    SESSIONARY = {
        "store": "redis://localhost:6379/0",  # or a SyncStore; default: sessionary.db
        "namespace": "django",                # default
        "absolute_ttl": 30 * 24 * 3600,       # seconds, or None for no cap; default 30 days
        "max_absolute_ttl": 90 * 24 * 3600,   # seconds; optional, default no bound
        "devices": {"user_agent": True, "ip": "truncated"},  # optional, default off
        "max_sessions_per_subject": 3,        # optional, default no limit
        "on_max_sessions": "evict_oldest",    # or "refuse" (the default)
        "encryption_keys": os.environ["SESSION_KEYS"],  # optional: encryption at rest
    }

The idle lifetime is Django's own `SESSION_COOKIE_AGE`: a session unused for that long is
gone. `absolute_ttl` caps a session's whole life however active it is (Django has no such
setting; a stolen session id should not live for ever). A session's own `set_expiry` may
ask for longer ("remember me", see `expiry`); `max_absolute_ttl` bounds what it may ask. The
default store is an SQLite file `sessionary.db` in `BASE_DIR` (as `startproject` defines
it), else in the working directory.

`max_sessions_per_subject` caps the live sessions of one user (the logged-in user is the
session's subject): a login past it evicts the user's least recently active session
("evict_oldest"), or is refused ("refuse"): `sessionary.contrib.django.SessionMiddleware`
then answers 409 and the login does not take effect (see `middleware`;
docs/account-security.md).

`devices` makes a session record the user agent and client IP of the request that created
it (the `sessionary.devices.DevicePolicy` arguments, or a `DevicePolicy`; off by default, a
privacy choice). It needs `sessionary.contrib.django.SessionMiddleware`, which hands the
request's client to the session; the IP is `REMOTE_ADDR`, so behind a proxy have the server
or a middleware set it to the client's.

`encryption_keys` seals every session's data and metadata in the store (AES-256-GCM, see
docs/encryption.md): a list of keys, or one comma-separated str (as an environment variable
carries them); each 32 bytes, or base64 text optionally prefixed "id:". The first seals,
every one opens. A session that cannot be opened (sealed under a key no longer listed, or
tampered with) is treated as absent, as Django treats one it cannot decode: the request gets
a fresh session, and the store logs it to the `sessionary.security` logger. A bad key is an
`ImproperlyConfigured` naming its position and what is wrong with it, never the key. With a
`SyncStore` as "store", open it with the keys instead (`connect_sync(url,
encryption_keys=...)`).

The settings are read on every call (cheaply), so `override_settings` works; one `SyncStore`
per store URL serves the whole process (`sessionary.sync.shared`: its own loop thread and
connections, re-opened in a forked worker), shared with any other integration naming it.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from sessionary.devices import DevicePolicy
from sessionary.sealing import EncryptionKeys, parse_keys
from sessionary.store import DEFAULT_URL
from sessionary.sync import SyncNamespace, SyncStore, shared

DEFAULT_NAMESPACE = "django"
DEFAULT_ABSOLUTE_TTL_S = 30 * 24 * 3600

#: the stores this module took from `shared` for a URL (what `close_stores` closes)
_OPENED: set[SyncStore] = set()
_NAMESPACES: dict[
    tuple[SyncStore, str, int, int | None, int | None, int | None, str], SyncNamespace
] = {}
_LOCK = threading.Lock()


def namespace() -> SyncNamespace:
    """The namespace the settings name, on the process's store for them."""
    options: dict[str, Any] = getattr(settings, "SESSIONARY", {})
    unknown = set(options) - {
        "store",
        "namespace",
        "absolute_ttl",
        "max_absolute_ttl",
        "devices",
        "max_sessions_per_subject",
        "on_max_sessions",
        "encryption_keys",
    }
    if unknown:
        raise ImproperlyConfigured(f"SESSIONARY has unknown keys: {sorted(unknown)}")
    store = options.get("store") or _default_url()
    name = options.get("namespace", DEFAULT_NAMESPACE)
    idle_s = settings.SESSION_COOKIE_AGE
    absolute_s = options.get("absolute_ttl", DEFAULT_ABSOLUTE_TTL_S)
    bound_s = options.get("max_absolute_ttl")
    most = options.get("max_sessions_per_subject")
    on_max = options.get("on_max_sessions", "refuse")
    keys = options.get("encryption_keys")
    if isinstance(store, SyncStore):
        if keys:
            raise ImproperlyConfigured(
                "SESSIONARY['encryption_keys'] goes with a store URL: open the SyncStore given "
                "as 'store' with them (connect_sync(url, encryption_keys=...))"
            )
        sync_store = store
    else:
        sync_store = _opened(store, keys)
    key = (sync_store, name, idle_s, absolute_s, bound_s, most, on_max)
    found = _NAMESPACES.get(key)
    if found is None:
        with _LOCK:
            found = _NAMESPACES.get(key)
            if found is None:
                found = _NAMESPACES[key] = sync_store.namespace(
                    name,
                    idle_ttl=timedelta(seconds=idle_s),
                    absolute_ttl=_seconds(absolute_s),
                    max_absolute_ttl=_seconds(bound_s),
                    max_sessions_per_subject=most,
                    on_max_sessions=on_max,
                )
    return found


def devices() -> DevicePolicy | None:
    """What sessions record of their device, from `SESSIONARY["devices"]`; None: nothing
    (the default)."""
    options: dict[str, Any] = getattr(settings, "SESSIONARY", {})
    given = options.get("devices")
    if given is None or isinstance(given, DevicePolicy):
        policy = given
    else:
        try:
            policy = DevicePolicy(**given)
        except (TypeError, ValueError) as error:
            raise ImproperlyConfigured(f"SESSIONARY['devices']: {error}") from None
    return policy if policy is not None and policy.records else None


def close_stores() -> None:
    """Close every store this module opened from a URL (at shutdown; tests between runs).
    The next session opens them again."""
    with _LOCK:
        stores = list(_OPENED)
        _OPENED.clear()
        _NAMESPACES.clear()
    for store in stores:
        store.close()


def _opened(url: str, keys: EncryptionKeys | None) -> SyncStore:
    """The process's store for `url` with `keys` (see `sessionary.sync.shared`); bad keys,
    or the URL open already with other ones, are `ImproperlyConfigured`."""
    try:
        parsed = parse_keys(keys) if keys else None
    except ValueError as error:  # names the key's position and size, never the key
        raise ImproperlyConfigured(f"SESSIONARY['encryption_keys']: {error}") from None
    try:
        found = shared(url, encryption_keys=parsed)
    except ValueError as error:  # another configuration holds the URL open
        raise ImproperlyConfigured(f"SESSIONARY['store']: {error}") from None
    if found not in _OPENED:
        with _LOCK:
            _OPENED.add(found)
    return found


def _seconds(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _default_url() -> str:
    base = getattr(settings, "BASE_DIR", None)
    if base is None:
        return DEFAULT_URL
    return f"sqlite:///{Path(base).resolve() / 'sessionary.db'}"
