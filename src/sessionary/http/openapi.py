"""What the routers' OpenAPI declarations share, so that a client generated from the document
(or a fuzzer driven by it) knows every answer it can get:

* `ErrorBody`, the one body of every error (`{"error": "<code>", "message": ..., ...}`, see
  `sessionary.http.errors`), with the extra fields each code carries;
* `errors(...)`, the error responses of an operation by status, each with that body and the
  headers it carries (Retry-After, WWW-Authenticate, RateLimit-*);
* the security schemes: Bearer keys (`ADMIN_KEY`, `PROJECT_KEY`, `USER_KEY`, each a FastAPI
  security dependency that never refuses by itself: the routes' guards do) and the session
  cookie (`session_cookie`);
* the formats the code checks, as `pattern`s: session ids (`id_pattern`), log cursors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi.routing import APIRoute
from fastapi.security import APIKeyCookie, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic.json_schema import SkipJsonSchema

from sessionary.codec import integral
from sessionary.ids import TOKEN_PATTERN
from sessionary.logs import CURSOR_PATTERN

#: a cursor of an event log ("42-1a2b3c4d"), as `sessionary.logs.Cursor` issues it
LOG_CURSOR = f"^{CURSOR_PATTERN}$"


#: an integer of a JSON body: a JSON number with no fractional part; never a bool or a string
Integral = Annotated[int, Strict(), BeforeValidator(integral)]


def operation_id(route: APIRoute) -> str:
    """An operation's id: its tag and its handler's name (`admin_create`, `runs_start`): what a
    generated client names its functions after (FastAPI's own repeats the path and method)."""
    return f"{route.tags[0]}_{route.name}" if route.tags else route.name


def id_pattern(*prefixes: str) -> str:
    """The pattern of a session id of a namespace with one of `prefixes` (none: no prefix)."""
    named = "|".join(sorted({p for p in prefixes if p}))
    if not named:
        return f"^{TOKEN_PATTERN}$"
    optional = "?" if "" in prefixes else ""
    return f"^(?:{named}){optional}{TOKEN_PATTERN}$"


class Problem(BaseModel):
    """One thing wrong with a request (a 400 `malformed_request`, a 422 `validation_error`)."""

    location: list[str] = Field(description='where: ["body", "data", ...], ["query", "limit"]')
    message: str
    type: str


class RefusedEvent(BaseModel):
    """A tracked event refused from a batch (`invalid_events`)."""

    index: int
    reason: str


def _extra(description: str) -> Any:
    """An optional field of the error body: absent unless its code carries it."""
    return Field(None, description=description)


class ErrorBody(BaseModel):
    """Every error: a stable `error` code to branch on, a `message` for people (its wording
    may change), and the fields its code carries (absent otherwise)."""

    model_config = ConfigDict(extra="allow", title="Error")

    error: str = Field(
        description="the stable code: unauthorized, forbidden, csrf_rejected, not_found, "
        "session_not_found, unknown_namespace, conversation_not_found, run_not_found, "
        "project_not_found, invalid_session_id, invalid_cursor, bad_if_match, "
        "malformed_request, invalid_json, batch_too_large, invalid_events, "
        "validation_error, payload_too_deep, payload_too_large, version_conflict, "
        "too_many_sessions, too_many_buckets, session_unreadable, session_exists, run_active, "
        "run_finished, run_busy, already_indexed, conflict, quota_exceeded, store_unavailable, "
        "overloaded, no_sink, method_not_allowed, internal_error (the runs API's 404 of "
        "active-session and task-status says its message here, and its code in `code`)"
    )
    message: str = Field(description="for people; its wording may change")
    code: str | SkipJsonSchema[None] = _extra(
        "no_active_session, no_background_task: the runs API's own 404 codes"
    )
    retry_after: int | SkipJsonSchema[None] = _extra(
        "store_unavailable, overloaded: seconds to wait, as Retry-After says"
    )
    details: list[Problem] | SkipJsonSchema[None] = _extra(
        "malformed_request, validation_error: each problem"
    )
    expected_version: int | SkipJsonSchema[None] = _extra("version_conflict")
    current_version: int | SkipJsonSchema[None] = _extra("version_conflict")
    max_sessions: int | SkipJsonSchema[None] = _extra("too_many_sessions")
    size: int | SkipJsonSchema[None] = _extra("payload_too_large: the payload's size")
    limit: int | None = _extra(
        "payload_too_large: the cap in bytes; quota_exceeded: the quota (null: none)"
    )
    max_depth: int | SkipJsonSchema[None] = _extra("payload_too_deep")
    reason: str | SkipJsonSchema[None] = _extra("session_unreadable: unknown_key or tampered")
    key_id: str | SkipJsonSchema[None] = _extra("session_unreadable")
    namespaces: list[str] | SkipJsonSchema[None] = _extra("unknown_namespace: the configured ones")
    scope: str | SkipJsonSchema[None] = _extra(
        "quota_exceeded: the quota that refused (session, ip, new, global)"
    )
    counter: str | SkipJsonSchema[None] = _extra("quota_exceeded: the session counter")
    allowed: bool | SkipJsonSchema[None] = _extra("quota_exceeded: false")
    used: int | SkipJsonSchema[None] = _extra("quota_exceeded")
    remaining: int | None = _extra("quota_exceeded")
    resets_at: str | SkipJsonSchema[None] = _extra(
        "quota_exceeded: when the quota resets (ISO 8601, UTC)"
    )
    indexed_repo: dict[str, Any] | SkipJsonSchema[None] = _extra(
        "already_indexed: the repository holding the slot"
    )
    errors: list[RefusedEvent] | SkipJsonSchema[None] = _extra("invalid_events: each refused event")
    accepted: int | SkipJsonSchema[None] = _extra("invalid_events: events accepted")
    duplicates: int | SkipJsonSchema[None] = _extra("invalid_events")
    late: int | SkipJsonSchema[None] = _extra("invalid_events")
    activeRunId: str | SkipJsonSchema[None] = _extra("run_active: the active run")
    runId: str | SkipJsonSchema[None] = _extra("run_finished")
    status: str | SkipJsonSchema[None] = _extra("run_finished: the run's status")
    conversationId: str | SkipJsonSchema[None] = _extra("no_active_session, no_background_task")


_DESCRIPTIONS = {
    400: "malformed: an id or cursor (invalid_session_id, invalid_cursor), a header "
    "(bad_if_match) or a body that is not JSON (malformed_request)",
    401: "no credentials, or wrong ones (unauthorized)",
    403: "credentials that may not do this (forbidden)",
    404: "nothing there (session_not_found, unknown_namespace, ...)",
    409: "the state does not allow it",
    412: "If-Match names another version (version_conflict): nothing was written",
    413: "the body is over the server's max_body, or a payload over its cap (payload_too_large)",
    422: "the body or a parameter does not fit (validation_error, payload_too_deep)",
    429: "a quota is used up (quota_exceeded): nothing was charged",
    500: "a bug on the server's side (internal_error)",
    503: "the store does not answer (store_unavailable) or the server is overloaded: "
    "retry after Retry-After seconds",
}

_RETRY_AFTER = {
    "description": "seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 0},
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Bearer",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": _RETRY_AFTER,
        "RateLimit-Limit": {"schema": {"type": "integer"}},
        "RateLimit-Remaining": {"schema": {"type": "integer"}},
        "RateLimit-Reset": {"schema": {"type": "integer"}},
    },
    503: {"Retry-After": _RETRY_AFTER},
}

#: what every operation that reads the store may answer
STORE = (500, 503)


def errors(*statuses: int, described: Mapping[int, str] | None = None) -> dict[int | str, Any]:
    """The error responses of an operation, for FastAPI's `responses=`: each status with the
    error body, its usual description (or the one `described` gives) and its headers."""
    described = described or {}
    return {
        status: {
            "model": ErrorBody,
            "description": described.get(status, _DESCRIPTIONS[status]),
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in sorted(set(statuses) | set(described))
    }


#: the security schemes; `auto_error=False`: they only declare, the routes' guards refuse
ADMIN_KEY = HTTPBearer(
    scheme_name="adminKey",
    description="an admin API key (`api_keys`): the /v1 admin API and the analytics queries",
    auto_error=False,
)
PROJECT_KEY = HTTPBearer(
    scheme_name="projectKey",
    description="an analytics project's key (`[analytics.projects.<id>] key`): /track",
    auto_error=False,
)
USER_KEY = HTTPBearer(
    scheme_name="userKey",
    description="a runs user's key (`[runs] users`): it stands for the user's subject",
    auto_error=False,
)


def session_cookie(name: str) -> APIKeyCookie:
    """The application's session cookie, where the runs API accepts it (`[runs]
    session_namespace`): its session's subject is the caller."""
    return APIKeyCookie(
        name=name,
        scheme_name="sessionCookie",
        description=f"the application's session cookie ({name!r}, or '__Host-{name}' over "
        "https): its session's subject is the caller; a POST must come from an allowed origin",
        auto_error=False,
    )
