"""Django's `set_expiry` as the store's per-session lifetime ("remember me").

Django keeps a session's own expiry in its dict, under `_session_expiry` (`set_expiry` writes
it; `get_expiry_age`, `get_expiry_date` and `get_expire_at_browser_close` read it): Django's
code keeps owning that key. What the store must do with it is decided here, each time the
session is written, so the store itself keeps the session exactly as long as Django asked:

* seconds (`set_expiry(14 * 24 * 3600)`): the session ends after that much inactivity, its
  own idle ttl; the namespace's absolute ttl (`SESSIONARY["absolute_ttl"]`) still caps its
  whole life, as it caps every session's;
* a moment (a `datetime`, or a `timedelta` Django turned into one): the session ends then,
  however active: its own absolute ttl (`moment - created`, an absolute ttl always runs
  from creation), with an idle ttl as long, so inactivity does not end it sooner;
* 0 (until the browser closes: a cookie matter, Django's own) or nothing (`set_expiry(None)`):
  the namespace's policy;
* a moment already past, or negative seconds: the session is dead.

A namespace's `max_absolute_ttl` (`SESSIONARY["max_absolute_ttl"]`) bounds what one session
may ask: an expiry beyond it is clamped to it, never an error at save (Django's users do not
expect `set_expiry` to fail a response). Django's cookie then outlives the stored session,
which is harmless: a key the store no longer knows starts a fresh session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sessionary.store import Namespace

#: where Django's `set_expiry` keeps a session's own expiry
EXPIRY_KEY = "_session_expiry"
_MS_PER_S = 1000


@dataclass(frozen=True, slots=True)
class Expiry:
    """What a session's `_session_expiry` asks of the store."""

    #: the session's own ttls; both None: it lives by the namespace's policy
    idle_ttl: timedelta | None = None
    absolute_ttl: timedelta | None = None
    #: the expiry has passed: the session is dead, to be deleted rather than written
    passed: bool = False


POLICY = Expiry()
PASSED = Expiry(passed=True)


def expiry_of(
    session: Mapping[str, Any], namespace: Namespace, created_at: int, now: int
) -> Expiry:
    """What Django's `session` dict asks of the store, for a session created at `created_at`
    (ms since the epoch) and written at `now`, within `namespace`'s bound."""
    value = session.get(EXPIRY_KEY)
    if isinstance(value, str):  # a moment (Django stores a datetime as ISO 8601)
        moment = round(datetime.fromisoformat(value).timestamp() * _MS_PER_S)
        if moment <= now:
            return PASSED
        ttl = _bounded(moment - created_at, namespace)
        return Expiry(idle_ttl=ttl, absolute_ttl=ttl)
    if isinstance(value, int | float) and not isinstance(value, bool) and value != 0:
        if value < 0:
            return PASSED
        idle = _bounded(max(1, round(value * _MS_PER_S)), namespace)  # at least 1 ms
        uncapped = namespace.lifetime.absolute_ms is None and namespace.max_absolute_ms is not None
        # a bounded namespace without an absolute ttl: a session's own needs one, the bound
        absolute = namespace.max_absolute_ttl if uncapped else None
        return Expiry(idle_ttl=idle, absolute_ttl=absolute)
    return POLICY  # none, 0 (until the browser closes), or nothing Django writes


def _bounded(ms: int, namespace: Namespace) -> timedelta:
    """`ms` as a ttl, clamped to the namespace's `max_absolute_ttl` (see the module
    docstring: clamped, never refused)."""
    bound = namespace.max_absolute_ms
    return timedelta(milliseconds=ms if bound is None else min(ms, bound))
