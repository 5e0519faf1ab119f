"""The admin API under /v1, behind an API key: sessions of the configured namespaces.

Times are integer ms since the epoch (UTC); a session's version travels as its ETag, and a
PATCH with `If-Match: "<version>"` writes only over that version (412 otherwise). The key is
checked before anything else of a request (a request without one gets a 401, however malformed
its body); bodies are strict JSON (an integer is a JSON integer: not a bool, not a string).

`GET /v1/counters/{group}` lists a counter group's running counters, a page at a time. A
group is authorized like a namespace of its name (a key scoped to "playground" lists the
playground's group; "*" lists any): counter groups and namespaces share one name space in
the settings (the playground's group is named like its namespace).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Security
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from starlette.responses import Response

from sessionary.clock import to_ms
from sessionary.codec import MAX_SAFE_INT
from sessionary.contract import KEEP, CounterAlgorithm, Keep
from sessionary.counters import CURSOR_PATTERN, GROUP_RE, MAX_COUNT, CounterPage, Counters
from sessionary.devices import Device
from sessionary.errors import SessionNotFound
from sessionary.http.errors import JSONResponse, ResponseError, error_response
from sessionary.http.handlers import guarded
from sessionary.http.openapi import ADMIN_KEY, STORE, Integral, errors, id_pattern
from sessionary.model import Session
from sessionary.store import _COUNTER_RE, MAX_SUBJECT_LENGTH, Namespace, Store
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


class NamespaceOut(BaseModel):
    name: str
    sessions: int = Field(description="how many live sessions it holds now")
    idle_ttl_ms: int | None = Field(description="its idle ttl (null: none)")
    absolute_ttl_ms: int | None = Field(description="its absolute ttl (null: none)")
    max_sessions_per_subject: int | None = Field(description="null: no limit")


class NamespacesOut(BaseModel):
    namespaces: list[NamespaceOut] = Field(description="those the key may act on, by name")


class RevokedOut(BaseModel):
    revoked: int = Field(description="how many sessions were deleted")


class CounterOut(BaseModel):
    """A running counter, read as a charge of 0 under the rate of the charge that last wrote
    it would read it (`sessionary.counters.Counters.list`)."""

    key: str
    used: int | None = Field(
        description="what it uses now; null: its rate is unknown (a sliding or gcra counter "
        "written by an older sessionary, until its next charge)"
    )
    limit: int | None = Field(description="the last charge's limit (null: none, or unknown)")
    resets_at: int = Field(
        description="ms since the epoch: when it is back to 0 if nothing more is charged"
    )
    window_ms: int | None = Field(description="the last charge's window (null: unknown)")
    algorithm: CounterAlgorithm


class CountersOut(BaseModel):
    counters: list[CounterOut] = Field(
        description="about `limit` of the group's running counters (a page may hold fewer, "
        "even none, before the last); each running counter is listed at least once"
    )
    next: str | None = Field(description="the next page's cursor, for `after`; null: the end")


_STRICT_BODY = ConfigDict(extra="forbid", strict=True)

#: a subject as the store takes it (`sessionary.store`): 1 to 256 characters, no control one
SUBJECT_SCHEMA: JsonDict = {
    "pattern": "^[^\\x00-\\x1f\\x7f]+$",
    "minLength": 1,
    "maxLength": MAX_SUBJECT_LENGTH,
}
#: the conflict of a read: a session sealed under a key this server was not given
_UNREADABLE = (
    "session_unreadable: the session is sealed under a key this server was not given, or "
    "tampered with (reason, key_id)"
)
#: the conflicts of a write: also a subject that already holds the namespace's
#: `max_sessions_per_subject` (with `on_max_sessions = "refuse"`: nothing was written)
_CONFLICTS = {
    409: "too_many_sessions: the subject already holds the namespace's "
    f"max_sessions_per_subject live sessions (max_sessions); nothing was written. {_UNREADABLE}"
}
#: metadata as the store takes it: keys are not empty
METADATA_SCHEMA: JsonDict = {"propertyNames": {"minLength": 1}}
Subject = Annotated[str, Path(json_schema_extra=SUBJECT_SCHEMA)]
Counter = Annotated[str, Path(json_schema_extra={"pattern": f"^{_COUNTER_RE.pattern}$"})]
#: a session's version, as its ETag
_ETAG_HEADER = {
    "ETag": {
        "description": 'the session\'s version, quoted: "3" (send it back in If-Match)',
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    }
}


#: a ttl in ms, up to what a JSON number holds exactly (and a timedelta: a larger one was a
#: 500); the bounds stated for the document too: behind Integral's validator, pydantic writes
#: them as "ge" and "le", which JSON Schema does not know
TtlMs = Annotated[
    Integral,
    Field(ge=1, le=MAX_SAFE_INT, json_schema_extra={"minimum": 1, "maximum": MAX_SAFE_INT}),
]


def _ttl_field() -> Any:
    return Field(None, description="a lifetime of its own; left out: the namespace's")


def _subject_field() -> Any:
    return Field(None, json_schema_extra=SUBJECT_SCHEMA)


class CreateIn(BaseModel):
    model_config = _STRICT_BODY

    subject: str | None = _subject_field()
    data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict, json_schema_extra=METADATA_SCHEMA)
    idle_ttl_ms: TtlMs | None = _ttl_field()
    absolute_ttl_ms: TtlMs | None = _ttl_field()


class PatchIn(BaseModel):
    """Fields left out are kept; `subject: null` clears the subject."""

    model_config = _STRICT_BODY

    data: dict[str, Any] | None = None
    metadata: dict[str, str] | None = Field(None, json_schema_extra=METADATA_SCHEMA)
    subject: str | None = _subject_field()


class RotateIn(BaseModel):
    """Fields left out are kept; with either ttl the session gets a lifetime of its own (a
    ttl left out is the namespace's), with both null it goes back to the namespace's."""

    model_config = _STRICT_BODY

    subject: str | None = _subject_field()
    idle_ttl_ms: TtlMs | None = _ttl_field()
    absolute_ttl_ms: TtlMs | None = _ttl_field()


class ConsumeIn(BaseModel):
    model_config = _STRICT_BODY

    amount: Integral = Field(1, ge=-MAX_COUNT, le=MAX_COUNT)
    limit: (
        Annotated[
            Integral,
            Field(ge=0, le=MAX_COUNT, json_schema_extra={"minimum": 0, "maximum": MAX_COUNT}),
        ]
        | None
    ) = None


class ConsumeOut(BaseModel):
    allowed: bool
    used: int
    limit: int | None
    remaining: int | None


_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')
#: what If-Match takes: a version (an ETag this API sent, weak or not, quoted or not) or "*"
IF_MATCH_PATTERN = r'^(?:\*|(?:W/)?"?[1-9][0-9]{0,17}"?)$'


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


async def namespaces_json(namespaces: Mapping[str, Namespace]) -> list[dict[str, Any]]:
    """`namespaces` by name, each with its policy and live count (counted concurrently)."""
    named = sorted(namespaces.items())
    counts = await asyncio.gather(*(space.count() for _, space in named))
    return [
        {
            "name": name,
            "sessions": count,
            "idle_ttl_ms": _ms(space.idle_ttl),
            "absolute_ttl_ms": _ms(space.absolute_ttl),
            "max_sessions_per_subject": (
                None if space.session_limit is None else space.session_limit.max_sessions
            ),
        }
        for (name, space), count in zip(named, counts, strict=True)
    ]


def counters_json(page: CounterPage) -> dict[str, Any]:
    """A page of a counter group's listing, as `GET /v1/counters/{group}` answers it (and
    the console shows it)."""
    return {
        "counters": [
            {
                "key": usage.key,
                "used": usage.used,
                "limit": usage.limit,
                "resets_at": usage.resets_at,
                "window_ms": usage.window_ms,
                "algorithm": usage.algorithm,
            }
            for usage in page.counters
        ],
        "next": page.next,
    }


def _ms(ttl: timedelta | None) -> int | None:
    return None if ttl is None else to_ms(ttl)


def _ttl(ms: int | None) -> timedelta | None:
    return None if ms is None else timedelta(milliseconds=ms)


def _session_response(session: Session, status: int = 200) -> JSONResponse:
    return JSONResponse(session_json(session), status, {"ETag": f'"{session.version}"'})


def admin_router(
    namespaces: Callable[[], Mapping[str, Namespace]],
    keys: ApiKeys,
    id_prefixes: Iterable[str] = ("",),
    *,
    store: Callable[[], Awaitable[Store]],
) -> APIRouter:
    """The /v1 routes over the namespaces `namespaces()` returns (known once the store is
    open) and the counter groups of `store()`. `id_prefixes`: the id prefixes of those
    namespaces, for the document's pattern of a session id."""

    def key_first(request: Request) -> None:
        keys.require(request, request.path_params.get("namespace"))

    router = APIRouter(
        prefix="/v1",
        tags=["admin"],
        route_class=guarded(key_first),
        dependencies=[Security(ADMIN_KEY)],
        responses=errors(400, 401, 403, 404, 422, *STORE),
    )
    session_id_schema = {"pattern": id_pattern(*id_prefixes)}
    # (defaults, not Annotated aliases: these are made here, from `id_prefixes`)
    session_id_path = Path(
        description="a session id: the namespace's id_prefix, then 43 characters",
        json_schema_extra=session_id_schema,
    )
    kept_query = Query(
        None,
        description="a session to keep (repeatable)",
        json_schema_extra={"items": {"type": "string", **session_id_schema}},
    )
    body_errors = errors(413, 422)  # what a body, or a payload in it, may be refused with

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

    @router.get("/namespaces", response_model=NamespacesOut)
    async def list_namespaces(request: Request) -> Response:
        """The namespaces this key may act on, with their policies and live counts."""
        key = keys.require(request, None)
        allowed = {n: space for n, space in namespaces().items() if key.allows(n)}
        return JSONResponse({"namespaces": await namespaces_json(allowed)})

    @router.post(
        f"{base}/sessions",
        status_code=201,
        response_model=SessionOut,
        responses={201: {"headers": _ETAG_HEADER}, **body_errors, **errors(described=_CONFLICTS)},
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

    read_responses = {200: {"headers": _ETAG_HEADER}, **errors(described={409: _UNREADABLE})}

    @router.get(
        f"{base}/sessions/{{session_id}}", response_model=SessionOut, responses=read_responses
    )
    async def read(namespace: str, session_id: str = session_id_path) -> Response:
        """Read a live session (a peek: it does not extend it)."""
        return _session_response(await live(resolve(namespace), session_id))

    @router.post(
        f"{base}/sessions/{{session_id}}/touch", response_model=SessionOut, responses=read_responses
    )
    async def touch(namespace: str, session_id: str = session_id_path) -> Response:
        """Record activity: slides the idle expiry, never past the absolute cap."""
        session = await resolve(namespace).touch(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return _session_response(session)

    @router.patch(
        f"{base}/sessions/{{session_id}}",
        response_model=SessionOut,
        responses={
            **read_responses,
            **body_errors,
            **errors(412, described=_CONFLICTS),
        },
    )
    async def patch(
        namespace: str,
        *,
        session_id: str = session_id_path,
        body: PatchIn,
        if_match: Annotated[
            str | SkipJsonSchema[None],
            Header(
                alias="If-Match",
                description='write only over this version: an ETag of the session ("3"), or *',
                json_schema_extra={"pattern": IF_MATCH_PATTERN},
            ),
        ] = None,
    ) -> Response:
        """Replace data and/or metadata, set or clear the subject; with `If-Match`, only over
        that version (412 if it moved on)."""
        space = resolve(namespace)
        expected = _if_match(if_match)
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
    async def delete(namespace: str, session_id: str = session_id_path) -> Response:
        """Delete a session (404 if there was no live one)."""
        if not await resolve(namespace).delete(session_id):
            raise SessionNotFound(session_id)
        return Response(status_code=204)

    @router.post(
        f"{base}/sessions/{{session_id}}/rotate",
        response_model=SessionOut,
        responses={**read_responses, **body_errors, **errors(described=_CONFLICTS)},
    )
    async def rotate(
        namespace: str, session_id: str = session_id_path, body: RotateIn | None = None
    ) -> Response:
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

    @router.get(
        f"{base}/subjects/{{subject}}/sessions",
        response_model=SubjectSessionsOut,
        responses=errors(described={409: _UNREADABLE}),
    )
    async def list_subject(namespace: str, subject: Subject) -> Response:
        """The live sessions of a subject, newest first, each with its `device` when one was
        recorded ("where am I logged in")."""
        sessions = await resolve(namespace).list_subject(subject)
        return JSONResponse({"sessions": [session_json(s) for s in sessions]})

    @router.delete(f"{base}/subjects/{{subject}}/sessions", response_model=RevokedOut)
    async def revoke_subject(
        namespace: str, subject: Subject, keep: list[str] | None = kept_query
    ) -> Response:
        """Delete every session of a subject (log out everywhere), but those named by `keep`
        (repeatable: `?keep=<id>&keep=<id>`; "log out my other devices"), in one atomic
        step. A malformed kept id is a 400 and nothing is deleted."""
        revoked = await resolve(namespace).revoke_subject(subject, keep=keep or ())
        return JSONResponse({"revoked": revoked})

    @router.post(
        f"{base}/sessions/{{session_id}}/counters/{{counter}}/consume",
        response_model=ConsumeOut,
        responses={
            **body_errors,
            **errors(described={429: "the charge would pass the limit; nothing was charged"}),
        },
    )
    async def consume(
        namespace: str, *, session_id: str = session_id_path, counter: Counter, body: ConsumeIn
    ) -> Response:
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

    @router.get("/counters/{group}", response_model=CountersOut)
    async def list_counters(
        request: Request,
        group: Annotated[str, Path(pattern=f"^{GROUP_RE.pattern}$")],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[
            str | None,
            Query(
                max_length=512,
                description="the page's cursor (`next` of the page before)",
                json_schema_extra={"pattern": f"^{CURSOR_PATTERN}$"},
            ),
        ] = None,
    ) -> Response:
        """A counter group's running counters, a page at a time (`next` pages on; a cursor
        not from `next` is a 400): each with what it uses now and when that ends. A group
        nothing was charged to lists nothing. The key must be allowed on the group's name."""
        keys.require(request, group)
        # not `Store.counters`, which keeps each group it is asked for: any name may come
        page = await Counters(await store(), group).list(limit, after)
        return JSONResponse(counters_json(page))

    return router


def _if_match(header: str | None) -> int | None:
    if header is None or header.strip() == "*":
        return None
    match = _ETAG.match(header)
    if match is None or int(match.group(1)) < 1:
        raise ResponseError(
            error_response(400, "bad_if_match", 'If-Match is a version: If-Match: "3"')
        )
    return int(match.group(1))
