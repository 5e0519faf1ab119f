"""Whatever a client sends, the answer is never a 500 (Hypothesis throws the input): JSON
values at and past the edges too (lone surrogates, integers past 64 bits, booleans and numeric
strings where an integer goes, nesting past the stated depth), on every route family."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionary import ManualClock
from sessionary.codec import MAX_DEPTH
from sessionary.testing._values import json_scalars
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.web.conftest import ADMIN, API_KEY, PROJECT_KEY, client_for

RUNNER_KEY = "runner-key-0123456789"

segments = (
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60)
    .map(lambda s: quote(s, safe=""))
    .filter(lambda s: s not in (".", ".."))
)
edge_scalars = st.sampled_from(
    [
        "\udfff",
        "a\ud800b",
        "\U0010ffff",
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64,
        -(2**63) - 1,
        10**30,
        True,
        False,
        "3",
        "",
        1e308,
        -0.0,
    ]
)


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if depth % 2 else {"k": value}
    return value


deep = st.integers(min_value=MAX_DEPTH - 2, max_value=300).map(_nested)
values = (
    st.recursive(
        json_scalars | edge_scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.text(max_size=8) | edge_scalars.filter(_is_text), children, max_size=4
            )
        ),
        max_leaves=24,
    )
    | deep
)
bodies = st.one_of(
    values,
    st.dictionaries(
        st.sampled_from(
            [
                *("subject", "data", "metadata", "amount", "limit", "extra", "input"),
                *("multitask", "github_url", "name", "file_count", "repo_id", "device_id"),
                *("timestamp", "properties", "path", "revenue", "event_id"),
            ]
        ),
        values,
        max_size=5,
    ),
    st.lists(  # a /track batch
        st.fixed_dictionaries(
            {"name": st.just("view"), "device_id": st.just("d")},
            optional={"timestamp": values, "properties": values, "path": values},
        ),
        max_size=3,
    ),
)
queries = st.dictionaries(
    st.sampled_from(["from", "to", "limit", "after", "device_id"]),
    st.sampled_from(["", "0", "-1", "abc", "true", "1e3", str(2**63), str(2**64), "W10"])
    | st.text(max_size=12),
    max_size=3,
)
methods = st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"])
SHOP = {"Authorization": f"Bearer {PROJECT_KEY}"}
RUNNER = {"Authorization": f"Bearer {RUNNER_KEY}"}
credentials = st.sampled_from([ADMIN, SHOP, RUNNER, {}])
# now and then the wrong method or key for the route
wrong_ones = st.integers(0, 4).flatmap(
    lambda n: st.tuples(methods, credentials) if n == 0 else st.none()
)


def routes(sid: str, conversation: str) -> st.SearchStrategy[tuple[str, str, dict[str, str]]]:
    """(method, path, the credential it takes), with the ids of a live session and a live
    conversation as likely as made-up ones, so bodies reach the validation behind them."""
    session = st.just(sid) | segments
    owned = st.just(conversation) | segments
    admin = [
        ("POST", st.builds(lambda ns: f"/v1/namespaces/{ns}/sessions", st.just("web") | segments)),
        ("GET", st.builds(lambda s: f"/v1/namespaces/web/sessions/{s}", session)),
        ("PATCH", st.builds(lambda s: f"/v1/namespaces/web/sessions/{s}", session)),
        ("DELETE", st.builds(lambda s: f"/v1/namespaces/web/sessions/{s}", segments)),
        ("POST", st.builds(lambda s: f"/v1/namespaces/web/sessions/{s}/touch", session)),
        ("POST", st.builds(lambda s: f"/v1/namespaces/web/sessions/{s}/rotate", segments)),
        (
            "POST",
            st.builds(
                lambda s, c: f"/v1/namespaces/web/sessions/{s}/counters/{c}/consume",
                session,
                st.just("c") | segments,
            ),
        ),
        ("GET", st.builds(lambda sub: f"/v1/namespaces/web/subjects/{sub}/sessions", segments)),
        ("GET", st.builds(lambda p: f"/api/v1/projects/{p}/sessions", st.just("shop") | segments)),
        ("GET", st.builds(lambda p: f"/api/v1/projects/{p}/stats", st.just("shop") | segments)),
    ]
    anyone = [
        ("GET", st.just("/api/v1/playground/session")),
        ("PUT", st.just("/api/v1/playground/session/indexed-repo")),
        ("DELETE", st.just("/api/v1/playground/session/indexed-repo")),
    ]
    runner = [
        ("POST", st.just("/api/v1/conversations")),
        ("POST", st.builds(lambda c: f"/api/v1/conversations/{c}/runs", owned)),
        ("GET", st.builds(lambda c: f"/api/v1/conversations/{c}/task-status", owned)),
        ("POST", st.builds(lambda c: f"/api/v1/conversations/{c}/stop", owned)),
        (
            "GET",
            st.builds(lambda c, r: f"/api/v1/conversations/{c}/runs/{r}/events", owned, segments),
        ),
    ]
    families = [
        (admin, ADMIN),
        (anyone, {}),
        (runner, RUNNER),
        ([("POST", st.just("/api/v1/track"))], SHOP),
    ]
    return st.one_of(
        st.tuples(st.just(method), path, st.just(credential))
        for family, credential in families
        for method, path in family
    )


def test_no_input_gets_a_500() -> None:
    app = create_app(
        Settings(
            store="memory://",
            api_keys=[API_KEY],
            reaper={"enabled": False},
            runs={"users": [{"key": RUNNER_KEY, "subject": "runner"}]},
            analytics={"jobs": False, "projects": {"shop": {"key": PROJECT_KEY}}},
        ),
        clock=ManualClock(),
    )
    with asyncio.Runner() as runner:
        lifespan = app.router.lifespan_context(app)  # held: collected, it would shut the app
        runner.run(lifespan.__aenter__())
        client = client_for(app)
        made = runner.run(client.post("/v1/namespaces/web/sessions", json={}, headers=ADMIN))
        started = runner.run(client.post("/api/v1/conversations", headers=RUNNER))
        route_of = routes(made.json()["id"], started.json()["conversationId"])

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            route=route_of,
            other=wrong_ones,
            query=queries,
            body=bodies,
            raw=st.booleans(),
            if_match=st.none() | st.text(max_size=12),
        )
        def probe(
            route: tuple[str, str, dict[str, str]],
            other: tuple[str, dict[str, str]] | None,
            query: dict[str, str],
            body: Any,
            raw: bool,
            if_match: str | None,
        ) -> None:
            method, path, credential = route
            if other is not None:
                method, credential = other
            headers = {**credential, "Content-Type": "application/json"}
            if if_match is not None and if_match.isprintable() and if_match.isascii():
                headers["If-Match"] = if_match
            url = f"{path}?{urlencode(query)}" if query else path
            # the stdlib escapes lone surrogates ("\udfff"), as another language's client may
            content = repr(body) if raw else json.dumps(body)

            async def send() -> httpx.Response:
                return await client.request(method, url, headers=headers, content=content)

            response = runner.run(send())
            assert response.status_code < 500, (method, url, body, response.text)
            if response.status_code >= 400:
                assert "error" in response.json(), response.text

        probe()
        runner.run(client.aclose())
        runner.run(lifespan.__aexit__(None, None, None))
