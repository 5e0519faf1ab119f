"""The admin API under /v1, behind an API key: sessions of the configured namespaces.

Times are integer ms since the epoch (UTC); a session's version travels as its ETag, and a
PATCH with `If-Match: "<version>"` writes only over that version (412 otherwise). The key is
checked before anything else of a request (a request without one gets a 401, however malformed
its body); bodies are strict JSON (an integer is a JSON integer: not a bool, not a string).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response

from sessionary.contract import KEEP, Keep
from sessionary.counters import MAX_COUNT
from sessionary.devices import Device
from sessionary.errors import SessionNotFound
from sessionary.http.errors import JSONResponse, ResponseError, error_response
from sessionary.http.handlers import guarded
from sessionary.model import Session
from sessionary.store import Namespace
from sessionary.web.auth import ApiKeys


class DeviceOut(BaseModel):
    """What the session recorded of the device that created it (`sessionary.devices`)."""

    user_agent: str | None = Field(description="cut to the policy's length; null: not recorded")
    ip: str | None = Field(
        description="full, truncated (a /24 or /48 network) or a keyed hash; null: not recorded"
    )
    created_at: int
    last_seen_at: int


class SessionOut(BaseModel):
    id: str
    namespace: str
    subject: str | None
    created_at: int
    last_seen_at: int
    expires_at: int
    version: int
    data: dict[str, Any]
    metadata: dict[str, str]
    counters: dict[str, int]
    idle_ttl_ms: int | None = Field(description="the idle ttl it lives by (null: none)")
    absolute_ttl_ms: int | None = Field(
        description="the absolute ttl it lives by, from created_at (null: none)"
    )
    own_lifetime: bool = Field(
        description="true: a lifetime of its own (remember me); false: the namespace's policy"
    )
    device: DeviceOut | None = Field(
        description="its device, when a device policy recorded one at its creation"
    )


class SubjectSessionsOut(BaseModel):
    sessions: list[SessionOut] = Field(description="newest first")


_STRICT_BODY = ConfigDict(extra="forbid", strict=True)

#: the answer of a write giving a session a subject that already holds the namespace's
#: `max_sessions_per_subject` (with `on_max_sessions = "refuse"`): nothing was written
_TOO_MANY_SESSIONS: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "too_many_sessions: the subject already holds the namespace's "
        "max_sessions_per_subject live sessions (body: error, message, max_sessions); "
        "nothing was written"
    }
}


def _ttl_field() -> Any:
    return Field(None, ge=1, description="a lifetime of its own; left out: the namespace's")


class CreateIn(BaseModel):
    model_config = _STRICT_BODY

    subject: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    idle_ttl_ms: StrictInt | None = _ttl_field()
    absolute_ttl_ms: StrictInt | None = _ttl_field()


class PatchIn(BaseModel):
    """Fields left out are kept; `subject: null` clears the subject."""

    model_config = _STRICT_BODY

    data: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    subject: str | None = None


class RotateIn(BaseModel):
    """Fields left out are kept; with either ttl the session gets a lifetime of its own (a
    ttl left out is the namespace's), with both null it goes back to the namespace's."""

    model_config = _STRICT_BODY

    subject: str | None = None
    idle_ttl_ms: StrictInt | None = _ttl_field()
    absolute_ttl_ms: StrictInt | None = _ttl_field()


class ConsumeIn(BaseModel):
    model_config = _STRICT_BODY

    amount: StrictInt = Field(1, ge=-MAX_COUNT, le=MAX_COUNT)
    limit: StrictInt | None = Field(None, ge=0, le=MAX_COUNT)


class ConsumeOut(BaseModel):
    allowed: bool
    used: int
    limit: int | None
    remaining: int | None


_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')


def session_json(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "namespace": session.namespace,
        "subject": session.subject,
        "created_at": session.created_at,
        "last_seen_at": session.last_seen_at,
        "expires_at": session.expires_at,
        "version": session.version,
        "data": session.data,
        "metadata": session.metadata,
        "counters": dict(session.counters),
        "idle_ttl_ms": session.lifetime.idle_ms,
        "absolute_ttl_ms": session.lifetime.absolute_ms,
        "own_lifetime": session.own_lifetime,
        "device": _device_json(Device.of(session)),
    }


def _device_json(device: Device) -> dict[str, Any] | None:
    if not device.recorded:
        return None
    return {
        "user_agent": device.user_agent,
        "ip": device.ip,
        "created_at": device.created_at,
        "last_seen_at": device.last_seen_at,
    }


def _ttl(ms: int | None) -> timedelta | None:
    return None if ms is None else timedelta(milliseconds=ms)


def _session_response(session: Session, status: int = 200) -> JSONResponse:
    return JSONResponse(session_json(session), status, {"ETag": f'"{session.version}"'})


def admin_router(namespaces: Callable[[], Mapping[str, Namespace]], keys: ApiKeys) -> APIRouter:
    """The /v1 routes over the namespaces `namespaces()` returns (known once the store is
    open)."""

    def key_first(request: Request) -> None:
        keys.require(request, request.path_params.get("namespace"))

    router = APIRouter(prefix="/v1", tags=["admin"], route_class=guarded(key_first))

    def resolve(name: str) -> Namespace:
        found = namespaces().get(name)
        if found is None:
            raise ResponseError(
                error_response(
                    404,
                    "unknown_namespace",
                    f"no namespace {name!r} is configured",
                    namespaces=sorted(namespaces()),
                )
            )
        return found

    async def live(namespace: Namespace, session_id: str) -> Session:
        session = await namespace.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    base = "/namespaces/{namespace}"

    @router.post(
        f"{base}/sessions",
        status_code=201,
        response_model=SessionOut,
        responses=_TOO_MANY_SESSIONS,
    )
    async def create(namespace: str, body: CreateIn) -> Response:
        """Create a session."""
        space = resolve(namespace)
        session = await space.create(
            subject=body.subject,
            data=body.data,
            metadata=body.metadata,
            idle_ttl=_ttl(body.idle_ttl_ms),
            absolute_ttl=_ttl(body.absolute_ttl_ms),
        )
        return _session_response(session, 201)

    @router.get(f"{base}/sessions/{{session_id}}", response_model=SessionOut)
    async def read(namespace: str, session_id: str) -> Response:
        """Read a live session (a peek: it does not extend it)."""
        return _session_response(await live(resolve(namespace), session_id))

    @router.post(f"{base}/sessions/{{session_id}}/touch", response_model=SessionOut)
    async def touch(namespace: str, session_id: str) -> Response:
        """Record activity: slides the idle expiry, never past the absolute cap."""
        session = await resolve(namespace).touch(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return _session_response(session)

    @router.patch(
        f"{base}/sessions/{{session_id}}", response_model=SessionOut, responses=_TOO_MANY_SESSIONS
    )
    async def patch(request: Request, namespace: str, session_id: str, body: PatchIn) -> Response:
        """Replace data and/or metadata, set or clear the subject; with `If-Match`, only over
        that version (412 if it moved on)."""
        space = resolve(namespace)
        expected = _if_match(request)
        subject: str | Keep | None = body.subject if "subject" in body.model_fields_set else KEEP
        session = await space.update(
            session_id,
            data=body.data,
            metadata=body.metadata,
            subject=subject,
            expected_version=expected,
        )
        return _session_response(session)

    @router.delete(f"{base}/sessions/{{session_id}}", status_code=204)
    async def delete(namespace: str, session_id: str) -> Response:
        """Delete a session (404 if there was no live one)."""
        if not await resolve(namespace).delete(session_id):
            raise SessionNotFound(session_id)
        return Response(status_code=204)

    @router.post(
        f"{base}/sessions/{{session_id}}/rotate",
        response_model=SessionOut,
        responses=_TOO_MANY_SESSIONS,
    )
    async def rotate(namespace: str, session_id: str, body: RotateIn | None = None) -> Response:
        """Give the session a new id; the old one stops working at once."""
        space = resolve(namespace)
        subject: str | Keep | None = KEEP
        idle: timedelta | Keep | None = KEEP
        absolute: timedelta | Keep | None = KEEP
        if body is not None:
            given = body.model_fields_set
            if "subject" in given:
                subject = body.subject
            if "idle_ttl_ms" in given:
                idle = _ttl(body.idle_ttl_ms)
            if "absolute_ttl_ms" in given:
                absolute = _ttl(body.absolute_ttl_ms)
        return _session_response(
            await space.rotate(session_id, subject=subject, idle_ttl=idle, absolute_ttl=absolute)
        )

    @router.get(f"{base}/subjects/{{subject}}/sessions", response_model=SubjectSessionsOut)
    async def list_subject(namespace: str, subject: str) -> Response:
        """The live sessions of a subject, newest first, each with its `device` when one was
        recorded ("where am I logged in")."""
        sessions = await resolve(namespace).list_subject(subject)
        return JSONResponse({"sessions": [session_json(s) for s in sessions]})

    @router.delete(f"{base}/subjects/{{subject}}/sessions")
    async def revoke_subject(
        namespace: str, subject: str, keep: Annotated[list[str] | None, Query()] = None
    ) -> Response:
        """Delete every session of a subject (log out everywhere), but those named by `keep`
        (repeatable: `?keep=<id>&keep=<id>`; "log out my other devices"), in one atomic
        step. A malformed kept id is a 400 and nothing is deleted."""
        revoked = await resolve(namespace).revoke_subject(subject, keep=keep or ())
        return JSONResponse({"revoked": revoked})

    @router.post(
        f"{base}/sessions/{{session_id}}/counters/{{counter}}/consume",
        response_model=ConsumeOut,
        responses={429: {"description": "the charge would pass the limit; nothing was charged"}},
    )
    async def consume(namespace: str, session_id: str, counter: str, body: ConsumeIn) -> Response:
        """Charge a session counter atomically against a limit (a negative amount refunds)."""
        space = resolve(namespace)
        result = await space.consume(session_id, counter, amount=body.amount, limit=body.limit)
        payload = {
            "allowed": result.allowed,
            "used": result.used,
            "limit": result.limit,
            "remaining": result.remaining,
        }
        if not result.allowed:
            raise ResponseError(
                error_response(
                    429,
                    "quota_exceeded",
                    f"counter {counter!r} is at its limit",
                    scope="session",
                    counter=counter,
                    allowed=False,
                    used=result.used,
                    limit=result.limit,
                    remaining=result.remaining,
                )
            )
        return JSONResponse(payload)

    return router


def _if_match(request: Request) -> int | None:
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        return None
    match = _ETAG.match(header)
    if match is None or int(match.group(1)) < 1:
        raise ResponseError(
            error_response(400, "bad_if_match", 'If-Match is a version: If-Match: "3"')
        )
    return int(match.group(1))
