"""`SESSIONARY["devices"]`: a Django session records the user agent and client IP of the
request that created it (handed over by sessionary's SessionMiddleware), and nothing when off;
on SQLite and Redis. Through the example project (its middleware and counter view)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from sessionary.contrib.django.config import devices, namespace
from sessionary.devices import IP_KEY, USER_AGENT_KEY, DevicePolicy

from .stores import on_store

UA = "Mozilla/5.0 (Windows NT 10.0) Edge/126.0"


def stored_metadata(client: Client) -> dict[str, str]:
    session = namespace().get(client.cookies["sessionid"].value)
    assert session is not None
    return session.metadata


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_recorded_on_create_only_when_on(kind: str) -> None:
    policy: dict[str, Any] = {"user_agent": True, "ip": "truncated"}
    with on_store(kind, devices=policy):
        client = Client(HTTP_USER_AGENT=UA, REMOTE_ADDR="203.0.113.7")
        assert client.get("/").json()["count"] == 1
        recorded = {USER_AGENT_KEY: UA, IP_KEY: "203.0.113.0/24"}
        assert stored_metadata(client) == recorded
        client.defaults.update(HTTP_USER_AGENT="curl/8", REMOTE_ADDR="198.51.100.1")
        assert client.get("/").json()["count"] == 2  # an update: the device stays
        assert stored_metadata(client) == recorded
    with on_store(kind):
        client = Client(HTTP_USER_AGENT=UA, REMOTE_ADDR="203.0.113.7")
        client.get("/")
        assert stored_metadata(client) == {}


def test_the_setting_is_checked() -> None:
    with on_store("sqlite", devices={"ip": "partial"}), pytest.raises(ImproperlyConfigured):
        devices()
    with on_store("sqlite", devices=DevicePolicy(ip="full")):
        assert devices() == DevicePolicy(ip="full")
    with on_store("sqlite", devices={}):
        assert devices() is None  # records nothing: off
