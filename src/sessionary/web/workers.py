"""`sessionary serve --workers N`: N serving processes on one port, under one supervisor.

The supervisor (the process the operator started) binds the port itself, so a port in use is
one line before anything starts: N listening sockets on it with SO_REUSEPORT, one per worker,
each handed to a fresh `sessionary serve` process that serves it (`--listen-fd`). The kernel
spreads new connections evenly over the sockets. One socket shared by every worker would not:
whichever wakes first accepts everything waiting (uvloop accepts until the backlog is empty),
so a burst of keep-alive connections can land on one worker and stay there (measured: 16 wrk
connections, one worker busy, the other idle). The supervisor keeps every socket open, so the
connections waiting on the socket of a worker that died stay in its backlog for its
replacement, not reset. (Another process of the same user could join the port with
SO_REUSEPORT too and take a share of the connections: run the service as a user of its own.)
Workers are started afresh (not forked from the supervisor) because each must import
prometheus_client after `PROMETHEUS_MULTIPROC_DIR` is set, and must open its own store
connections: nothing of the supervisor's is shared but the sockets.

Each worker runs the whole application, its background jobs included (the reapers, the
analytics drainer and vacuum, the run lease watcher, the in-process runs worker): they are
safe with several processes on one store, as with several `sessionary serve` behind a
balancer. Metrics are summed over the workers through prometheus_client's multiprocess mode
(`sessionary.http.metrics`): when the operator did not set `PROMETHEUS_MULTIPROC_DIR`, the
supervisor makes a temporary directory for its workers and removes it when it exits.

The first worker starts alone: a startup that fails (a store that does not answer, a sink
that does not open) is its one line, and the supervisor exits with its status. Then the
others start, and once all serve the supervisor says so. A worker that dies later is logged
and replaced (a replacement that dies at once waits a little longer each time, up to
`MAX_BACKOFF`). SIGTERM or SIGINT stop every worker gracefully (each finishes its requests and
closes its store), then the supervisor exits as one process would: by SIGTERM, or with status
0 after Ctrl-C. A worker whose supervisor died stops itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

from sessionary.http.metrics import MULTIPROCESS_DIR

log = logging.getLogger("sessionary.workers")

#: the longest a replacement of a worker that keeps dying waits before it starts, in seconds
MAX_BACKOFF = 30.0
#: a worker that served at least this long before it died is replaced at once
STEADY = 10.0
_READY = b"r"


def cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(setting: int | Literal["auto"]) -> int:
    """How many serving processes the `workers` setting asks for."""
    return cores() if setting == "auto" else setting


def as_worker(ready_fd: int) -> Callable[[], None]:
    """For a worker: what tells the supervisor it serves (the `started` callback of
    `sessionary.web.server.serve`). Meanwhile it watches the channel: once the supervisor is
    gone (the channel's other end closed), the worker stops itself, as on SIGTERM."""
    channel = socket.socket(fileno=ready_fd)

    def watch() -> None:
        with contextlib.suppress(OSError):
            while channel.recv(64):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sessionary-supervisor-watch", daemon=True).start()
    return lambda: channel.sendall(_READY)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class _Worker:
    """One serving process and the supervisor's end of its channel."""

    def __init__(self, slot: int, process: subprocess.Popen[bytes], channel: socket.socket):
        self.slot = slot
        self.process = process
        self.channel = channel
        self.ready = False
        self.since = time.monotonic()


class Supervisor:
    """Runs a worker on each of `sockets` until a signal stops them (see the module
    docstring). `command(listen_fd, ready_fd)` is a worker's command line; `started` is
    called once all of them serve."""

    def __init__(
        self,
        sockets: list[socket.socket],
        command: Callable[[int, int], list[str]],
        started: Callable[[], None],
    ) -> None:
        self.sockets = sockets
        self.count = len(sockets)
        self.command = command
        self.started = started
        self.workers: dict[int, _Worker] = {}  # by slot
        self.backoff: dict[int, float] = {}  # by slot: the wait before its next replacement
        self.due: dict[int, float] = {}  # by slot: when a replacement starts
        self.stopping: int | None = None  # the signal that stops the service
        self.selector = selectors.DefaultSelector()
        self.spread = False  # the first worker served: the others were started
        self.announced = False  # `started` was called

    def run(self) -> int:
        """Supervise until stopped, once every worker is gone; the exit status. After
        SIGTERM, `stopping` says so: the caller, done cleaning up, ends by it as `sessionary
        serve` alone does (`signal.raise_signal`)."""
        with self._signals():
            return self._supervise()

    def _supervise(self) -> int:
        self._start(0)
        while self.workers or self.due:
            if self.stopping is None and not self.announced and self._all_ready():
                self.announced = True
                self.started()
            timeout = None
            if self.due and self.stopping is None:
                timeout = max(0.0, min(self.due.values()) - time.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    self._signalled(key.fileobj)  # type: ignore[arg-type]
                else:
                    status = self._heard(key.data)
                    if status is not None:
                        return status
            for slot, when in list(self.due.items()):
                if self.stopping is None and when <= time.monotonic():
                    del self.due[slot]
                    self._start(slot)
            if self.stopping is not None:
                self.due.clear()
        return 0

    def _all_ready(self) -> bool:
        return len(self.workers) == self.count and all(w.ready for w in self.workers.values())

    def _start(self, slot: int) -> None:
        mine, theirs = socket.socketpair()
        listening = self.sockets[slot].fileno()
        with theirs:
            process = subprocess.Popen(  # noqa: S603 (our own command line)
                self.command(listening, theirs.fileno()),
                pass_fds=(listening, theirs.fileno()),
            )
        worker = _Worker(slot, process, mine)
        self.workers[slot] = worker
        self.selector.register(mine, selectors.EVENT_READ, worker)

    def _signalled(self, wakeup: socket.socket) -> None:
        for number in wakeup.recv(64):
            if number in (signal.SIGTERM, signal.SIGINT) and self.stopping is None:
                self.stopping = number
                for worker in self.workers.values():
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.send_signal(signal.SIGTERM)

    def _heard(self, worker: _Worker) -> int | None:
        """A worker said it serves, or its channel closed: it ended. The supervisor's exit
        status when that ends it (the first worker did not start)."""
        try:
            said = worker.channel.recv(64)
        except ConnectionResetError:
            said = b""
        if said:
            worker.ready = True
            if not self.spread:  # the first serves: the settings and the store work
                self.spread = True
                for slot in range(1, self.count):
                    self._start(slot)
            return None
        self.selector.unregister(worker.channel)
        worker.channel.close()
        returncode = worker.process.wait()
        del self.workers[worker.slot]
        _forget(worker.process.pid)
        if self.stopping is not None:
            return None
        if not self.spread:
            return returncode if returncode > 0 else 1  # it said why, in its one line
        self._replace(worker, returncode)
        return None

    def _replace(self, worker: _Worker, returncode: int) -> None:
        served = time.monotonic() - worker.since
        if served >= STEADY:
            self.backoff.pop(worker.slot, None)
        wait = self.backoff.get(worker.slot, 0.0)
        self.backoff[worker.slot] = min(MAX_BACKOFF, max(wait * 2, 0.5))
        log.warning(
            "worker %d (pid %d) %s after %.1f s: starting another%s",
            worker.slot + 1,
            worker.process.pid,
            describe_exit(returncode),
            served,
            f" in {wait:.1f} s" if wait else "",
        )
        self.due[worker.slot] = time.monotonic() + wait

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT wake the selector (their number on a socket) instead of
        interrupting; restored afterwards, the workers stopped if anything went wrong."""
        wakeup, wakeup_writer = socket.socketpair()
        wakeup.setblocking(False)
        wakeup_writer.setblocking(False)
        self.selector.register(wakeup, selectors.EVENT_READ, None)
        previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        previous_fd = signal.set_wakeup_fd(wakeup_writer.fileno())
        for number in previous:
            signal.signal(number, lambda *_: None)
        try:
            yield
        finally:
            for worker in self.workers.values():  # only after an error: else none is left
                worker.process.kill()
                worker.process.wait()
            signal.set_wakeup_fd(previous_fd)
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.selector.close()
            wakeup.close()
            wakeup_writer.close()


def _forget(pid: int) -> None:
    """A worker's live gauges stop counting once it ended, however it ended (one that died
    outright never removed its files)."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def shared_metrics() -> Iterator[str | None]:
    """The directory the workers share their metrics through: the operator's
    `PROMETHEUS_MULTIPROC_DIR`, or else a temporary one, set for them and removed at the end.
    Yields the temporary one (None: the operator's)."""
    if os.environ.get(MULTIPROCESS_DIR):
        yield None
        return
    directory = tempfile.mkdtemp(prefix="sessionary-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield directory
    finally:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(directory, ignore_errors=True)
