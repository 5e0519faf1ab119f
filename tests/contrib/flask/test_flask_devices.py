"""`SessionInterface(devices=...)`: the session records the user agent and client IP of the
request that created it, and nothing when off; on SQLite and Redis."""

from __future__ import annotations

import flask

from sessionary.contrib.flask import SessionInterface
from sessionary.devices import IP_KEY, USER_AGENT_KEY, Device, DevicePolicy
from sessionary.sync import SyncStore

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"


def device_app(sync_store: SyncStore, policy: DevicePolicy | None) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(TESTING=True)
    app.session_interface = SessionInterface(sync_store, namespace="devices", devices=policy)

    @app.post("/set/<value>")
    def put(value: str) -> str:
        flask.session["value"] = value
        return ""

    @app.post("/login/<user>")
    def login(user: str) -> str:
        flask.session.regenerate(subject=user)  # type: ignore[attr-defined]
        return ""

    @app.get("/mine")
    def mine() -> list[dict[str, str | None]]:
        devices = [Device.of(s) for s in flask.session.list_mine()]  # type: ignore[attr-defined]
        return [{"ua": d.user_agent, "ip": d.ip} for d in devices]

    return app


def stored_metadata(app: flask.Flask, session_id: str) -> dict[str, str]:
    interface = app.session_interface
    assert isinstance(interface, SessionInterface)
    session = interface.namespace(app).get(session_id)
    assert session is not None
    return session.metadata


def session_cookie(client: flask.testing.FlaskClient) -> str:
    found = client.get_cookie("session")
    assert found is not None
    return found.value


def test_off_by_default_records_nothing(sync_store: SyncStore) -> None:
    app = device_app(sync_store, None)
    client = app.test_client()
    client.post("/set/a", headers={"User-Agent": UA})
    assert stored_metadata(app, session_cookie(client)) == {}


def test_on_records_the_creating_request_only(sync_store: SyncStore) -> None:
    app = device_app(sync_store, DevicePolicy(ip="truncated", user_agent=True))
    client = app.test_client()
    where = {"REMOTE_ADDR": "2001:db8:abcd:12::1"}
    client.post("/set/a", headers={"User-Agent": UA}, environ_base=where)
    recorded = {USER_AGENT_KEY: UA, IP_KEY: "2001:db8:abcd::/48"}
    assert stored_metadata(app, session_cookie(client)) == recorded
    elsewhere = {"REMOTE_ADDR": "198.51.100.1"}
    client.post("/set/b", headers={"User-Agent": "curl/8"}, environ_base=elsewhere)
    client.post("/login/alice", environ_base=elsewhere)  # a new id, the same device
    assert stored_metadata(app, session_cookie(client)) == recorded
    assert client.get("/mine").json == [{"ua": UA, "ip": "2001:db8:abcd::/48"}]


def test_full_ip_without_user_agent(sync_store: SyncStore) -> None:
    app = device_app(sync_store, DevicePolicy(ip="full"))
    client = app.test_client()
    client.post("/set/a", headers={"User-Agent": UA}, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert stored_metadata(app, session_cookie(client)) == {IP_KEY: "192.0.2.9"}
