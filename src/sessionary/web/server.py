"""How `sessionary serve` runs the app: uvicorn, with bounds on request heads and send buffers.

uvicorn reads a request's line and headers before the application sees anything, and its
httptools protocol keeps whatever arrives until the head ends: a client sending an endless
header makes the process hold all of it. `LimitedHttpTools` counts a head's bytes as they
arrive and answers 431 Request Header Fields Too Large (JSON, `{"error": "headers_too_large"}`)
and closes the connection as soon as one header (name and value) passes `max_header_bytes`,
the head passes `max_head_bytes`, or the request has more than `max_headers` headers. So a
connection holds at most `max_head_bytes` of head (plus one network read) before the app runs.

It also sets each connection's kernel send buffer to `send_buffer_bytes` (Linux doubles it),
instead of letting it grow to `tcp_wmem`'s 4 MiB: a client that stops reading then holds that
much of the kernel's memory, and costs the process only that much work, before its writes
wait (see `sessionary.http.sse` for what the process itself holds).

Each request's scope offers `sessionary.http.sse.ABORT_EXTENSION`: an event stream whose
reader stalled past its send timeout drops the connection through it, at once and without an
error in uvicorn's log (it takes the client as gone).

`serve` binds the port first and runs the application's lifespan itself, around uvicorn: a
port in use, or a startup that fails (a bad store URL, a sink that does not open), is an
exception its caller says in one line, before anything says the service started, rather
than uvicorn's traceback and exit status 3.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import orjson
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from sessionary.http.sse import ABORT_EXTENSION
from sessionary.web.log_format import json_log_config
from sessionary.web.settings import Settings


class ConnectionLimits(NamedTuple):
    """The settings of the same names (see `Settings`)."""

    max_header_bytes: int
    max_head_bytes: int
    max_headers: int
    send_buffer_bytes: int  # 0: the kernel's (autotuned, up to tcp_wmem)


class _HeadTooLarge(Exception):
    pass


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads past `limits` (see the module docstring).
    `limited(limits)` makes the class for given limits."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # of the head being read
        self._in_body = False
        self._heads = 0  # heads read on this connection
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.limits.send_buffer_bytes:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.send_buffer_bytes)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_body:
            super().data_received(data)
            return
        room = self.limits.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        heads = self._heads
        self._head_bytes = self.limits.max_head_bytes
        super().data_received(data[:room])
        if self._refused or self.transport.is_closing():
            return
        if self._heads != heads:  # the head ended within the bound: the rest is what follows
            self.data_received(data[room:])
        else:
            self._refuse(f"the request head is over {self.limits.max_head_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self.limits.max_header_bytes:
            self._refuse(f"a header is over {self.limits.max_header_bytes} bytes")
        elif len(self.headers) >= self.limits.max_headers:
            self._refuse(f"a request has at most {self.limits.max_headers} headers")
        if self._refused:
            raise _HeadTooLarge  # stops the parser; uvicorn then calls send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._head_bytes = 0
        self._in_body = True
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:  # a request for the app, not yet run
            self.scope["extensions"] = {ABORT_EXTENSION: {"abort": _aborter(cycle)}}

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the 431 went out already
            super().send_400_response(msg)

    def _refuse(self, message: str) -> None:
        self._refused = True
        body = orjson.dumps({"error": "headers_too_large", "message": message})
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()

    @classmethod
    def limited(cls, limits: ConnectionLimits) -> type[LimitedHttpTools]:
        return type("LimitedHttpTools", (cls,), {"limits": limits})


def _aborter(cycle: RequestResponseCycle) -> Callable[[], None]:
    """What drops the request's connection, unsent output included: the cycle takes the
    client as gone (as uvicorn's `connection_lost` will say), so its app may return early.
    It holds the cycle weakly, since the cycle's scope holds it."""
    ref = weakref.ref(cycle)

    def abort() -> None:
        if (found := ref()) is not None:
            found.disconnected = True
            found.transport.abort()

    return abort


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration `sessionary serve` runs `app` with (`overrides`: more
    uvicorn options, or other values for these)."""
    limits = ConnectionLimits(
        settings.max_header_bytes,
        settings.max_head_bytes,
        settings.max_headers,
        settings.send_buffer_bytes,
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "proxy_headers": False,  # the client IP is resolved against our own trusted proxies
        "server_header": False,
        "http": LimitedHttpTools.limited(limits),
        **overrides,
    }
    if settings.log_format == "json":
        options.setdefault("log_config", json_log_config(settings.log_level))
    return uvicorn.Config(app, **options)


class CannotListen(OSError):
    """The address `serve` was asked to listen on cannot be bound; the message names the fix."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` and listening (so a client connecting meanwhile waits
    in the backlog), as uvicorn would make it; else `CannotListen`."""
    sock = _bound(host, port, reuse_port=False)
    sock.listen(2048)  # uvicorn's default backlog
    return sock


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets listening on `host`:`port` together (SO_REUSEPORT), among which the
    kernel spreads new connections; else `CannotListen`. The port must be free first: the
    SO_REUSEPORT sockets of another service (of the same user) would let these join them."""
    _bound(host, port, reuse_port=False).close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_bound(host, port, reuse_port=True))
            sockets[-1].listen(2048)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(_why_not(exc, host, port)) from None
    sock.set_inheritable(True)
    return sock


def _why_not(error: OSError, host: str, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {port} is in use on {host}: stop what listens there, or serve on another "
            "port with --port (or SESSIONARY_PORT)"
        )
    if error.errno == errno.EACCES:
        return (
            f"port {port} needs privileges this process does not have: serve on a port above "
            "1023 with --port (or SESSIONARY_PORT)"
        )
    return (
        f"cannot listen on {host} port {port} ({error.strerror or error}): set --host to an "
        "address of this machine (127.0.0.1 for it alone, 0.0.0.0 for every interface)"
    )


def base_url(settings: Settings) -> str:
    """Where the service answers, as a browser writes it."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def serve(
    app: FastAPI,
    settings: Settings,
    started: Callable[[], None],
    sock: socket.socket | None = None,
) -> None:
    """Serve `app` as `sessionary serve` does, until SIGTERM or Ctrl-C: bind the port
    (`CannotListen`; or serve `sock`, listening already, as a worker of `serve --workers`
    does), run the app's startup (whatever it raises propagates, and nothing has
    been said yet), call `started`, serve, then run the app's shutdown, on uvicorn's event
    loop (uvloop where installed). uvicorn's signal handling covers the app's startup and
    shutdown too: a signal while the store closes waits for it (and is raised again once
    everything is closed, as uvicorn does: Ctrl-C is a KeyboardInterrupt then)."""
    sock = sock or listening_socket(settings.host, settings.port)
    server = uvicorn.Server(uvicorn_config(app, settings, lifespan="off"))
    with (
        sock,
        server.capture_signals(),
        asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner,
    ):
        runner.run(_serving(app, server, sock, started))


async def _serving(
    app: FastAPI, server: uvicorn.Server, sock: socket.socket, started: Callable[[], None]
) -> None:
    async with app.router.lifespan_context(app):
        started()
        await server.serve(sockets=[sock])
