"""Values the suite writes: what must round-trip, what must be refused."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import strategies as st

from sessionary.codec import INT64_MAX, INT64_MIN, MAX_DEPTH


def exact(value: Any) -> bytes:
    """A value's JSON with types kept (1 and 1.0 differ), for exact round-trip checks."""
    return orjson.dumps(value)


class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


NOT_JSON: list[Any] = [
    (1, 2),
    {1, 2},
    float("nan"),
    float("inf"),
    -float("inf"),
    uuid.UUID(int=7),
    datetime(2026, 1, 1, tzinfo=UTC),
    b"bytes",
    _Color.RED,
    2**64,  # past even the unsigned 64 bits orjson takes
    INT64_MIN - 1,
    {1: "int key"},
    Decimal("1.5"),
    object(),
    _Point(1),
    defaultdict(list),
    "lone \udfff surrogate",  # not valid Unicode
    _nested(MAX_DEPTH),  # nests past MAX_DEPTH wherever it is put
]

MALFORMED_IDS: list[Any] = [
    "",
    "abc",
    "x" * 43,  # right length, but 'x' cannot end a canonical 256-bit token
    "A" * 42 + "=",
    "A" * 41 + "+A",
    "A" * 41 + "/A",
    "A" * 20 + " " + "A" * 22,
    "A" * 41 + "é" + "A",
    "A" * 44,
    "A" * 42,
    "A" * 4096,
    None,
    123,
    b"A" * 43,
    ["A" * 43],
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=24,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
metadata_objects = st.dictionaries(
    st.text(min_size=1, max_size=12), st.text(max_size=24), max_size=4
)
