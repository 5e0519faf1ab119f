"""Tracked events as clients send them: validation, one event at a time, with a reason.

    event = TrackEvent.parse({"name": "screen_view", "device_id": "d-1", "path": "/"})

A bad event raises `BadEvent` with a reason a client can act on; `POST /api/v1/track` reports
the index and reason of each bad event of a batch and accepts the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from sessionary.codec import INT64_MAX, check_text, encode_value, integral
from sessionary.errors import ValidationError

RESERVED_NAMES = frozenset({"session_start", "session_end"})
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
Utm = tuple[str | None, str | None, str | None, str | None, str | None]  # as in UTM_FIELDS
MAX_PROPERTIES = 16 * 1024  # bytes, encoded
MAX_REVENUE = 10**12  # minor units, either sign
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # event ids; never "/" (the sink's own ids)
_NAME_RE = re.compile(r"[A-Za-z0-9_.:$ -]{1,128}")
_TEXT_LIMITS = {"path": 2048, "url": 4096, "referrer": 4096, "user_agent": 1024, "ip": 64}
_KNOWN = frozenset(
    {"project_id", "event_id", "name", "timestamp", "device_id", "profile_id", "revenue"}
    | {"properties", *_TEXT_LIMITS, *UTM_FIELDS}
)
#: the text fields in the order they are checked, and each one's limit in characters
_TEXT_ORDER = ("device_id", "profile_id", *_TEXT_LIMITS, *UTM_FIELDS)
_LIMITS = {key: _TEXT_LIMITS.get(key, 256) for key in _TEXT_ORDER}
_TEXT_KEYS = frozenset(_TEXT_ORDER)
_UTM_KEYS = frozenset(UTM_FIELDS)
_SCALARS = frozenset({str, int, bool, type(None)})
#: names found valid (and not reserved) already, so most events skip the regular expression;
#: a client sending ever new names fills it once, then they are checked as before
_NAMES_SEEN: set[str] = set()
_NAMES_REMEMBERED = 4096

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
        profile_id is that visitor's, whatever the event itself claims.

        The checks run in a fixed order, so an event wrong in several ways is refused for
        the first of them. It runs once per tracked event (the /track hot path): it reads
        only the fields the event has, and checks a short ASCII text without a call."""
        if not isinstance(raw, dict):
            raise BadEvent(f"an event is a JSON object, not {_kind(raw)}")
        if not _KNOWN.issuperset(raw):
            raise BadEvent(f"unknown field {sorted(raw.keys() - _KNOWN)[0]!r}")
        get = raw.get
        claimed = get("project_id")
        if claimed is not None and project_id is not None and claimed != project_id:
            raise BadEvent("project_id names another project than the key's")
        name = get("name")
        if type(name) is not str or name not in _NAMES_SEEN:  # a list is unhashable
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise BadEvent("name is 1-128 characters of letters, digits, space and _.:$-")
            if name in RESERVED_NAMES:
                raise BadEvent(f"{name!r} is emitted by sessionary itself; clients may not send it")
            if len(_NAMES_SEEN) < _NAMES_REMEMBERED:
                _NAMES_SEEN.add(name)
        event_id = get("event_id")
        if event_id is not None and (
            not isinstance(event_id, str) or not _ID_RE.fullmatch(event_id)
        ):
            raise BadEvent("event_id is 1-128 characters of letters, digits and _.:-")
        timestamp = get("timestamp")
        if timestamp is not None:
            if type(timestamp) is not int:
                timestamp = integral(timestamp)
            if type(timestamp) is not int or not 0 <= timestamp <= INT64_MAX:
                raise BadEvent(
                    f"timestamp is an integer number of ms since the epoch (UTC), 0 to {INT64_MAX}"
                )
        revenue = get("revenue", 0)
        if type(revenue) is not int:
            revenue = integral(revenue)
        if type(revenue) is not int or not -MAX_REVENUE <= revenue <= MAX_REVENUE:
            raise BadEvent("revenue is an integer in minor units (cents), at most 10^12")
        for key in _TEXT_KEYS.intersection(raw):
            value = raw[key]
            if value is not None and not (
                type(value) is str and 0 < len(value) <= _LIMITS[key] and value.isascii()
            ):  # wrong, or text to look at closer: every text in order, the first wrong says
                _check_texts(raw)
                break
        device_id, profile_id = get("device_id"), get("profile_id")
        ip, user_agent = get("ip"), get("user_agent")
        if client is not None and device_id is None and profile_id is None:
            ip, user_agent = client
        if device_id is None and profile_id is None and ip is None:
            raise BadEvent("an event needs a device_id, a profile_id, or the client's IP")
        properties = get("properties")
        encoded = b"{}"
        if properties is not None:
            if not isinstance(properties, dict):
                raise BadEvent("properties is a JSON object")
            encoded = _encode_properties(properties)
            if len(encoded) > MAX_PROPERTIES:
                raise BadEvent(f"properties take {len(encoded)} bytes encoded, over 16 KiB")
        path, url = get("path"), get("url")
        utm: Utm = (
            get("utm_source"), get("utm_medium"), get("utm_campaign"), get("utm_term"),
            get("utm_content"),
        )  # fmt: skip
        if url is not None:
            path, utm = _from_url(url, path, utm)
        return cls(
            name, event_id, timestamp, device_id, ip, user_agent, profile_id, path, url,
            get("referrer"), *utm, revenue, encoded,
        )  # fmt: skip


def _encode_properties(properties: dict[Any, Any]) -> bytes:
    """`encode_value`'s encoding of the properties; a flat object of strings, integers,
    booleans and nulls (most properties) in a third of its time: such an object nests no
    deeper than one level and round-trips exactly if orjson encodes it at all (it refuses a
    lone surrogate and an integer beyond 64 bits: `encode_value` then says which)."""
    if type(properties) is dict:  # a subclass is encode_value's to refuse
        for key, value in properties.items():
            if type(key) is not str or type(value) not in _SCALARS:
                break
        else:
            try:
                return orjson.dumps(properties)
            except orjson.JSONEncodeError:
                pass
    try:
        return encode_value(properties, "properties")
    except ValidationError as exc:
        raise BadEvent(str(exc)) from None


def _check_texts(raw: dict[str, Any]) -> None:
    """Check every text field of `raw` in order: the first wrong one raises."""
    for key in _TEXT_ORDER:
        value = raw.get(key)
        if value is None:
            continue
        limit = _LIMITS[key]
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise BadEvent(f"{key} is a string of 1-{limit} characters")
        try:
            check_text(key, value)
        except ValidationError as exc:
            raise BadEvent(str(exc)) from None


def _from_url(url: str, path: str | None, utm: Utm) -> tuple[str | None, Utm]:
    """The path and the utm_* parameters of the page's URL, where the event has none."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BadEvent("url is not a URL") from None
    found = _utm_of(parts.query) if parts.query and None in utm else None
    if found:
        source, medium, campaign, term, content = utm
        utm = (
            found.get("utm_source") if source is None else source,
            found.get("utm_medium") if medium is None else medium,
            found.get("utm_campaign") if campaign is None else campaign,
            found.get("utm_term") if term is None else term,
            found.get("utm_content") if content is None else content,
        )
    return (path if path is not None else parts.path or "/"), utm


def _utm_of(query: str) -> dict[str, str]:
    """The first value of each utm_* parameter of `query` (cut to 256 characters), read as
    `urllib.parse.parse_qs` reads it (a pair without a value is skipped; "+" is a space; the
    rest percent-decoded), but for these five keys only: a fifth of its time."""
    found: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if not value:
            continue
        if "%" in key:  # without, a "+" (a space) makes it no utm_* key anyway
            key = unquote(key.replace("+", " "))
        if key in _UTM_KEYS and key not in found:
            if "%" in value or "+" in value:
                value = unquote(value.replace("+", " "))
            found[key] = value[:256]
    return found


def _kind(value: object) -> str:
    return {list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
