"""The console's health page over HTTP, on every backend: readiness, outages and jobs as
`GET /v1/health` gives them, the check's findings as `POST /v1/check` gives them, and who
may see it (a key allowed on every namespace)."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from fastapi import FastAPI

from sessionary.runs.service import RUNS_LEASE_LAPSED
from tests.servers import eventually
from tests.test_check_features import running_run
from tests.web.conftest import ADMIN
from tests.web.test_console import ORIGIN, csrf_of, page, sign_in
from tests.web.test_health import JOBS, JOBS_LATE, app, client

__all__ = ["app", "client"]  # the service with every job running, from tests/web/test_health.py


def rows(text: str, table: str) -> dict[str, list[str]]:
    """A table of the page by its rows' data-name: each row's cells as text."""
    body = re.search(rf'<table id="{table}">(.*?)</table>', text, re.DOTALL)
    assert body is not None, table
    found = {}
    for name, row in re.findall(r'<tr data-name="([^"]+)">(.*?)</tr>', body.group(1), re.DOTALL):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.DOTALL)
        found[name] = [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in cells]
    return found


async def test_the_page_shows_what_v1_health_says(client: httpx.AsyncClient) -> None:
    async def every_job_ran() -> bool:
        body = (await client.get("/v1/health", headers=ADMIN)).json()
        return all(job["runs"] >= 1 for job in body["jobs"])

    await eventually(every_job_ran, within=10, what=JOBS_LATE)
    await sign_in(client)
    text = (await page(client, "/console/health")).text
    api = (await client.get("/v1/health", headers=ADMIN)).json()
    assert 'data-stat="ready" data-value="true"' in text
    assert f"<code>{api['store']}</code>" in text
    jobs = rows(text, "jobs")
    assert list(jobs) == JOBS == [job["name"] for job in api["jobs"]]
    for job in api["jobs"]:
        _, _, _, result, runs, failures, error = jobs[job["name"]]
        assert result == "ok"
        # the jobs run on (every 20 ms) between the page and the API's answer
        assert 1 <= int(runs) <= job["runs"]
        assert (int(failures), error) == (job["failures"], "")
    outages = rows(text, "outages")
    assert list(outages) == [outage["name"] for outage in api["outages"]]
    assert all(cells[1] == "up" for cells in outages.values())


async def test_running_the_check_shows_the_findings_of_v1_check(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    run_id = await running_run(app.state.features.runs)
    await sign_in(client)
    token = csrf_of((await page(client, "/console/health")).text)
    checked = await client.post("/console/health/check", data={"csrf": token}, headers=ORIGIN)
    assert checked.status_code == 200
    api = (await client.post("/v1/check", headers=ADMIN)).json()
    assert [finding["kind"] for finding in api["findings"]] == [RUNS_LEASE_LAPSED]
    assert "1 finding</h3>" in checked.text
    finding = api["findings"][0]
    assert f"<code>{finding['session_id']}</code>" in checked.text
    assert run_id not in checked.text  # an id is shown by its first characters only
    assert finding["detail"] in html.unescape(checked.text)
    assert (await app.state.features.runs.get(run_id)).status == "running"  # nothing repaired


@pytest.mark.parametrize("path", ["/console/health"])
async def test_a_key_not_allowed_everywhere_may_not_look(
    client: httpx.AsyncClient, path: str
) -> None:
    token = await sign_in(client, "web-only-key-0123456789")
    await page(client, path, 403)
    refused = await client.post("/console/health/check", data={"csrf": token}, headers=ORIGIN)
    assert refused.status_code == 403
