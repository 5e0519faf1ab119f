"""A 500, whatever its cause, is a JSON body on a connection that stays usable: the service on a
real uvicorn server, a raw keep-alive client; and a 500 never hides a write already done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import orjson
import pytest
import uvicorn
from fastapi import BackgroundTasks, FastAPI
from starlette.responses import Response, StreamingResponse

from sessionary import ManualClock, connect
from sessionary.http.handlers import install_error_handlers
from sessionary.web import CurrentSession, SessionMiddleware
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.servers import free_port
from tests.service import serving
from tests.web.conftest import API_KEY, client_for


class Boom(Exception):
    pass


def crashing_app() -> FastAPI:
    app = create_app(
        Settings(store="memory://", api_keys=[API_KEY], reaper={"enabled": False}),
        clock=ManualClock(),
    )

    @app.get("/crash")
    async def crash() -> Response:
        raise Boom("a bug in a handler")

    @app.get("/crash-after")
    async def crash_after(tasks: BackgroundTasks) -> Response:
        def fail() -> None:
            raise Boom("a bug in a background task, after the response went out")

        tasks.add_task(fail)
        return Response(b'{"ok":true}', media_type="application/json")

    @app.get("/crash-midway")
    async def crash_midway() -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"part one"
            raise Boom("a bug halfway through a streamed body")

        return StreamingResponse(body())

    return app


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on an open keep-alive connection, and its whole response."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readexactly(2)
    return int(status_line.split()[1]), headers, body


def on_a_port(app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="warning"
    )


async def test_a_500_is_json_and_the_keep_alive_connection_stays_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On main, uvicorn closed the connection after every 500: Starlette answers, then raises
    again for the server to log, and uvicorn closes a connection whose app raised."""
    async with serving(on_a_port(crashing_app())) as base:
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for path in ("/crash", "/crash-after", "/crash", "/healthz"):
                with caplog.at_level(logging.ERROR):
                    status, headers, body = await exchange(reader, writer, path)
                if path == "/crash":
                    assert status == 500
                    assert headers["content-type"] == "application/json"
                    assert orjson.loads(body)["error"] == "internal_error"
                else:
                    assert status == 200, body
                assert headers.get("connection") != "close"
            assert not reader.at_eof()
        finally:
            writer.close()
            await writer.wait_closed()
    crashes = [r for r in caplog.records if r.exc_info and r.exc_info[0] is Boom]
    assert len(crashes) == 3  # each logged once, not once more by the server


async def test_a_body_cut_off_halfway_closes_the_connection() -> None:
    """The one case where the connection cannot go on: the head and part of a body went
    out. The client sees the connection end, never a hang."""
    async with serving(on_a_port(crashing_app())) as base:
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /crash-midway HTTP/1.1\r\nHost: test\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(5):
                received = await reader.read()  # until the server closes
            assert received.startswith(b"HTTP/1.1 200")
            assert b"part one" in received
        finally:
            writer.close()
            await writer.wait_closed()


async def test_a_crash_after_a_rotation_still_tells_the_client_its_new_id(store_url: str) -> None:
    """A handler rotated the session (the old id stopped working at once), then crashed: the
    500 carries the new id, so the client keeps its session. Its other changes are not
    written: the request failed."""
    store = await connect(store_url, clock=ManualClock())
    app = FastAPI()
    app.add_middleware(SessionMiddleware, store=store, namespace="web")
    install_error_handlers(app)

    @app.post("/start")
    async def start(session: CurrentSession) -> dict[str, str]:
        session["user"] = "anonymous"
        return {}

    @app.post("/login")
    async def login(session: CurrentSession) -> dict[str, str]:
        await session.rotate(subject="alice")
        session["user"] = "alice"
        raise Boom("a bug after the login")

    @app.get("/whoami")
    async def whoami(session: CurrentSession) -> dict[str, object]:
        return {"subject": session.subject, "user": session.get("user")}

    try:
        async with client_for(app) as client:
            await client.post("/start")
            old = client.cookies["__Host-session"]
            crashed = await client.post("/login")
            assert crashed.status_code == 500
            assert crashed.json()["error"] == "internal_error"
            new = client.cookies["__Host-session"]
            assert new != old
            me = await client.get("/whoami")
            assert me.json() == {"subject": "alice", "user": "anonymous"}
            web = store.namespace(
                "web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
            )
            assert await web.get(old) is None
    finally:
        await store.close()
