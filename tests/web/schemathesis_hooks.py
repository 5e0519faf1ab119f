"""What the schemathesis run (test_schemathesis.py) loads besides the OpenAPI document.

Two processes import this module: schemathesis (through SCHEMATHESIS_HOOKS), for its hooks, and
`sessionary serve`, for `instant`, the run handler of the service under test.

The hooks make the fuzzer reach past the 404 of a random id and, in the hostile run
(HOSTILE set in the environment), throw the inputs the service must refuse cleanly:

* path parameters: besides the generated ones, the ids of sessions, conversations and their
  runs and the analytics project that the test created before the run (FUZZ_IDS, JSON in the
  environment), so that consume, rotate, PATCH, events... run on live resources (DELETE and
  rotate, which end a session, get sessions of their own, whose subject is the one handed to
  the subject routes);
* examples (which the examples phase sends, each, and the coverage phase starts from): live ids for
  the path parameters, hostile values for the paging, time and interval query parameters, and bodies
  with one field made hostile each: integers at and past what a backend stores (2^63 - 1, 2^63,
  2^64, -2^63 - 1), a boolean or a numeric string where an integer goes, a lone surrogate in a
  string or a key, data nested around the stated depth (64);
* bodies and query strings in the fuzzing phase: besides the generated ones, the same hostile
  copies, and values nested around the most orjson encodes (254 levels), which schemathesis
  cannot take as examples;
* failures: a 503 is not a server error when the operation documents it and it carries Retry-After
  (the service's answer to a store that cannot answer); any other 5xx is. And a well-formed value
  that only the server's state can judge is rightly refused, though the document cannot say so: a
  log or page cursor this server did not issue (400 `invalid_cursor`), an If-Match naming another
  version (412 `version_conflict`), the id of another namespace (400 `invalid_session_id`: the admin
  API's session id pattern is that of every namespace, as one path parameter cannot depend on
  another), a /stats range whose sessions span more buckets of its interval than the server
  answers (400 `too_many_buckets`: a bound on the sessions stored, which no parameter's schema
  can state); and a conversation the fuzzer just created has no run yet (the runs API's 404
  `no_active_session`, `no_background_task`), which is not a created resource that cannot be
  found, nor is a session it made with a lifetime of milliseconds and found expired
  (SHORT_LIVED). Nor is an integer past 64 bits schema-valid, though
  the fuzzer, comparing as doubles, takes 2^63 + 192 to be within a `maximum` of 2^63 - 1.
"""

from __future__ import annotations

import os
import re
from typing import Any

import orjson
import schemathesis
from hypothesis import strategies as st
from schemathesis.openapi.checks import EnsureResourceAvailability, RejectedPositiveData

from sessionary.runs.service import Producer

FUZZ_IDS = "SESSIONARY_FUZZ_IDS"
#: set (to anything) for the hostile run: hostile bodies and query values besides generated ones
HOSTILE = "SESSIONARY_FUZZ_HOSTILE"
#: the codes of a refusal that no schema can foretell (see the module docstring)
STATEFUL_REFUSALS = frozenset(
    {"invalid_cursor", "version_conflict", "invalid_session_id", "too_many_buckets"}
)
#: the runs API's 404 of a conversation without a run
NO_RUN_YET = frozenset({"no_active_session", "no_background_task"})
HOSTILE_NUMBERS: list[Any] = [
    2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30, True, False, "3", 1.5, -1,
]  # fmt: skip
LONE_SURROGATE = "\udfff"
# around the depth the store states (64); and around the most orjson encodes (254 levels), which
# only the fuzzing phase sends (schemathesis cannot take them as examples)
SHALLOW, DEEP = (63, 64, 65), (252, 253, 254, 300)
NESTING_FIELDS = ("data", "input", "properties")  # where bodies nest values
HOSTILE_QUERY: dict[str, list[str]] = {
    "from": [str(2**63), str(2**64), "-1", "1e3", "true"],
    "to": [str(2**63), str(2**64), "-1"],
    "limit": [str(2**63), "0", "-1", "true"],
    "after": ["abc", "", "0", "-1", str(2**64), "1-zzzz", "\u00e9"],
    "interval": ["week", "", "HOUR"],
}


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def hostile_values(value: Any) -> list[Any]:
    """Values to put where `value` was."""
    if isinstance(value, int | float) or value is None:  # booleans are ints
        return HOSTILE_NUMBERS
    if isinstance(value, str):
        return [value + LONE_SURROGATE, LONE_SURROGATE]
    return [
        *({"deep": nested(depth)} for depth in SHALLOW),
        {"n": 2**64},
        {"n": -(2**63) - 1},
        {"s": LONE_SURROGATE},
        {LONE_SURROGATE: 1},
    ]


def hostile_bodies(body: Any) -> list[Any]:
    """Copies of a JSON body with one value made hostile (one level into an array's first
    item, as a /track batch), and hostile bodies of their own."""
    out: list[Any] = [nested(64), LONE_SURROGATE, 2**64]
    if isinstance(body, dict):
        for key, value in body.items():
            out += [{**body, key: bad} for bad in hostile_values(value)]
        for key in ("amount", "limit", "timestamp", "revenue"):
            out += [{**body, key: bad} for bad in HOSTILE_NUMBERS]
        for key in NESTING_FIELDS:
            out += [{**body, key: bad} for bad in hostile_values({})]
        out += [{**body, LONE_SURROGATE: 1}, {**body, "subject": LONE_SURROGATE}]
    elif isinstance(body, list) and body:
        out += [[bad, *body[1:]] for bad in hostile_bodies(body[0])]
    return out


def deep_bodies(body: Any) -> list[Any]:
    """Copies of a body with a value nested DEEP levels in one of its nesting fields."""
    if isinstance(body, list) and body:
        return [[bad, *body[1:]] for bad in deep_bodies(body[0])]
    if not isinstance(body, dict):
        return [nested(depth) for depth in DEEP]
    return [{**body, key: {"deep": nested(depth)}} for key in NESTING_FIELDS for depth in DEEP]


def fuzz_ids() -> dict[str, Any]:
    return dict(orjson.loads(os.environ.get(FUZZ_IDS, "{}")))


def hostile() -> bool:
    return bool(os.environ.get(HOSTILE))


# known-good values of the fields a base body needs (the rest: by type)
GOOD = {"name": "screen_view", "device_id": "d1", "github_url": "https://github.com/a/b"}
PLACEHOLDERS = {"integer": 1, "number": 1, "string": "x", "boolean": True, "object": {},
                "array": []}  # fmt: skip


def resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """A body schema's object form: $ref followed, the object branch of an anyOf/oneOf."""
    while "$ref" in schema:
        *_, name = schema["$ref"].split("/")
        schema = document["components"]["schemas"][name]
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        found = resolve(branch, document)
        if "properties" in found:
            return found
    return schema


def placeholder(name: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    kind = next((k for k in kind if k != "null"), "string") if isinstance(kind, list) else kind
    return GOOD.get(name, PLACEHOLDERS.get(kind, "x"))


def example_bodies(schema: dict[str, Any]) -> list[Any]:
    """A base body (its required and known-good fields), then each field made hostile."""
    fields = schema.get("properties", {})
    base = {name: placeholder(name, sub) for name, sub in fields.items()
            if name in schema.get("required", ()) or name in GOOD}  # fmt: skip
    bodies = [nested(64), LONE_SURROGATE, 2**64, {**base, LONE_SURROGATE: 1}]
    for name, sub in fields.items():
        bodies += [{**base, name: bad} for bad in hostile_values(placeholder(name, sub))]
    return bodies


def parameter_examples(name: str, method: str, path: str, ids: dict[str, Any]) -> list[Any]:
    """Live ids for path parameters, hostile values for paging, time and interval parameters."""
    ending = method == "delete" or path.endswith("/rotate")
    live: dict[str, list[Any]] = {
        "namespace": [ids["namespace"]],
        "session_id": ids["ending" if ending else "sessions"],
        "subject": [ids["subject"]],
        "conversation_id": [conversation for conversation, _ in ids["runs"]],
        "run_id": [run for _, run in ids["runs"]],
        "project_id": [ids["project"]],
        "counter": ["c"],
    }
    return live.get(name) or (HOSTILE_QUERY.get(name, []) if hostile() else [])


@schemathesis.hook
def before_load_schema(context: schemathesis.HookContext, raw_schema: dict[str, Any]) -> None:
    """Examples for every operation (the examples phase sends each): live ids in the path,
    hostile query values, and bodies with one field made hostile each."""
    ids = fuzz_ids()
    for path, item in raw_schema["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                values = parameter_examples(parameter["name"], method, path, ids)
                if values:
                    parameter["examples"] = {f"e{n}": {"value": v} for n, v in enumerate(values)}
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and hostile():
                bodies = example_bodies(resolve(body["schema"], raw_schema))
                if "oneOf" in body["schema"]:  # schemathesis' oneOf check fails on surrogates
                    bodies = [b for b in bodies if utf8(b)]
                body["examples"] = {f"e{n}": {"value": v} for n, v in enumerate(bodies)}


def utf8(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


@schemathesis.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    if not path_parameters or not declared(context.operation, path_parameters):
        # none, or a negative case: left as it is (a live id would make it valid)
        return st.just(path_parameters)
    ids = fuzz_ids()
    live: list[dict[str, Any]] = []
    if "session_id" in path_parameters:
        # what DELETE or rotate ends is not what the other operations get
        ending = context.operation is not None and (
            context.operation.method.upper() == "DELETE"
            or context.operation.path.endswith("/rotate")
        )
        live += [
            {**path_parameters, "namespace": ids["namespace"], "session_id": session}
            for session in ids["ending" if ending else "sessions"]
        ]
    elif "subject" in path_parameters:
        live += [{**path_parameters, "namespace": ids["namespace"], "subject": ids["subject"]}]
    if "conversation_id" in path_parameters:
        live += [
            {**path_parameters, "conversation_id": conversation, "run_id": run}
            for conversation, run in ids["runs"]
        ]
    if "project_id" in path_parameters:
        live += [{**path_parameters, "project_id": ids["project"]}]
    if not live:
        return st.just(path_parameters)
    return st.one_of(st.just(path_parameters), st.sampled_from(live))


def declared(operation: Any, values: dict[str, Any]) -> bool:
    """Whether each path parameter's value matches its declared pattern, if it has one."""
    for parameter in operation.definition.raw.get("parameters", []):
        pattern = parameter.get("schema", {}).get("pattern")
        value = values.get(parameter["name"])
        if pattern and isinstance(value, str) and not re.search(pattern, value):
            return False
    return True


@schemathesis.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """The generated body, a deep one or a hostile one: a third each (the hostile run)."""
    if not hostile():
        return st.just(body)
    return st.one_of(
        st.just(body), st.sampled_from(deep_bodies(body)), st.sampled_from(hostile_bodies(body))
    )


@schemathesis.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    operation = context.operation
    if not hostile():
        return st.just(query)
    names = [n for n in HOSTILE_QUERY if operation is not None and n in operation.query]
    variants = [{**(query or {}), n: bad} for n in names for bad in HOSTILE_QUERY[n]]
    if not variants:
        return st.just(query)
    return st.one_of(st.just(query), st.sampled_from(variants))


#: sessions the fuzzer created or rotated with a lifetime of under `SHORT_LIFETIME_MS`: their
#: 404 right after is their expiry, not a created resource that cannot be found
SHORT_LIVED: set[str] = set()
SHORT_LIFETIME_MS = 10_000


@schemathesis.hook
def after_call(
    context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response
) -> None:
    """Remember the sessions made to end within seconds (see SHORT_LIVED)."""
    body = case.body if isinstance(case.body, dict) else {}
    ttls = [body.get(name) for name in ("idle_ttl_ms", "absolute_ttl_ms")]
    if response.status_code in (200, 201) and any(
        type(ttl) is int and ttl < SHORT_LIFETIME_MS for ttl in ttls
    ):
        made = error_code(response, "id")
        if made is not None:
            SHORT_LIVED.add(made)


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: schemathesis.Response,
) -> bool:
    """Keep every failure but a documented 503 with Retry-After, and a refusal of well-formed
    data that only the server's state can judge (STATEFUL_REFUSALS)."""
    documented = str(response.status_code) in case.operation.definition.raw.get("responses", {})
    if response.status_code == 503 and documented and "retry-after" in response.headers:
        return False
    if isinstance(failure, EnsureResourceAvailability):
        if (case.path_parameters or {}).get("session_id") in SHORT_LIVED:
            return False
        return error_code(response, "code") not in NO_RUN_YET and error_code(response) != (
            "run_not_found"
        )
    if isinstance(failure, RejectedPositiveData):
        return error_code(response) not in STATEFUL_REFUSALS and not past_64_bits(case.body)
    return True


def past_64_bits(value: Any) -> bool:
    """Whether a JSON value holds an integer past what 64 bits hold (signed)."""
    if isinstance(value, dict):
        return any(past_64_bits(v) for v in value.values())
    if isinstance(value, list):
        return any(past_64_bits(v) for v in value)
    return type(value) is int and not -(2**63) <= value < 2**63


def error_code(response: schemathesis.Response, field: str = "error") -> str | None:
    """A field of a JSON object body (by default an error's `error`), None for any other
    response."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(field) if isinstance(body, dict) else None


async def instant(producer: Producer, input: Any) -> dict[str, bool]:
    """The service's run handler: echoes the input as one event and ends at once, so that an
    event stream the fuzzer opens closes, and fuzzed input lands in a run's log."""
    await producer.emit("chunk", {"input": input})
    return {"done": True}
