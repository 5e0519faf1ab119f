"""`sessionary.devices`: what a session records of its device, in each form; and the core
recording it on create only, on every backend."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest

from sessionary import ManualClock, Store
from sessionary.devices import (
    IP_HASH_KEY_NAME,
    IP_KEY,
    USER_AGENT_KEY,
    Device,
    DevicePolicy,
    ip_hash,
    parse_ip,
)
from sessionary.session_request import Outcome, RequestSession

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"


def test_off_by_default_records_nothing() -> None:
    policy = DevicePolicy()
    assert not policy.records
    assert policy.seen(UA, "203.0.113.7") is None
    assert policy.entries(UA, "203.0.113.7", "key") == {}
    assert DevicePolicy(ip="none", user_agent=True).entries(UA, "203.0.113.7") == {
        USER_AGENT_KEY: UA
    }


@pytest.mark.parametrize(
    ("client_ip", "full", "truncated"),
    [
        ("203.0.113.7", "203.0.113.7", "203.0.113.0/24"),
        ("::ffff:203.0.113.7", "203.0.113.7", "203.0.113.0/24"),  # a dual-stack socket's IPv4
        ("2001:db8:abcd:12::1", "2001:db8:abcd:12::1", "2001:db8:abcd::/48"),
        ("[2001:DB8::1]:443", "2001:db8::1", "2001:db8::/48"),
    ],
)
def test_full_and_truncated_ip(client_ip: str, full: str, truncated: str) -> None:
    assert DevicePolicy(ip="full").entries(None, client_ip) == {IP_KEY: full}
    assert DevicePolicy(ip="truncated").entries(None, client_ip) == {IP_KEY: truncated}
    assert DevicePolicy(ip="truncated").entries(None, parse_ip(client_ip)) == {IP_KEY: truncated}


def test_truncation_hides_the_host_but_keeps_the_network() -> None:
    policy = DevicePolicy(ip="truncated")
    assert policy.entries(None, "198.51.100.1") == policy.entries(None, "198.51.100.254")
    assert policy.entries(None, "198.51.100.1") != policy.entries(None, "198.51.101.1")


def test_hashed_is_keyed_and_stable_per_key() -> None:
    policy = DevicePolicy(ip="hashed")
    one = policy.entries(None, "203.0.113.7", "key-one")[IP_KEY]
    assert policy.entries(None, "203.0.113.7", "key-one")[IP_KEY] == one
    assert policy.entries(None, "203.0.113.8", "key-one")[IP_KEY] != one
    assert policy.entries(None, "203.0.113.7", "key-two")[IP_KEY] != one
    assert "203" not in one
    assert len(one) == 32
    assert one == ip_hash(ipaddress.ip_address("203.0.113.7"), "key-one")  # the service's hash
    with pytest.raises(ValueError, match="needs a key"):
        policy.entries(None, "203.0.113.7")


def test_an_unknown_or_unparsable_client_records_no_ip() -> None:
    for form in ("full", "truncated", "hashed"):
        policy = DevicePolicy(ip=form)
        assert policy.entries(None, None, "k") == {}
        assert policy.entries(None, "testclient", "k") == {}  # Starlette's TestClient


def test_user_agent_is_cut_and_made_storable() -> None:
    policy = DevicePolicy(user_agent=True, user_agent_max=10)
    assert policy.entries("  " + "x" * 50, None) == {USER_AGENT_KEY: "x" * 10}
    lone = policy.entries("bad\udc80agent", None)[USER_AGENT_KEY]
    assert lone.encode()  # valid Unicode: no lone surrogate left
    assert lone.startswith("bad")
    assert "\udc80" not in lone
    assert policy.entries("", None) == {}
    assert policy.entries(None, None) == {}
    assert DevicePolicy(user_agent=True).entries("é" * 300, None)[USER_AGENT_KEY] == "é" * 256


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="ip is one of"):
        DevicePolicy(ip="partial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_agent_max"):
        DevicePolicy(user_agent=True, user_agent_max=0)
    assert "s3cret" not in repr(DevicePolicy(ip="hashed", ip_hash_key="s3cret"))


async def test_hashed_uses_the_stores_shared_secret(store: Store) -> None:
    seen = DevicePolicy(ip="hashed").seen(None, "203.0.113.7")
    assert seen is not None
    secret = await store.shared_secret(IP_HASH_KEY_NAME)
    hashed = await seen.metadata(store)
    assert hashed == {IP_KEY: ip_hash(ipaddress.ip_address("203.0.113.7"), secret)}
    assert await seen.metadata(store) == hashed
    own = DevicePolicy(ip="hashed", ip_hash_key="operator-key").seen(None, "203.0.113.7")
    assert own is not None
    assert (await own.metadata(store))[IP_KEY] == ip_hash(
        ipaddress.ip_address("203.0.113.7"), "operator-key"
    )


async def test_recorded_on_create_only_and_listed(store: Store, clock: ManualClock) -> None:
    namespace = store.namespace("web", idle_ttl=timedelta(hours=1))
    seen = DevicePolicy(ip="truncated", user_agent=True).seen(UA, "203.0.113.7")
    state = RequestSession.fresh(namespace, device=seen)
    state["cart"] = ["book"]
    await state.rotate(subject="alice")
    assert await state.commit() is Outcome.ISSUE
    created = state.session
    assert created is not None
    assert created.metadata == {USER_AGENT_KEY: UA, IP_KEY: "203.0.113.0/24"}

    # a later request from elsewhere updates and rotates it: the device stays the creator's
    clock.advance(5_000)
    other = DevicePolicy(ip="full", user_agent=True).seen("curl/8", "198.51.100.1")
    later = await RequestSession.load(namespace, created.id, device=other)
    later["cart"] = ["book", "pen"]
    await later.rotate()
    await later.commit()
    assert later.session is not None
    (listed,) = await namespace.list_subject("alice")
    device = Device.of(listed)
    assert (device.user_agent, device.ip) == (UA, "203.0.113.0/24")
    assert device.recorded
    assert device.created_at == created.created_at
    assert device.last_seen_at == created.created_at + 5_000
    assert device.last_seen - device.created == timedelta(seconds=5)

    bare = RequestSession.fresh(namespace)
    bare["x"] = 1
    await bare.commit()
    assert bare.session is not None
    assert bare.session.metadata == {}
    assert not Device.of(bare.session).recorded
