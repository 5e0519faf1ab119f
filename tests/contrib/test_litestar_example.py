"""examples/litestar/app.py: log in, count, log out everywhere, on each backend."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from sessionary import ManualClock
from sessionary.contrib.litestar import SessionaryStore

EXAMPLE = Path(__file__).parents[2] / "examples" / "litestar" / "app.py"
_MODULE = "sessionary_examples_litestar_app"


def _example(name: str = _MODULE) -> ModuleType:
    """The example's module under `name`, imported once (Litestar reads its handlers'
    annotations from `sys.modules`)."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def client(store_url: str, clock: ManualClock) -> Iterator[TestClient[Litestar]]:
    sessions = SessionaryStore(store_url, clock=clock, subject_key="user_id")
    with TestClient(_example().create_app(sessions)) as client:
        yield client


def _device(client: TestClient[Litestar], cookie: str | None = None) -> None:
    """Present `cookie` (None: no cookie), as another device would."""
    client.cookies.clear()
    if cookie is not None:
        client.cookies.set("session", cookie)


def _log_in(client: TestClient[Litestar], user_id: int) -> str:
    _device(client)
    assert client.post("/login", json={"user_id": user_id}).json() == {
        "user_id": user_id,
        "count": 0,
    }
    return client.cookies["session"]


def test_log_in_count_and_log_out_everywhere(client: TestClient[Litestar]) -> None:
    assert client.get("/me").json() == {"user_id": None, "count": None}
    assert client.post("/count").status_code == 401
    phone = _log_in(client, 42)
    assert client.post("/count").json() == {"user_id": 42, "count": 1}
    assert client.post("/count").json() == {"user_id": 42, "count": 2}
    laptop = _log_in(client, 42)
    assert client.post("/count").json() == {"user_id": 42, "count": 1}  # a session each
    other = _log_in(client, 7)

    _device(client, laptop)
    assert client.post("/logout-everywhere").json() == {"sessions_ended": 2}
    for cookie in (phone, laptop):
        _device(client, cookie)
        assert client.get("/me").json() == {"user_id": None, "count": None}
        assert client.post("/count").status_code == 401
    _device(client, other)
    assert client.get("/me").json() == {"user_id": 7, "count": 0}


def test_a_session_ends_after_an_hour_without_requests(
    client: TestClient[Litestar], clock: ManualClock
) -> None:
    _log_in(client, 42)
    for _ in range(3):
        clock.advance(3_599_000)
        assert client.post("/count").status_code == 201
    clock.advance(3_600_000)
    assert client.get("/me").json() == {"user_id": None, "count": None}


def test_importing_the_example_opens_no_store(tmp_path: Path) -> None:
    module = _example(f"{_MODULE}_{tmp_path.name}")  # imported here, in this directory
    sessions = module.app.stores.get("sessions")
    assert isinstance(sessions, SessionaryStore)
    assert not Path("sessionary-litestar.db").exists()
