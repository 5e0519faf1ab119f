"""Fixtures for the Flask integration's tests, Flask's own among them.

Flask's test suite (`tests/` of its source distribution, `tests.peers.suite("flask")`) takes
an `app` fixture and builds on it (`client`, `req_ctx`, `app_ctx`, and the autouse
`leak_detector`, which fails a test that leaves a request context pushed). Those fixtures are
Flask's own, imported from its conftest; only `app` is ours: the same app as Flask's, with
`sessionary.contrib.flask.SessionInterface` as its session interface and no `SECRET_KEY`
(nothing is signed), on SQLite and on Redis in turn.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import flask
import pytest

from sessionary import ManualClock
from sessionary.contrib.flask import SessionInterface
from sessionary.sync import SyncStore, connect_sync
from tests.peers import suite

FLASK_TESTS = suite("flask") / "tests"


def flask_test_module(name: str) -> ModuleType:
    """The module `name` of Flask's own test suite (e.g. "test_basic"), loaded by path under a
    name of its own (`flask_suite.<name>`), so it never shadows or is shadowed by ours."""
    qualified = f"flask_suite.{name}"
    loaded = sys.modules.get(qualified)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(qualified, FLASK_TESTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


_flask_conftest = flask_test_module("conftest")
# Flask's own fixtures, as its suite defines them (pytest finds fixtures by name in a conftest)
app_ctx = _flask_conftest.app_ctx
req_ctx = _flask_conftest.req_ctx
client = _flask_conftest.client
leak_detector = _flask_conftest.leak_detector
# (its autouse FLASK_* environment resetters are left out: no session test reads those
# variables, and they use `_pytest.monkeypatch.notset`, which pytest 9 no longer has)


@pytest.fixture
def sync_store(shared_url: str, clock: ManualClock) -> Iterator[SyncStore]:
    """A blocking store of the test's own on each shared backend, on the test's clock."""
    with connect_sync(shared_url, clock=clock) as opened:
        yield opened


@pytest.fixture
def app(sync_store: SyncStore) -> flask.Flask:
    """Flask's own `app` fixture, with our session interface and without a secret key."""
    made = flask.Flask("flask_test", root_path=os.fspath(FLASK_TESTS))
    made.config.update(TESTING=True)
    made.session_interface = SessionInterface(sync_store)
    return made
