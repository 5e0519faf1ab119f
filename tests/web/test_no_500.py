"""Whatever a client sends, the answer is never a 500 (Hypothesis throws the input)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionary import ManualClock
from sessionary.testing._values import json_values
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.web.conftest import ADMIN, API_KEY, client_for

segments = (
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60)
    .map(lambda s: quote(s, safe=""))
    .filter(lambda s: s not in (".", ".."))
)
bodies = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["subject", "data", "metadata", "amount", "limit", "extra"]),
        json_values,
        max_size=4,
    ),
)
methods = st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"])
paths = st.one_of(
    st.builds(lambda ns: f"/v1/namespaces/{ns}/sessions", segments),
    st.builds(lambda ns, sid: f"/v1/namespaces/{ns}/sessions/{sid}", st.just("web"), segments),
    st.builds(lambda sid: f"/v1/namespaces/web/sessions/{sid}/touch", segments),
    st.builds(lambda sid: f"/v1/namespaces/web/sessions/{sid}/rotate", segments),
    st.builds(
        lambda sid, c: f"/v1/namespaces/web/sessions/{sid}/counters/{c}/consume", segments, segments
    ),
    st.builds(lambda sub: f"/v1/namespaces/web/subjects/{sub}/sessions", segments),
    st.just("/api/v1/playground/session"),
    st.just("/api/v1/playground/session/indexed-repo"),
)


def test_no_input_gets_a_500() -> None:
    app = create_app(
        Settings(store="memory://", api_keys=[API_KEY], reaper={"enabled": False}),
        clock=ManualClock(),
    )
    with asyncio.Runner() as runner:
        runner.run(app.router.lifespan_context(app).__aenter__())
        client = client_for(app)

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            method=methods,
            path=paths,
            body=bodies,
            raw=st.booleans(),
            if_match=st.none() | st.text(max_size=12),
        )
        def probe(method: str, path: str, body: Any, raw: bool, if_match: str | None) -> None:
            headers = dict(ADMIN)
            if if_match is not None and if_match.isprintable() and if_match.isascii():
                headers["If-Match"] = if_match

            async def send() -> httpx.Response:
                if raw:
                    return await client.request(
                        method, path, headers=headers, content=repr(body).encode()
                    )
                return await client.request(method, path, headers=headers, json=body)

            response = runner.run(send())
            assert response.status_code < 500, (method, path, body, response.text)
            if response.status_code >= 400:
                assert "error" in response.json(), response.text

        probe()
        runner.run(client.aclose())
