"""A missing key and a wrong key: the same status and code on every route behind a key (a
client branches on the code), and each its own message, worded alike everywhere: the
missing one says how to send the key, the wrong one that the key is not valid."""

from __future__ import annotations

import httpx
import pytest

WEB = "/v1/namespaces/web"
WRONG = {"Authorization": "Bearer a-wrong-key-0123456789"}

#: a route behind each kind of key, and the key it names
ROUTES = [
    ("POST", f"{WEB}/sessions", "admin API key"),
    ("GET", "/api/v1/projects/shop/sessions", "admin API key"),
    ("POST", "/api/v1/track", "project key"),
    ("GET", "/api/v1/conversations/conv_x/active-session", "runs key"),
    ("POST", "/api/v1/conversations", "runs key"),
]


@pytest.mark.parametrize(("method", "path", "key"), ROUTES)
async def test_a_missing_key_and_a_wrong_key_say_different_things_alike(
    service: httpx.AsyncClient, method: str, path: str, key: str
) -> None:
    missing = await service.request(method, path, json={})
    wrong = await service.request(method, path, json={}, headers=WRONG)
    for answer in (missing, wrong):
        assert (answer.status_code, answer.json()["error"]) == (401, "unauthorized")
        assert answer.headers["www-authenticate"] == "Bearer"
    assert missing.json()["message"] == f"send the {key} as 'Authorization: Bearer <key>'"
    assert wrong.json()["message"] == f"the {key} is not valid"
