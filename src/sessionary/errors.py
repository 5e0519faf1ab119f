"""Typed errors. Every error sessionary raises on purpose is a `SessionaryError`.

Each class carries a stable machine-readable `code`, which the HTTP layer turns into the
`{"error": code}` body, so the wire contract never depends on a message's wording, and the
HTTP status that fits it (`http_status`) and the body's other fields (`details()`), so
features' own errors need no mapping table.
"""

from __future__ import annotations

from typing import Any


class SessionaryError(Exception):
    """Base class of every error raised by sessionary."""

    code = "sessionary_error"
    http_status = 400

    def details(self) -> dict[str, Any]:
        """Fields a client can act on, beside the code and the message."""
        return {}


class SessionNotFound(SessionaryError):
    """The session does not exist, or it has expired (the two are indistinguishable on purpose)."""

    code = "session_not_found"
    http_status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no live session with id {_short(session_id)}")
        self.session_id = session_id


class SessionExists(SessionaryError):
    """A create named an id that is already taken."""

    code = "session_exists"
    http_status = 409

    def __init__(self, session_id: str) -> None:
        super().__init__(f"a session with id {_short(session_id)} already exists")
        self.session_id = session_id


class VersionConflict(SessionaryError):
    """An update said `expected_version=N`, but the stored session is at another version."""

    code = "version_conflict"
    http_status = 412

    def __init__(self, session_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"session {_short(session_id)} is at version {actual}, not the expected {expected}"
        )
        self.session_id = session_id
        self.expected = expected
        self.actual = actual

    def details(self) -> dict[str, Any]:
        return {"expected_version": self.expected, "current_version": self.actual}


class TooManySessions(SessionaryError):
    """A session would take its subject past the namespace's `max_sessions_per_subject`, and
    the namespace refuses rather than evicting (`on_max_sessions="refuse"`)."""

    code = "too_many_sessions"
    http_status = 409

    def __init__(self, subject: str, max_sessions: int) -> None:
        super().__init__(
            f"this subject already has {max_sessions} live session(s), the most this "
            "namespace allows: log out of one first"
        )
        self.subject = subject
        self.max_sessions = max_sessions

    def details(self) -> dict[str, Any]:
        return {"max_sessions": self.max_sessions}


class LogClosed(SessionaryError):
    """The session's event log ended (a final event was appended): nothing more can go in."""

    code = "log_closed"
    http_status = 409

    def __init__(self, session_id: str) -> None:
        super().__init__(f"the event log of session {_short(session_id)} is closed")
        self.session_id = session_id


class InvalidCursor(SessionaryError):
    """A log cursor is malformed, belongs to another session's log, or lies in its future."""

    code = "invalid_cursor"
    http_status = 400


class InvalidSessionId(SessionaryError):
    """The id is malformed (wrong type, charset, length or prefix). Raised before any I/O."""

    code = "invalid_session_id"
    http_status = 400


class PayloadTooLarge(SessionaryError):
    """An encoded payload (a session's data or metadata, an event's data, a queue item)
    exceeds its cap."""

    code = "payload_too_large"
    http_status = 413

    def __init__(self, size: int, limit: int, what: str = "session payload") -> None:
        super().__init__(f"encoded {what} is {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {"size": self.size, "limit": self.limit}


class StoreUnavailable(SessionaryError):
    """The backend cannot be reached or refused to work. Never a disguised "not found".

    On a write, the outcome is unknown: the operation may or may not have been applied.
    """

    code = "store_unavailable"
    http_status = 503


class BadStoreURL(StoreUnavailable, ValueError):
    """The store URL cannot work as written, and waiting will not help: a scheme no backend
    serves, a malformed URL, an SQLite file in a directory that does not exist or written by
    a newer sessionary, a Redis database index out of range or credentials it refuses. The
    message names the fix. A `ValueError`, as URL parsing always raised, and a
    `StoreUnavailable`, what a call under way hears when the server refuses the URL (a 503
    to HTTP clients, the store's outage policy applying): `Store.verify` is what fails a
    start on it at once."""


class ValidationError(SessionaryError, ValueError):
    """An argument has the wrong type or value (non-JSON data, a bad counter name, ...)."""

    code = "validation_error"
    http_status = 422


class PayloadTooDeep(ValidationError):
    """A JSON value nests objects and arrays deeper than `sessionary.codec.MAX_DEPTH`: refused
    at write time, so that whatever is stored can always be read and answered again."""

    code = "payload_too_deep"

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} nests objects and arrays deeper than {limit} levels")
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {"max_depth": self.limit}


# SQLite's result codes that mean we asked something wrong: bugs of ours, raised as they are
# (a 500 with its traceback). Every other failure is the file's or the machine's state (disk
# full, I/O error, read-only file, locked past busy_timeout, corrupt, out of memory, cannot
# open): StoreUnavailable.
_SQLITE_BUGS = frozenset(
    {"SQLITE_ERROR", "SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_RANGE", "SQLITE_MISUSE"}
)


def sqlite_unavailable(where: str, exc: Exception) -> StoreUnavailable | None:
    """`StoreUnavailable` for an `sqlite3.Error` of the file's state, None for a bug of ours
    (by the primary result code: SQLITE_IOERR_WRITE is an SQLITE_IOERR; an error of the
    sqlite3 module itself, without a code, is how we called it). The one place the SQLite
    store and the SQLite analytics sink decide which is which."""
    name = getattr(exc, "sqlite_errorname", None)
    if not isinstance(name, str) or "_".join(name.split("_", 2)[:2]) in _SQLITE_BUGS:
        return None
    return StoreUnavailable(f"SQLite {where} failed: {exc} ({name})")


def _short(session_id: str) -> str:
    """Never print a whole session id: it is a bearer credential."""
    return f"{session_id[:8]}..." if len(session_id) > 8 else "<short id>"


class SessionUnreadable(SessionaryError):
    """A stored session is sealed (encryption at rest) and cannot be opened: sealed under a
    key this process was not given (`reason` "unknown_key"), or its bytes fail
    authentication (`reason` "tampered": changed, or copied from another session, namespace
    or field). Never read as garbage. The web integrations treat such a session as absent
    (a new one is issued); the API raises this, which says what the operator must do."""

    code = "session_unreadable"
    #: the session exists but this server's configuration cannot open it: a conflict with
    #: the stored state, which the operator resolves (adding the key, or deleting it)
    http_status = 409

    def __init__(self, session_id: str, key_id: str, reason: str) -> None:
        if reason == "unknown_key":
            problem = f"is sealed under key {key_id!r}, which is not among encryption_keys"
            remedy = "add the key that sealed it to encryption_keys, or delete the session"
        elif not key_id:
            problem = "is neither sealed nor plain JSON (tampered with)"
            remedy = "delete the session; if the store's bytes were altered, investigate"
        else:
            problem = f"fails authentication under key {key_id!r} (tampered with, or moved)"
            remedy = "delete the session; if the store's bytes were altered, investigate"
        super().__init__(f"session {_short(session_id)} {problem}: {remedy}")
        self.session_id = session_id
        self.key_id = key_id
        self.reason = reason

    def details(self) -> dict[str, Any]:
        return {"reason": self.reason, "key_id": self.key_id}
