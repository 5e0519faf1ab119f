"""Django's session dict <-> the data sessionary stores.

Django serializes a session with `SESSION_SERIALIZER` (JSON by default); sessionary's codec is
strict JSON and refuses what JSON cannot hold exactly (tuples, for one). So the dict is put
through Django's own serializer and read back: what Django would have stored as JSON is what
we store, a tuple becomes a list exactly as with Django's database backend, and a value the
serializer refuses fails at `save()` as it would there.

`_auth_user_id` (set by `django.contrib.auth.login`) means something to the store: the user,
recorded as the session's subject, so `list_subject`/`revoke_subject` find a user's sessions.
(`_session_expiry`, from `set_expiry`, is stored as Django wrote it and becomes the session's
own lifetime in the store: see `expiry`.)
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

#: where `django.contrib.auth` keeps the logged-in user's primary key (as text)
USER_KEY = "_auth_user_id"


class Serializer(Protocol):
    """Django's `SESSION_SERIALIZER` interface (an instance of it)."""

    def dumps(self, obj: Any) -> bytes: ...


def to_stored(session: dict[str, Any], serializer: Serializer) -> dict[str, Any]:
    """What to store for Django's `session` dict."""
    stored: dict[str, Any] = orjson.loads(serializer.dumps(session))
    return stored


def subject_of(session: dict[str, Any]) -> str | None:
    """The logged-in user of Django's session dict, as the session's subject."""
    user = session.get(USER_KEY)
    return None if user is None else str(user)
