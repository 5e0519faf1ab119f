"""A client generated from the service's OpenAPI document drives the service.

openapi-python-client generates a package from the document at test time (into the test's
directory), and the test uses it, as an application would, against the service on a real
socket: create a session through the admin API, read it back, write over its version with
If-Match, lose a race on it (412), delete it, and read the errors (404, 401) as the document's
one error body. What this proves: the document is complete enough for a generator (operation
ids, the body and response models, the If-Match header, the error responses by status).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from tests.servers import free_port
from tests.service import serving
from tests.web.conftest import API_KEY

PACKAGE = "sessionary_client"


def generate(document: dict[str, Any], directory: Path) -> None:
    """The client package of `document`, as `directory / PACKAGE`."""
    (directory / "openapi.json").write_bytes(orjson.dumps(document))
    (directory / "config.yaml").write_text("post_hooks: []\n")  # no formatter to run
    generator = Path(sys.executable).parent / "openapi-python-client"
    subprocess.run(
        [
            generator, "generate",
            "--path", directory / "openapi.json",
            "--config", directory / "config.yaml",
            "--meta", "none",
            "--output-path", directory / PACKAGE,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip


def part(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_runs_the_admin_api(
    make_app: Callable[..., FastAPI], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    generate(app.openapi(), tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith(PACKAGE)]:  # each test its own
        monkeypatch.delitem(sys.modules, name)
    client, models = part("client"), part("models")
    create, read, patch, delete = (
        part(f"api.admin.admin_{op}") for op in ("create", "read", "patch", "delete")
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    async with serving(config) as url:
        admin = client.AuthenticatedClient(base_url=url, token=API_KEY)
        body = models.CreateIn.from_dict({"subject": "ada", "data": {"cart": [1]}})
        created = await create.asyncio_detailed("web", client=admin, body=body)
        assert created.status_code == 201
        assert isinstance(created.parsed, models.SessionOut)
        assert created.headers["etag"] == '"1"'
        session_id = created.parsed.id

        found = await read.asyncio("web", session_id, client=admin)
        assert isinstance(found, models.SessionOut)
        assert found.to_dict()["data"] == {"cart": [1]}
        assert found.subject == "ada"

        emptied = models.PatchIn.from_dict({"data": {"cart": []}})
        written = await patch.asyncio("web", session_id, client=admin, body=emptied, if_match='"1"')
        assert isinstance(written, models.SessionOut)
        assert written.version == 2
        lost = await patch.asyncio("web", session_id, client=admin, body=emptied, if_match='"1"')
        assert isinstance(lost, models.Error)
        assert (lost.error, lost.expected_version, lost.current_version) == (
            "version_conflict",
            1,
            2,
        )

        assert (await delete.asyncio_detailed("web", session_id, client=admin)).status_code == 204
        gone = await read.asyncio("web", session_id, client=admin)
        assert isinstance(gone, models.Error)
        assert gone.error == "session_not_found"

        stranger = client.AuthenticatedClient(base_url=url, token="not-a-key-0123456789")
        refused = await read.asyncio("web", session_id, client=stranger)
        assert isinstance(refused, models.Error)
        assert refused.error == "unauthorized"
