"""Tracked events as clients send them: validation, one event at a time, with a reason.

    event = TrackEvent.parse({"name": "screen_view", "device_id": "d-1", "path": "/"})

A bad event raises `BadEvent` with a reason a client can act on; `POST /api/v1/track` reports
the index and reason of each bad event of a batch and accepts the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sessionary.codec import INT64_MAX, check_text, encode_value, integral
from sessionary.errors import ValidationError

RESERVED_NAMES = frozenset({"session_start", "session_end"})
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
MAX_PROPERTIES = 16 * 1024  # bytes, encoded
MAX_REVENUE = 10**12  # minor units, either sign
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # event ids; never "/" (the sink's own ids)
_NAME_RE = re.compile(r"[A-Za-z0-9_.:$ -]{1,128}")
_TEXT_LIMITS = {"path": 2048, "url": 4096, "referrer": 4096, "user_agent": 1024, "ip": 64}
_KNOWN = frozenset(
    {"project_id", "event_id", "name", "timestamp", "device_id", "profile_id", "revenue"}
    | {"properties", *_TEXT_LIMITS, *UTM_FIELDS}
)

#: An event as JSON Schema, for the OpenAPI document (`parse` is what decides); null is
#: the same as leaving a field out, but for name and revenue. An integer may come as a JSON
#: number with no fractional part (`3.0`), as JSON Schema's `integer` allows.
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": f"^{_NAME_RE.pattern}$"},
        "event_id": {"type": ["string", "null"], "pattern": f"^{_ID_RE.pattern}$"},
        "timestamp": {"type": ["integer", "null"], "minimum": 0, "maximum": INT64_MAX},
        "revenue": {"type": "integer", "minimum": -MAX_REVENUE, "maximum": MAX_REVENUE},
        "properties": {"type": ["object", "null"]},
        "project_id": {"type": ["string", "null"]},
        **{
            key: {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": _TEXT_LIMITS.get(key, 256),
            }
            for key in ("device_id", "profile_id", *_TEXT_LIMITS, *UTM_FIELDS)
        },
    },
}


class BadEvent(ValidationError):
    """One event is malformed: `reason` says how."""

    code = "invalid_event"


@dataclass(slots=True)
class TrackEvent:
    """A tracked event. Identity: `device_id`, or (for anonymous web traffic) `ip` and
    `user_agent`, hashed into a device id with a daily salt; or only `profile_id` for a
    server-side event. `timestamp` is ms since the epoch, UTC (None: when received)."""

    name: str
    event_id: str | None = None
    timestamp: int | None = None
    device_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    profile_id: str | None = None
    path: str | None = None
    url: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    revenue: int = 0
    properties: bytes = b"{}"

    @classmethod
    def parse(
        cls,
        raw: object,
        *,
        project_id: str | None = None,
        client: tuple[str, str] | None = None,
    ) -> TrackEvent:
        """Validate one event as decoded from JSON. `project_id`, when given, is the project
        the caller's key belongs to: an event naming another is refused. `client` is the
        (IP, User-Agent) of the request that brought it: an event with neither device_id nor
        profile_id is that visitor's, whatever the event itself claims."""
        if not isinstance(raw, dict):
            raise BadEvent(f"an event is a JSON object, not {_kind(raw)}")
        unknown = raw.keys() - _KNOWN
        if unknown:
            raise BadEvent(f"unknown field {sorted(unknown)[0]!r}")
        claimed = raw.get("project_id")
        if claimed is not None and project_id is not None and claimed != project_id:
            raise BadEvent("project_id names another project than the key's")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise BadEvent("name is 1-128 characters of letters, digits, space and _.:$-")
        if name in RESERVED_NAMES:
            raise BadEvent(f"{name!r} is emitted by sessionary itself; clients may not send it")
        event_id = raw.get("event_id")
        if event_id is not None and (
            not isinstance(event_id, str) or not _ID_RE.fullmatch(event_id)
        ):
            raise BadEvent("event_id is 1-128 characters of letters, digits and _.:-")
        timestamp = integral(raw.get("timestamp"))
        if timestamp is not None and (
            type(timestamp) is not int or not 0 <= timestamp <= INT64_MAX
        ):
            raise BadEvent(
                f"timestamp is an integer number of ms since the epoch (UTC), 0 to {INT64_MAX}"
            )
        revenue = integral(raw.get("revenue", 0))
        if type(revenue) is not int or abs(revenue) > MAX_REVENUE:
            raise BadEvent("revenue is an integer in minor units (cents), at most 10^12")
        text = {key: _text(raw, key) for key in ("device_id", "profile_id", *_TEXT_LIMITS)}
        utm = {key: _text(raw, key) for key in UTM_FIELDS}
        if client is not None and text["device_id"] is None and text["profile_id"] is None:
            text["ip"], text["user_agent"] = client
        if text["device_id"] is None and text["profile_id"] is None and text["ip"] is None:
            raise BadEvent("an event needs a device_id, a profile_id, or the client's IP")
        properties = raw.get("properties")
        encoded = b"{}"
        if properties is not None:
            if not isinstance(properties, dict):
                raise BadEvent("properties is a JSON object")
            try:
                encoded = encode_value(properties, "properties")
            except ValidationError as exc:
                raise BadEvent(str(exc)) from None
            if len(encoded) > MAX_PROPERTIES:
                raise BadEvent(f"properties take {len(encoded)} bytes encoded, over 16 KiB")
        path = text["path"]
        if text["url"] is not None:
            path, utm = _from_url(text["url"], path, utm)
        return cls(
            name, event_id, timestamp, text["device_id"], text["ip"], text["user_agent"],
            text["profile_id"], path, text["url"], text["referrer"], utm["utm_source"],
            utm["utm_medium"], utm["utm_campaign"], utm["utm_term"], utm["utm_content"],
            revenue, encoded,
        )  # fmt: skip


def _text(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    limit = _TEXT_LIMITS.get(key, 256)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise BadEvent(f"{key} is a string of 1-{limit} characters")
    try:
        return check_text(key, value)
    except ValidationError as exc:
        raise BadEvent(str(exc)) from None


def _from_url(
    url: str, path: str | None, utm: dict[str, str | None]
) -> tuple[str | None, dict[str, str | None]]:
    """The path and the utm_* parameters of the page's URL, where the event has none."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BadEvent("url is not a URL") from None
    query = parse_qs(parts.query)
    filled = {
        key: value if value is not None else _first(query.get(key)) for key, value in utm.items()
    }
    return (path if path is not None else parts.path or "/"), filled


def _first(values: list[str] | None) -> str | None:
    return values[0][:256] if values and values[0] else None


def _kind(value: object) -> str:
    return {list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
