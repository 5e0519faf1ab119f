"""The runs API in a real browser (Debian's chromium, headless, driven by Playwright): a page
logs in with the application's session, starts a run and follows it with `EventSource`. On the
application's own origin the stream survives a server restart mid-run and ends with every
event exactly once, and the server's 204 after `end` stops the browser's reconnecting; a page
on an allowed origin does the same with credentials (CORS); a page on any other origin is
refused by the browser, and a request it can send without asking (a "simple" POST) is refused
by the server (CSRF).

The test, not the application, produces each run (through the store both open), so killing
the application leaves the run going."""

from __future__ import annotations

from typing import Any

from sessionary.logs import LogEvent
from sessionary.runs import Runs
from tests.browser.conftest import AppServer, PageServer, Tab

CHUNKS = "n => window.received.filter(e => e.type === 'chunk').length >= n"
CLOSED = "() => window.source.readyState === EventSource.CLOSED"


async def stored(runs: Runs, run_id: str) -> list[dict[str, Any]]:
    """The run's event log as the store has it (the run has ended, so this ends), in the
    shape the page records each event it receives."""
    return [
        {"id": str(event.cursor), "type": event.type, "data": event.data}
        async for event in runs.events(run_id)
        if isinstance(event, LogEvent)
    ]


async def log_in(tab: Tab, app: AppServer, username: str) -> None:
    """Log in on the application's own page: the session cookie is the browser's from then."""
    await tab.page.goto(f"{app.origin}/")
    assert await tab.page.evaluate("name => login(name)", username) == {"subject": username}


async def start_and_follow(tab: Tab) -> tuple[str, str]:
    """The page starts a run of a new conversation and follows it; their ids."""
    started = await tab.page.evaluate("startRun()")
    assert started["status"] == "queued"
    conversation_id, run_id = started["conversationId"], started["runId"]
    await tab.page.evaluate("([c, r]) => follow(c, r)", [conversation_id, run_id])
    return conversation_id, run_id


async def test_a_page_follows_a_run_across_a_server_restart(
    app: AppServer, tab: Tab, runs: Runs
) -> None:
    await log_in(tab, app, "alice")
    _, run_id = await start_and_follow(tab)

    async with runs.producer(run_id, worker="test") as producer:
        for n in range(3):
            await producer.emit("chunk", {"n": n})
        await tab.until(CHUNKS, 3)

        await app.kill()  # mid-stream: the run goes on, produced here
        # the stream cut, then a reconnect refused: the browser keeps trying while it is down
        await tab.until("() => window.errors >= 2")
        for n in range(3, 6):
            await producer.emit("chunk", {"n": n})  # while no server is there to send them
        await app.start()  # the same port: EventSource reconnects with Last-Event-ID
        await tab.until(CHUNKS, 6)

        for n in range(6, 9):
            await producer.emit("chunk", {"n": n})
        await producer.complete({"chunks": 9})

    # no close() in the page: after `end` it reconnects once, is answered 204, and stops
    await tab.until(CLOSED)
    received = await tab.page.evaluate("window.received")
    assert received == await stored(runs, run_id)  # every event exactly once, in order
    assert [e["data"]["n"] for e in received if e["type"] == "chunk"] == list(range(9))
    assert received[-1]["type"] == "end"
    assert await tab.page.evaluate("window.opened") == 2  # before and after the restart
    # the stream, the stream after the restart, the 204; a closed EventSource never retries
    assert tab.of("events") == [200, 200, 204]


async def test_a_page_on_an_allowed_origin_follows_a_run_with_credentials(
    app: AppServer, tab: Tab, runs: Runs, allowed_origin: PageServer
) -> None:
    await log_in(tab, app, "bob")
    await tab.page.goto(allowed_origin.page_for(app.origin))
    assert await tab.page.evaluate("location.origin") == allowed_origin.origin != app.origin

    # its credentials are what authenticate it: without the cookie, a 401 it may read
    omitted = await tab.page.evaluate(
        "attempt('POST', '/api/v1/conversations', {credentials: 'omit'})"
    )
    assert omitted == {"status": 401}

    conversation_id, run_id = await start_and_follow(tab)
    assert (await runs.get(run_id, "bob")).conversation_id == conversation_id
    async with runs.producer(run_id, worker="test") as producer:
        for n in range(3):
            await producer.emit("chunk", {"n": n})
        await producer.complete({"chunks": 3})

    await tab.until(CLOSED)
    received = await tab.page.evaluate("window.received")
    assert received == await stored(runs, run_id)
    assert received[-1]["type"] == "end"
    assert tab.of("events") == [200, 204]


async def test_a_page_on_another_origin_is_refused(
    app: AppServer, tab: Tab, runs: Runs, foreign_origin: PageServer
) -> None:
    await log_in(tab, app, "carol")  # the cookie is there: the origin is what is refused
    conversation = await runs.create_conversation("carol")
    finished = await runs.start((await runs.create_conversation("carol")).id, "carol")
    async with runs.producer(finished.id, worker="test") as producer:
        await producer.emit("chunk", {"n": 0})
    await tab.page.goto(foreign_origin.page_for(app.origin))

    # a POST the browser sends without a preflight reaches the server, which refuses it
    # (CSRF: the cookie came from a page of another origin); the page may not read the answer
    refused = await tab.page.evaluate("attempt('POST', '/api/v1/conversations')")
    assert refused == {"error": "TypeError"}
    start = f"/api/v1/conversations/{conversation.id}/runs"
    simple = await tab.page.evaluate("path => attempt('POST', path)", start)  # no body
    assert simple == {"error": "TypeError"}
    # a JSON POST needs a preflight, which gets no CORS answer: the browser never sends it
    preflighted = await tab.page.evaluate(
        "path => attempt('POST', path, {headers: {'Content-Type': 'application/json'},"
        " body: '{}'})",
        start,
    )
    assert preflighted == {"error": "TypeError"}
    assert await runs.latest(conversation.id, "carol") is None  # no run was started
    assert len(await runs.conversations.list_subject("carol")) == 2  # the test's own two

    # the events of a run of the user's: the browser keeps them from the page, and gives up
    await tab.page.evaluate("([c, r]) => follow(c, r)", [finished.conversation_id, finished.id])
    await tab.until(CLOSED)
    assert await tab.page.evaluate("window.received") == []
    assert await tab.page.evaluate("window.opened") == 0
