"""An operator's mistakes, made as an operator makes them (the `sessionary` command in a
process of its own): each is one line on stderr naming the problem and its fix, never a
traceback, with exit status 2. And what `serve` says when it starts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from sessionary.cli.ops import _serving
from sessionary.web.settings import Settings, SettingsError, load_settings
from tests.conftest import REDIS_URL
from tests.servers import free_port
from tests.test_encryption import text_key

#: Redis's own default has 16 databases: 99 is out of range
MISSING_DATABASE = urlsplit(REDIS_URL)._replace(path="/99", query="").geturl()


def sessionary(directory: Path, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """The `sessionary` command run in `directory`, with only `environment`'s SESSIONARY_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONARY_")}
    return subprocess.run(
        [sys.executable, "-m", "sessionary", *args],
        cwd=directory,
        env=env | environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    """The one line the command said on stderr, having exited with `status`."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert (done.returncode, len(lines)) == (status, 1), done.stderr
    return lines[0]


# -- usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("nope",), "Error: No such command 'nope'. (see 'sessionary --help')"),
        (
            ("serve", "--port", "eighty"),
            "Error: Invalid value for '--port': 'eighty' is not a valid integer. "
            "(see 'sessionary serve --help')",
        ),
        (
            ("reap", "--bogus"),
            "Error: No such option '--bogus'. (see 'sessionary reap --help')",
        ),
    ],
)
def test_a_usage_mistake_is_one_line_with_where_help_is(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    assert one_line(sessionary(tmp_path, *args)) == said


# -- settings ---------------------------------------------------------------------------------


def test_a_toml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "sessionary.toml").write_text('port = 8000\nstore = "sqlite:///x.db\n')
    said = one_line(sessionary(tmp_path, "serve", "--config", "sessionary.toml"))
    assert "--config sessionary.toml: line 2, column 24:" in said
    assert "not valid TOML" in said


def test_api_keys_from_the_environment_may_be_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SESSIONARY_API_KEYS", "first-key-0123456789, second-key-0123456789")
    keys = [key.key.get_secret_value() for key in load_settings().api_keys]
    assert keys == ["first-key-0123456789", "second-key-0123456789"]


def test_a_short_api_key_is_one_line_by_its_length_never_its_text(tmp_path: Path) -> None:
    said = one_line(sessionary(tmp_path, "serve", SESSIONARY_API_KEYS="sekrit-42"))
    assert said.startswith("Error: bad settings: api_keys.0.key: this key has 9 characters")
    assert "at least 16" in said
    assert "token_urlsafe" in said  # the fix: how to make one
    assert "sekrit" not in said


@pytest.mark.parametrize(
    ("variable", "value", "where"),
    [
        ("SESSIONARY_API_KEYS", '["sekrit-42"]', "api_keys.0.key"),
        ("SESSIONARY_RUNS__USERS", '[{"key": "sekrit-42", "subject": "a"}]', "runs.users.0.key"),
        (
            "SESSIONARY_ANALYTICS__PROJECTS",
            '{"shop": {"key": "sekrit-42"}}',
            "analytics.projects.shop.key",
        ),
        ("SESSIONARY_ENCRYPTION_KEYS", "sekrit-42", "encryption_keys"),
    ],
)
def test_no_secret_is_ever_echoed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, where: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"{where}: ")
    assert "sekrit" not in str(caught.value)


# -- store URLs -------------------------------------------------------------------------------


@pytest.fixture
def newer_file(tmp_path: Path) -> str:
    """An SQLite store file as a newer sessionary (a later schema version) leaves it."""
    with sqlite3.connect(tmp_path / "newer.db") as db:
        db.execute("PRAGMA user_version = 99")
    return "sqlite:///newer.db"


BAD_URLS = [
    ("foo://x", ["no backend for scheme 'foo'", "sqlite:///path"]),
    ("sqlite://x.db", ["three slashes", "write sqlite:///x.db"]),
    ("localhost:6379", ["has no scheme", "write redis://localhost:6379/0"]),
    ("sqlite:///absent/x.db", ["/absent of the SQLite store does not exist", "create it"]),
    ("newer", ["written by a newer sessionary", "upgrade sessionary"]),
    (MISSING_DATABASE, ["has no such database", "as in redis://"]),
]


@pytest.mark.parametrize(("url", "named"), BAD_URLS)
def test_serve_on_a_bad_store_url_says_so_before_it_says_it_started(
    tmp_path: Path, newer_file: str, url: str, named: list[str]
) -> None:
    url = newer_file if url == "newer" else url
    said = one_line(sessionary(tmp_path, "serve", "--store", url, "--port", str(free_port())))
    for words in named:
        assert words in said


@pytest.mark.parametrize("command", ["reap", "vacuum", "migrate", "rekey", "ping", "demo"])
@pytest.mark.parametrize(("url", "named"), [BAD_URLS[1], BAD_URLS[-1]])
def test_every_command_on_a_bad_store_url_says_so(
    tmp_path: Path, command: str, url: str, named: list[str]
) -> None:
    args = [command, "--store", url]
    if command == "migrate":
        args += ["--from-legacy-playground", REDIS_URL]
    keys = {"SESSIONARY_ENCRYPTION_KEYS": text_key(os.urandom(32))} if command == "rekey" else {}
    said = one_line(sessionary(tmp_path, *args, **keys))
    for words in named:
        assert words in said


@pytest.mark.parametrize("command", ["reap", "vacuum", "ping", "demo"])
def test_a_store_that_does_not_answer_is_one_line_and_status_1(
    tmp_path: Path, command: str
) -> None:
    """Not a mistake (it may answer later): status 1, and the outage log's warning, meant
    for a service riding out an outage, is not said before it."""
    port = free_port()
    said = one_line(sessionary(tmp_path, command, "--store", f"redis://127.0.0.1:{port}/0"), 1)
    assert said.startswith(f"Error: Redis at 127.0.0.1:{port} is unavailable")


# -- serving ----------------------------------------------------------------------------------


def test_a_port_in_use_names_it_and_the_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = one_line(sessionary(tmp_path, "serve", "--store", "memory://", "--port", str(port)))
    assert f"port {port} is in use on 127.0.0.1" in said
    assert "--port" in said


async def test_serve_says_where_it_stores_what_it_serves_and_where_the_docs_are(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONARY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sessionary",
        "serve",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env | {"SESSIONARY_API_KEYS": "an-admin-key-0123456789"},
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    said: list[str] = []
    try:
        while not said or "console" not in said[-1]:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, f"serve ended saying {said}"
            said.append(line.decode().rstrip())
        assert said == [
            f"sessionary: storing in {tmp_path / 'sessionary.db'}",
            f"sessionary: analytics sessions and events in {tmp_path / 'sessionary-analytics.db'}",
            "sessionary: serving admin API (1 key), playground, runs, analytics, reaper on "
            f"http://127.0.0.1:{port}",
            f"sessionary: API docs at http://127.0.0.1:{port}/docs",
            f"sessionary: console at http://127.0.0.1:{port}/console "
            "(sign in with an admin API key)",
        ]
        async with httpx.AsyncClient() as client:  # said once it answers there
            assert (await client.get(f"http://127.0.0.1:{port}/docs")).status_code == 200
            console = await client.get(f"http://127.0.0.1:{port}/console/sign-in")
            assert console.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


def test_serve_says_how_to_open_the_console() -> None:
    without_keys = _serving(Settings())
    assert without_keys.endswith("/console (add an admin API key first)")
    assert "console" not in _serving(Settings(console={"enabled": False}))


def test_serve_never_says_the_stores_password() -> None:
    said = _serving(
        Settings(
            store="redis://app:hunter2-pw@cache.internal:6379/0",
            analytics={"sink": "clickhouse://app:hunter3-pw@olap.internal:8123/analytics"},
        )
    )
    assert "storing in redis://app:***@cache.internal:6379/0\n" in said
    assert "events in clickhouse://app:***@olap.internal:8123/analytics\n" in said
    assert "hunter" not in said
    assert "analytics sessions" not in _serving(Settings(analytics={"enabled": False}))


# -- the other commands -----------------------------------------------------------------------


def test_ping_and_demo_take_a_config(tmp_path: Path) -> None:
    (tmp_path / "sessionary.toml").write_text('store = "sqlite:///configured.db"\n')
    pinged = sessionary(tmp_path, "ping", "--config", "sessionary.toml")
    assert (pinged.returncode, pinged.stdout) == (0, "ok: sqlite:///configured.db\n")
    shown = sessionary(tmp_path, "demo", "--config", "sessionary.toml")
    assert shown.returncode == 0, shown.stderr
    assert "SQLiteBackend('configured.db')" in shown.stdout


def test_reap_and_vacuum_report_to_stderr(tmp_path: Path) -> None:
    for args in (["reap"], ["vacuum"]):
        done = sessionary(tmp_path, *args, "--store", "sqlite:///chores.db")
        assert (done.returncode, done.stdout) == (0, ""), done.stderr
        assert done.stderr.strip()
