"""examples/flask/app.py does what its docstring says: log in, count, log out."""

from __future__ import annotations

import flask
import pytest
from examples.flask.app import create_app
from flask.testing import FlaskClient

from sessionary.contrib.flask import SessionInterface
from sessionary.sync import SyncStore


@pytest.fixture
def example(sync_store: SyncStore) -> flask.Flask:
    return create_app(sync_store)


@pytest.fixture
def client(example: flask.Flask) -> FlaskClient:
    return example.test_client()


def _sessions_of(app: flask.Flask, user: str) -> list[str]:
    interface = app.session_interface
    assert isinstance(interface, SessionInterface)
    return [found.id for found in interface.namespace(app).list_subject(user)]


def test_log_in_count_log_out(example: flask.Flask, client: FlaskClient) -> None:
    assert client.get("/me").json == {"user": None, "count": None}
    assert client.post("/count").status_code == 401

    assert client.post("/login", data={"user": "alice"}).json == {"user": "alice", "count": 0}
    cookie = client.get_cookie("session")
    assert cookie is not None
    assert cookie.expires is not None  # permanent: it outlives the browser
    assert _sessions_of(example, "alice") == [cookie.value]

    assert client.post("/count").json == {"user": "alice", "count": 1}
    assert client.post("/count").json == {"user": "alice", "count": 2}
    assert client.get("/me").json == {"user": "alice", "count": 2}

    assert client.post("/logout").json == {"logged_out": True}
    assert client.get_cookie("session") is None
    assert client.get("/me").json == {"user": None, "count": None}
    assert _sessions_of(example, "alice") == []
    assert client.post("/count").status_code == 401


def test_logging_in_again_replaces_the_id(example: flask.Flask, client: FlaskClient) -> None:
    client.post("/login", data={"user": "alice"})
    first = client.get_cookie("session")
    assert first is not None
    client.post("/login", data={"user": "alice"})
    second = client.get_cookie("session")
    assert second is not None
    assert second.value != first.value
    assert _sessions_of(example, "alice") == [second.value]  # the first id is dead
