"""JSON in and out of a session, strictly.

Session data must come back exactly as it went in: ints stay ints, nested shapes are kept,
unicode is kept. So only the JSON types are accepted (dict with str keys, list, str, int in
64 bits, finite float, bool, None), and anything else is refused with `ValidationError` at
write time, never discovered at read time. orjson does the work; a decode-and-compare after
encoding catches the values orjson would quietly change (NaN becomes null, a tuple becomes a
list, a UUID or an Enum becomes a string).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sessionary.errors import ValidationError

_STRICT = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
EMPTY_OBJECT = b"{}"


def _refuse(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def encode_data(data: object) -> bytes:
    """Encode session data (a JSON object), refusing anything that would not round-trip."""
    if type(data) is not dict:
        raise ValidationError(f"session data is a dict (a JSON object), not {type(data).__name__}")
    return encode_value(data, "session data") if data else EMPTY_OBJECT


def encode_value(value: object, what: str = "the value") -> bytes:
    """Encode any JSON value (an event's data, say), refusing what would not round-trip."""
    try:
        raw = orjson.dumps(value, default=_refuse, option=_STRICT)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise ValidationError(f"{what} is not JSON: {exc}") from None
    if orjson.loads(raw) != value:
        raise ValidationError(
            f"{what} does not round-trip as JSON: NaN, Infinity, tuples, sets, enums "
            "and UUIDs are not JSON values; convert them first"
        )
    return raw


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
    return orjson.dumps(dict(metadata))


def decode_value(raw: bytes | str) -> Any:
    """Decode what `encode_value` produced."""
    return orjson.loads(raw)


def decode(raw: bytes | str) -> dict[str, Any]:
    """Decode what `encode_data` or `encode_metadata` produced."""
    value = orjson.loads(raw)
    if type(value) is not dict:
        raise ValueError("stored session payload is not a JSON object")
    return value
