"""The runs API for browsers, on every backend: the application's session cookie as
credentials (alone and after Bearer keys), CORS for an allow-list of origins (preflights,
headers on every answer, the event stream included), the CSRF check of cookie-authenticated
POSTs, 204 for a resume past the end, the service's settings, and the lease bound: a
follower of a run whose worker died hears its `end` within 1.25 x the lease, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock, Store
from sessionary.http.handlers import install_error_handlers
from sessionary.logs import LogEvent, LogReset
from sessionary.runs import Runs, RunsSettings
from sessionary.runs.http import (
    ApiKeyAuthenticator,
    FirstOf,
    SessionAuthenticator,
    runs_router,
)
from sessionary.runs.service import _lease_id
from sessionary.store import Namespace
from sessionary.web import CurrentSession, SessionMiddleware
from sessionary.web.settings import SettingsError
from tests.service import events_in
from tests.web.conftest import ADMIN, client_for

ALICE_KEY = "alice-key-0123456789"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
USERS = [{"key": ALICE_KEY, "subject": "alice"}]
BASE = "/api/v1/conversations"
OWN = "https://testserver"  # the origin of `client_for`'s requests
APP = "https://app.example"  # a frontend of another origin, allowed
EVIL = "https://evil.example"  # any other origin
SAME_ORIGIN = {"Origin": OWN}


@pytest.fixture
def runs(store: Store) -> Runs:
    return Runs(store, RunsSettings(users=USERS, lease_ttl="30s"))


@pytest.fixture
def web(store: Store) -> Namespace:
    return store.namespace("web", idle_ttl=timedelta(minutes=30))


def browser_app(runs: Runs, web: Namespace) -> FastAPI:
    """An application with sessionary's session middleware, a login, and the runs API
    taking Bearer keys or the session cookie, open to pages of `APP` too."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/login/{user}")
    async def login(user: str, session: CurrentSession) -> dict[str, Any]:
        await session.rotate(subject=user)
        return {}

    @app.post("/visit")
    async def visit(session: CurrentSession) -> dict[str, Any]:
        session["visited"] = True  # a session without a subject: not logged in
        return {}

    authenticate = FirstOf(ApiKeyAuthenticator(runs.settings.users), SessionAuthenticator(web))
    app.include_router(runs_router(lambda: runs, authenticate, origins=[APP]))
    app.add_middleware(SessionMiddleware, namespace=web)
    return app


@pytest_asyncio.fixture
async def browser(runs: Runs, web: Namespace) -> AsyncIterator[httpx.AsyncClient]:
    """A browser of the application, logged in as alice (its cookie jar holds the session)."""
    async with client_for(browser_app(runs, web)) as client:
        logged_in = await client.post("/login/alice")
        assert logged_in.status_code == 200, logged_in.text
        assert "__Host-session" in client.cookies
        yield client


async def conversation_of(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    made = await client.post(BASE, headers=headers)
    assert made.status_code == 201, made.text
    return str(made.json()["conversationId"])


# -- the session cookie ----------------------------------------------------------------------


async def test_the_session_cookie_authenticates_as_its_subject(
    browser: httpx.AsyncClient, runs: Runs, web: Namespace, clock: ManualClock
) -> None:
    conversation = await conversation_of(browser, SAME_ORIGIN)
    assert (await runs.conversation(conversation)).subject == "alice"
    started = await browser.post(f"{BASE}/{conversation}/runs", headers=SAME_ORIGIN)
    assert started.status_code == 201, started.text
    # the same conversation through alice's Bearer key: one user, two kinds of credentials
    read = await browser.get(f"{BASE}/{conversation}/runs/{started.json()['runId']}")
    assert read.status_code == 200
    keyed = await browser.get(f"{BASE}/{conversation}/active-session", headers=ALICE)
    assert keyed.json()["sessionId"] == started.json()["runId"]
    # a request slides the session's idle expiry, as the middleware's requests do
    session_id = browser.cookies["__Host-session"]
    before = await web.get(session_id)
    assert before is not None
    clock.advance(timedelta(minutes=20))
    assert (await browser.get(f"{BASE}/{conversation}/task-status")).status_code == 200
    after = await web.get(session_id)
    assert after is not None
    assert after.expires_at > before.expires_at


async def test_no_subject_no_session_or_a_bad_id_is_401_and_creates_nothing(
    runs: Runs, web: Namespace
) -> None:
    url = f"{BASE}/conv_{'A' * 43}/active-session"
    app = browser_app(runs, web)
    async with client_for(app) as client:
        assert (await client.post("/visit")).status_code == 200  # a session, no subject
        anonymous = await client.get(url)
        assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    assert await web.count() == 1
    for bad in ("not-an-id", "A" * 43, "web_" + "A" * 43, ""):
        async with client_for(app) as client:
            refused = await client.get(url, headers={"Cookie": f"__Host-session={bad}"})
            assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized"), bad
    assert await web.count() == 1  # the authenticator never creates a session


async def test_a_logged_out_session_no_longer_authenticates(
    browser: httpx.AsyncClient, web: Namespace
) -> None:
    conversation = await conversation_of(browser, SAME_ORIGIN)
    await web.delete(browser.cookies["__Host-session"])
    gone = await browser.get(f"{BASE}/{conversation}/active-session")
    assert gone.status_code == 401


async def test_the_session_namespace_must_exist(make_app: Callable[..., FastAPI]) -> None:
    with pytest.raises(SettingsError, match="session_namespace"):
        make_app(runs={"users": USERS, "session_namespace": "nowhere"})


async def test_the_service_takes_the_cookie_of_its_session_namespace(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(
        runs={"users": USERS, "session_namespace": "web", "cors_origins": [APP]},
    )
    async with app.router.lifespan_context(app), client_for(app) as client:
        runs = app.state.features.runs
        assert isinstance(runs, Runs)
        # the application logs carol in through the admin API, and sets its cookie
        made = await client.post(
            "/v1/namespaces/web/sessions", headers=ADMIN, json={"subject": "carol"}
        )
        assert made.status_code == 201, made.text
        client.cookies.set("session", made.json()["id"])
        made = await client.post(BASE, headers={"Origin": APP})
        assert made.status_code == 201, made.text
        assert made.headers["access-control-allow-origin"] == APP
        assert (await runs.conversation(made.json()["conversationId"])).subject == "carol"
        forged = await client.post(BASE, headers={"Origin": EVIL})
        assert (forged.status_code, forged.json()["error"]) == (403, "csrf_rejected")
        assert (await client.post(BASE, headers=ALICE)).status_code == 201


# -- CORS -------------------------------------------------------------------------------------


async def test_preflights_on_every_route_answer_allowed_origins_only(
    browser: httpx.AsyncClient,
) -> None:
    paths = {
        BASE: "POST",
        f"{BASE}/c/active-session": "GET",
        f"{BASE}/c/task-status": "GET",
        f"{BASE}/c/runs": "POST",
        f"{BASE}/c/runs/r": "GET",
        f"{BASE}/c/runs/r/events": "GET",
        f"{BASE}/c/runs/r/cancel": "POST",
        f"{BASE}/c/stop": "POST",
    }
    for path, method in paths.items():
        asking = {"Access-Control-Request-Method": method}
        allowed = await browser.options(path, headers={"Origin": APP, **asking})
        assert allowed.status_code == 204, path
        assert allowed.headers["access-control-allow-origin"] == APP
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert allowed.headers["access-control-allow-methods"] == method
        assert allowed.headers["allow"] == method
        for header in ("Content-Type", "Last-Event-ID", "Authorization"):
            assert header in allowed.headers["access-control-allow-headers"]
        assert "Origin" in allowed.headers["vary"]
        other = await browser.options(path, headers={"Origin": EVIL, **asking})
        assert not any(h.startswith("access-control-") for h in other.headers), path


async def test_responses_to_allowed_origins_carry_cors_headers_stream_and_errors_included(
    browser: httpx.AsyncClient, runs: Runs
) -> None:
    conversation = await conversation_of(browser, {"Origin": APP})
    run = (await browser.post(f"{BASE}/{conversation}/runs", headers={"Origin": APP})).json()
    async with runs.producer(run["runId"]) as producer:
        await producer.emit("chunk", {"text": "hi"})
    events_url = f"{BASE}/{conversation}/runs/{run['runId']}/events"
    answers = {
        "stream": await browser.get(events_url, headers={"Origin": APP}),
        "error": await browser.get(f"{BASE}/{conversation}/runs/nope", headers={"Origin": APP}),
        "unknown": await browser.get(
            f"{BASE}/conv_{'A' * 43}/active-session", headers={"Origin": APP}
        ),
    }
    assert answers["stream"].status_code == 200
    assert [e["event"] for e in events_in(answers["stream"].text)][-2:] == ["chunk", "end"]
    assert answers["error"].status_code == 400
    assert answers["unknown"].status_code == 404
    for name, answer in answers.items():
        assert answer.headers["access-control-allow-origin"] == APP, name
        assert answer.headers["access-control-allow-credentials"] == "true", name
        assert "Origin" in answer.headers["vary"], name
    foreign = await browser.get(events_url, headers={"Origin": EVIL})
    assert "access-control-allow-origin" not in foreign.headers
    assert "Origin" in foreign.headers["vary"]  # a cache keeps the two answers apart


def test_a_wildcard_or_a_non_origin_is_refused(runs: Runs) -> None:
    keys = ApiKeyAuthenticator(runs.settings.users)
    for wrong in ("*", "app.example", "https://app.example/path", "ftp://app.example"):
        with pytest.raises(ValueError):
            runs_router(lambda: runs, keys, origins=[wrong])
    with pytest.raises(ValueError, match="'\\*'"):
        RunsSettings(cors_origins=["*"])
    assert RunsSettings(cors_origins=["HTTPS://App.Example"]).cors_origins == [APP]


# -- CSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({"Origin": OWN}, True),
        ({"Origin": APP}, True),
        ({"Origin": EVIL}, False),
        ({"Origin": "null"}, False),
        ({"Origin": "https://testserver.evil.example"}, False),
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({}, False),
        ({"Origin": EVIL, "Sec-Fetch-Site": "same-origin"}, False),  # Origin decides
    ],
)
async def test_a_cookie_authenticated_post_must_come_from_an_allowed_page(
    browser: httpx.AsyncClient, runs: Runs, headers: dict[str, str], accepted: bool
) -> None:
    conversation = await conversation_of(browser, SAME_ORIGIN)
    run = (await browser.post(f"{BASE}/{conversation}/runs", headers=SAME_ORIGIN)).json()
    posts = [
        (BASE, 201),
        (f"{BASE}/{conversation}/runs/{run['runId']}/cancel", 202),
    ]
    for url, status in posts:
        answer = await browser.post(url, headers=headers)
        if accepted:
            assert answer.status_code == status, (url, answer.text)
        else:
            assert (answer.status_code, answer.json()["error"]) == (403, "csrf_rejected"), url
    # refused, nothing happened: the run is still queued
    expected = "cancelled" if accepted else "queued"
    assert (await runs.get(run["runId"])).status == expected
    # reading needs no proof: a GET changes nothing
    assert (await browser.get(f"{BASE}/{conversation}/task-status")).status_code == 200


async def test_bearer_requests_need_no_origin_proof(browser: httpx.AsyncClient, runs: Runs) -> None:
    conversation = await conversation_of(browser, ALICE)
    for headers in ({}, {"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        started = await browser.post(
            f"{BASE}/{conversation}/runs",
            headers={**ALICE, **headers},
            json={"multitask": "interrupt"},
        )
        assert started.status_code == 201, started.text


# -- 204 after the end --------------------------------------------------------------------------


async def test_a_resume_at_or_past_the_end_is_204(browser: httpx.AsyncClient, runs: Runs) -> None:
    conversation = await conversation_of(browser, SAME_ORIGIN)
    run = (await browser.post(f"{BASE}/{conversation}/runs", headers=SAME_ORIGIN)).json()
    url = f"{BASE}/{conversation}/runs/{run['runId']}/events"
    async with runs.producer(run["runId"]) as producer:
        await producer.emit("chunk", "one")
    replay = events_in((await browser.get(url)).text)
    assert [e["event"] for e in replay] == ["status", "status", "chunk", "end"]
    before_end, end = replay[-2]["id"], replay[-1]["id"]
    resumed = await browser.get(url, headers={"Last-Event-ID": before_end})
    assert resumed.status_code == 200
    assert [e["event"] for e in events_in(resumed.text)] == ["end"]
    for headers, params in (({"Last-Event-ID": end}, {}), ({}, {"after": end})):
        done = await browser.get(url, headers={"Origin": APP, **headers}, params=params)
        assert done.status_code == 204, (headers, params)
        assert done.content == b""
        assert done.headers["access-control-allow-origin"] == APP


# -- the lease bound ------------------------------------------------------------------------------


class ClockSleeps:
    """`sleep` for a loop on the test's `ManualClock`: a sleeper wakes once the clock passes
    its deadline. `advance` moves the clock and returns once every sleeper it woke has done
    its next pass and gone back to sleep (and says how many it woke): the test sees the
    loops' work at each instant."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.asleep: list[tuple[int, asyncio.Future[None]]] = []
        self.changed = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.asleep.append((self.clock.now_ms() + round(seconds * 1000), woken))
        self.changed.set()
        await woken

    async def settled(self, sleepers: int) -> None:
        async with asyncio.timeout(10):
            while len(self.asleep) < sleepers:
                self.changed.clear()
                await self.changed.wait()

    async def advance(self, by: timedelta) -> int:
        sleepers = len(self.asleep)
        now = self.clock.advance(by)
        due = [(at, woken) for at, woken in self.asleep if at <= now]
        self.asleep = [(at, woken) for at, woken in self.asleep if at > now]
        for _, woken in due:
            woken.set_result(None)
        await self.settled(sleepers)
        return len(due)


async def follow_to_the_end(runs: Runs, run_id: str) -> list[LogEvent]:
    return [e async for e in runs.events(run_id) if not isinstance(e, LogReset)]


async def dead_worker(runs: Runs, conversation_owner: str = "alice") -> str:
    """A running run whose worker died: its lease is no longer renewed."""
    conversation = await runs.create_conversation(conversation_owner)
    run = await runs.start(conversation.id, conversation_owner)
    producer = runs.producer(run.id, worker="doomed")
    await producer.__aenter__()
    await producer.emit("chunk", "last words")
    await producer._stop_tasks()  # the worker process dies: nobody renews the lease
    return run.id


async def test_a_dead_workers_followers_hear_the_end_within_a_quarter_lease_after_it_lapses(
    runs: Runs, clock: ManualClock
) -> None:
    lease_ms = runs.settings.lease_ttl // timedelta(milliseconds=1)
    bound_ms = runs.lease_bound // timedelta(milliseconds=1)
    assert bound_ms == lease_ms * 5 // 4
    sleeps = ClockSleeps(clock)
    watcher = asyncio.create_task(runs.watch_leases(sleeps.sleep))  # the service's
    try:
        await sleeps.settled(1)  # it swept once, and sleeps a quarter lease
        run_id = await dead_worker(runs)
        followers = [asyncio.create_task(follow_to_the_end(runs, run_id)) for _ in range(3)]
        step = timedelta(milliseconds=500)
        # the worst case: the last renewal lands just after a sweep, so the lease lapses
        # just after a later one, and only the sweep after that finds it
        while not await sleeps.advance(step):
            pass
        await sleeps.advance(step)
        assert await runs.leases.touch(_lease_id(run_id)) is not None  # its last renewal
        renewed_at = clock.now_ms()
        ended_at = None
        while clock.now_ms() - renewed_at < 2 * lease_ms:
            await sleeps.advance(step)
            if (await runs.get(run_id)).status != "running":
                ended_at = clock.now_ms()
                break
        heard = await asyncio.wait_for(asyncio.gather(*followers), 10)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert ended_at is not None
    assert lease_ms < ended_at - renewed_at <= bound_ms  # the bound holds, tightly
    assert ended_at - renewed_at > lease_ms + bound_ms // 10  # the case was the worst one
    failed = await runs.get(run_id)
    assert (failed.status, failed.error) == ("error", "the worker stopped renewing its lease")
    for events in heard:
        assert [e.type for e in events][-2:] == ["chunk", "end"]
        assert events[-1].data == {"status": "error", "error": failed.error}


async def test_racing_sweeps_and_reapers_append_one_end_heard_once_by_each_follower(
    runs: Runs, clock: ManualClock
) -> None:
    run_id = await dead_worker(runs)
    followers = [asyncio.create_task(follow_to_the_end(runs, run_id)) for _ in range(3)]
    clock.advance(runs.settings.lease_ttl)  # lapsed: whoever sweeps first fails the run
    sleeps = ClockSleeps(clock)
    watchers = [asyncio.create_task(runs.watch_leases(sleeps.sleep)) for _ in range(3)]
    try:
        await asyncio.gather(runs.reap(), runs.reap(), runs.leases.reap(), sleeps.settled(3))
        heard = await asyncio.wait_for(asyncio.gather(*followers), 10)
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    for events in [*heard, await follow_to_the_end(runs, run_id)]:
        assert [e.type for e in events].count("end") == 1
        assert events[-1].type == "end"
        seqs = [e.cursor.seq for e in events]
        assert seqs == sorted(set(seqs))  # each event once, in order


async def test_the_service_watches_the_leases_while_its_reaper_runs(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(runs={"users": USERS}, reaper={"enabled": True})
    async with app.router.lifespan_context(app):
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert {"sessionary-reaper", "sessionary-run-leases"} <= names
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "sessionary-run-leases" not in names
