"""Django's session dict <-> the data sessionary stores.

Django serializes a session with `SESSION_SERIALIZER` (JSON by default); sessionary's codec is
strict JSON and refuses what JSON cannot hold exactly (tuples, for one). So the dict is put
through Django's own serializer and read back: what Django would have stored as JSON is what
we store, a tuple becomes a list exactly as with Django's database backend, and a value the
serializer refuses fails at `save()` as it would there.

Two things of Django's live in the dict and mean something to the store:

* `_auth_user_id` (set by `django.contrib.auth.login`): the user, recorded as the session's
  subject, so `list_subject`/`revoke_subject` find a user's sessions;
* `_session_expiry` (`set_expiry`): seconds of inactivity, or an ISO datetime. When the data
  is written, it becomes a deadline (ms since the epoch) kept under `DEADLINE_KEY` and never
  shown to Django: a session loaded past its deadline is dead. Seconds count from the write
  that set them (as Django's database backend counts them: `expire_date` is written at save).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import orjson

#: the session's own deadline from `set_expiry`, in ms since the epoch (hidden from Django)
DEADLINE_KEY = "_sessionary_deadline_ms"
#: where `django.contrib.auth` keeps the logged-in user's primary key (as text)
USER_KEY = "_auth_user_id"
_EXPIRY_KEY = "_session_expiry"
_MS_PER_S = 1000


class Serializer(Protocol):
    """Django's `SESSION_SERIALIZER` interface (an instance of it)."""

    def dumps(self, obj: Any) -> bytes: ...


def to_stored(session: dict[str, Any], serializer: Serializer, now_ms: int) -> dict[str, Any]:
    """What to store for Django's `session` dict, written at `now_ms`."""
    stored: dict[str, Any] = orjson.loads(serializer.dumps(session))
    stored.pop(DEADLINE_KEY, None)
    deadline = _deadline(session.get(_EXPIRY_KEY), now_ms)
    if deadline is not None:
        stored[DEADLINE_KEY] = deadline
    return stored


def to_django(stored: dict[str, Any]) -> dict[str, Any]:
    """The dict Django sees for stored data (a copy, without what is ours)."""
    return {key: value for key, value in stored.items() if key != DEADLINE_KEY}


def past_deadline(stored: dict[str, Any], now_ms: int) -> bool:
    """Whether the session's own expiry (`set_expiry`) has passed."""
    deadline = stored.get(DEADLINE_KEY)
    return type(deadline) is int and deadline <= now_ms


def subject_of(session: dict[str, Any]) -> str | None:
    """The logged-in user of Django's session dict, as the session's subject."""
    user = session.get(USER_KEY)
    return None if user is None else str(user)


def _deadline(expiry: object, now_ms: int) -> int | None:
    """`set_expiry`'s value as a deadline: None for none, or for 0 (until the browser
    closes, which the server cannot see: the namespace's lifetimes still apply)."""
    if isinstance(expiry, str):
        return round(datetime.fromisoformat(expiry).timestamp() * _MS_PER_S)
    if type(expiry) is int and expiry != 0:
        return now_ms + expiry * _MS_PER_S
    return None
