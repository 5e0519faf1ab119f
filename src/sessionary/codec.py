"""JSON in and out of a session, strictly, and the bounds of what a backend stores.

Session data must come back exactly as it went in: ints stay ints, nested shapes are kept,
unicode is kept. So only the JSON types are accepted (dict with str keys, list, str, int in
64 bits, finite float, bool, None), and anything else is refused with `ValidationError` at
write time, never discovered at read time. orjson does the work; a decode-and-compare after
encoding catches the values orjson would quietly change (NaN becomes null, a tuple becomes a
list, a UUID or an Enum becomes a string).

What is stored must also be readable and answerable again, whatever wraps it on the way out
(an HTTP response puts session data inside an object of its own, an SSE event inside a
line). So a value nests objects and arrays at most `MAX_DEPTH` levels (`PayloadTooDeep`
beyond), far below what orjson encodes (254) and decodes (1024): every reader and every
response has the room it needs. Strings are valid Unicode (a lone surrogate such as
"\\udfff", which the stdlib's JSON decoder lets through, is refused: `check_text`), and the
integers a backend stores are 64-bit (`INT64_MIN`..`INT64_MAX`: `check_int`), or within
`MAX_SAFE_INT` where a backend computes with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sessionary.errors import PayloadTooDeep, ValidationError

_STRICT = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
EMPTY_OBJECT = b"{}"

#: The deepest a stored JSON value nests objects and arrays (session data itself is level 1).
MAX_DEPTH = 64
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: The largest integer every backend computes with exactly (Redis scripts compute in Lua
#: doubles): what counters and producers' seqs stay within.
MAX_SAFE_INT = 2**53 - 1


def integral(value: object) -> object:
    """A float with no fractional part (`3.0`) as the int it is, anything else as it is: an
    OpenAPI document's `integer` (JSON Schema's) is such a number, so a client may send one;
    a bool, a string or `1.5` is left for the caller's check to refuse."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _orjson_depth() -> int:
    """How deep orjson encodes before it refuses (254 in orjson 3)."""
    value: list[Any] = []
    for depth in range(1, 10_000):
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return depth - 1
        value = [value]
    raise RuntimeError("orjson encodes without a depth limit")


# A value wrapped in this many arrays reaches orjson's own limit exactly when it nests deeper
# than MAX_DEPTH: so orjson checks the depth, at its own speed.
_PAD = _orjson_depth() - MAX_DEPTH
assert _PAD > 8, "MAX_DEPTH leaves responses no room to wrap what is stored"


def _refuse(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def encode_data(data: object) -> bytes:
    """Encode session data (a JSON object), refusing anything that would not round-trip."""
    if type(data) is not dict:
        raise ValidationError(f"session data is a dict (a JSON object), not {type(data).__name__}")
    return encode_value(data, "session data") if data else EMPTY_OBJECT


def encode_value(value: object, what: str = "the value") -> bytes:
    """Encode any JSON value (an event's data, say), refusing what would not round-trip and
    what nests deeper than `MAX_DEPTH` (`PayloadTooDeep`)."""
    try:
        raw = orjson.dumps(value, default=_refuse, option=_STRICT)
    except (orjson.JSONEncodeError, TypeError) as exc:
        if _deeper_than(value, MAX_DEPTH):
            raise PayloadTooDeep(what, MAX_DEPTH) from None
        raise ValidationError(f"{what} is not JSON: {exc}") from None
    # Fewer containers than MAX_DEPTH cannot nest deeper than it: only count otherwise.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        wrapped: Any = value
        for _ in range(_PAD):
            wrapped = [wrapped]
        try:
            orjson.dumps(wrapped, option=_STRICT)
        except orjson.JSONEncodeError:
            raise PayloadTooDeep(what, MAX_DEPTH) from None
    if orjson.loads(raw) != value:
        raise ValidationError(
            f"{what} does not round-trip as JSON: NaN, Infinity, tuples, sets, enums "
            "and UUIDs are not JSON values; convert them first"
        )
    return raw


def _deeper_than(value: object, limit: int) -> bool:
    """Whether `value` nests lists, tuples and dicts deeper than `limit` (for the refusal's
    reason; it stops looking below `limit`)."""
    level: list[object] = [value]
    for _ in range(limit + 1):
        below: list[object] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
            elif isinstance(item, list | tuple):
                below.extend(item)
        if not below:
            return False
        level = [item for item in below if isinstance(item, dict | list | tuple)]
    return bool(level)


def encode_metadata(metadata: object) -> bytes:
    """Encode metadata: a flat object of non-empty str keys to str values."""
    if not isinstance(metadata, Mapping):
        raise ValidationError(f"metadata is a dict of str to str, not {type(metadata).__name__}")
    if not metadata:
        return EMPTY_OBJECT
    for key, value in metadata.items():
        if type(key) is not str or not key:
            raise ValidationError(f"metadata keys are non-empty str, not {key!r}")
        if type(value) is not str:
            raise ValidationError(f"metadata values are str; {key!r} is {type(value).__name__}")
    try:
        return orjson.dumps(dict(metadata))
    except orjson.JSONEncodeError as exc:  # a lone surrogate in a key or a value
        raise ValidationError(f"metadata is not valid Unicode: {exc}") from None


def check_text(what: str, text: str) -> str:
    """`text`, if it is valid Unicode (no lone surrogate), else `ValidationError`."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValidationError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return text


def check_int(what: str, value: object, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """`value`, if it is an int (not a bool) in [low, high], else `ValidationError` naming
    `what`. The bounds default to what every backend stores: a signed 64-bit integer."""
    if type(value) is not int:
        raise ValidationError(f"{what} is an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValidationError(f"{what} is an integer from {low} to {high}")
    return value


def decode_value(raw: bytes | str) -> Any:
    """Decode what `encode_value` produced."""
    return orjson.loads(raw)


def decode(raw: bytes | str) -> dict[str, Any]:
    """Decode what `encode_data` or `encode_metadata` produced."""
    value = orjson.loads(raw)
    if type(value) is not dict:
        raise ValueError("stored session payload is not a JSON object")
    return value
