"""Each extra brings what one kind of user needs: without it, the feature that needs it says so
in one line naming the extra, and the core (orjson only) works with every optional package gone.

"Gone" is a fresh interpreter in which `sys.modules[name] = None` blocks the package, as if it
were not installed (scripts/check-core-install proves the same on a real core-only install).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

from sessionary.errors import SessionaryError
from sessionary.extras import MissingExtra, needs, require

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"

#: every package an extra brings (and the ones those bring that sessionary imports)
EVERY_OPTIONAL = (
    "asyncpg",
    "celery",
    "click",
    "django",
    "fastapi",
    "flask",
    "hiredis",
    "litestar",
    "mcp",
    "mcp_types",
    "opentelemetry",
    "prometheus_client",
    "pydantic",
    "pydantic_settings",
    "redis",
    "rich",
    "sse_starlette",
    "starlette",
    "uvicorn",
)


def run_without(blocked: Iterable[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in which the modules `blocked` cannot be imported."""
    prelude = f"import sys\nfor name in {sorted(blocked)!r}:\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def missing_line(blocked: Iterable[str], code: str) -> str:
    """The message of the `MissingExtra` that `code` raises, without the blocked modules."""
    wrapped = (
        "from sessionary.extras import MissingExtra\n"
        "try:\n" + textwrap.indent(textwrap.dedent(code), "    ") + "\n"
        "except MissingExtra as missing:\n"
        "    print(missing)\n"
        "else:\n"
        "    print('no MissingExtra')\n"
    )
    done = run_without(blocked, wrapped)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- the helper ------------------------------------------------------------------------------


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(MissingExtra) as raised:
        require("asyncpg", "postgres", "a PostgreSQL analytics sink")
    assert str(raised.value) == (
        "a PostgreSQL analytics sink needs the asyncpg package: pip install 'sessionary[postgres]'"
    )
    assert isinstance(raised.value, ImportError)
    assert isinstance(raised.value, SessionaryError)
    assert (raised.value.name, raised.value.extra) == ("asyncpg", "postgres")


def test_a_missing_submodule_names_its_package() -> None:
    with pytest.raises(MissingExtra, match=r"^a store needs the absent_db package: .*\[db\]'$"):
        require("absent_db.asyncio.cluster", "db", "a store")


def test_an_installed_package_that_fails_raises_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "half_installed.py").write_text("from json import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="no_such_name") as raised:
        require("half_installed", "server", "the service")
    assert not isinstance(raised.value, MissingExtra)


def test_a_missing_module_of_sessionary_is_a_bug_not_an_extra() -> None:
    with pytest.raises(ModuleNotFoundError) as raised, needs("server", "the service"):
        import sessionary.no_such_module  # noqa: F401
    assert not isinstance(raised.value, MissingExtra)


# -- where each extra is first reached -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss+cluster://127.0.0.1:7000", "rediss+cluster"),
        ("unix:///tmp/redis.sock", "unix"),
    ],
)
def test_a_redis_store_without_redis_names_the_extra(url: str, scheme: str) -> None:
    line = missing_line(
        ["redis", "hiredis"],
        f"""
        import asyncio, sessionary
        asyncio.run(sessionary.connect({url!r}))
        """,
    )
    assert line == f"a {scheme}:// store needs the redis package: pip install 'sessionary[redis]'"


def test_a_postgres_sink_without_asyncpg_names_the_extra() -> None:
    line = missing_line(
        ["asyncpg"],
        """
        import asyncio
        from sessionary.analytics.sink import sink_from_url
        asyncio.run(sink_from_url("postgresql://127.0.0.1:5432/analytics"))
        """,
    )
    assert line == (
        "a PostgreSQL analytics sink needs the asyncpg package: pip install 'sessionary[postgres]'"
    )


def test_a_clickhouse_sink_without_httpx_names_the_extra() -> None:
    line = missing_line(
        ["httpx"],
        """
        import asyncio
        from sessionary.analytics.sink import sink_from_url
        asyncio.run(sink_from_url("clickhouse://127.0.0.1:8123/analytics"))
        """,
    )
    assert line == (
        "a ClickHouse analytics sink needs the httpx package: pip install 'sessionary[clickhouse]'"
    )


def test_the_mcp_event_store_without_mcp_names_the_extra() -> None:
    line = missing_line(["mcp", "mcp_types"], "import sessionary.mcp")
    assert line == "sessionary.mcp needs the mcp package: pip install 'sessionary[mcp]'"


def test_the_celery_task_without_celery_names_the_extra() -> None:
    line = missing_line(["celery"], "import sessionary.runs.celery")
    assert line == (
        "sessionary.runs.celery needs the celery package: pip install 'sessionary[celery]'"
    )


def test_the_web_middleware_without_starlette_names_the_extra() -> None:
    line = missing_line(["starlette"], "import sessionary.web")
    assert line == "sessionary.web needs the starlette package: pip install 'sessionary[starlette]'"


def test_the_web_middleware_needs_starlette_alone() -> None:
    beside_starlette = [name for name in EVERY_OPTIONAL if name != "starlette"]
    done = run_without(
        beside_starlette,
        """
        from sessionary.web import SessionMiddleware
        print(SessionMiddleware.__name__)
        """,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "SessionMiddleware"), done.stderr


# -- the core alone --------------------------------------------------------------------------


def test_the_core_works_with_every_optional_package_missing(tmp_path: Path) -> None:
    done = run_without(
        EVERY_OPTIONAL,
        f"""
        import asyncio
        from datetime import timedelta
        import sessionary, sessionary.store, sessionary.sync, sessionary.testing

        async def round_trip(url):
            store = await sessionary.connect(url)
            try:
                web = store.namespace("web", idle_ttl=timedelta(minutes=5))
                session = await web.create(subject="user-1", data={{"cart": [1]}})
                got = await web.get(session.id)
                return got.data
            finally:
                await store.close()

        print(asyncio.run(round_trip("memory://")))
        print(asyncio.run(round_trip("sqlite:///{tmp_path / "async.db"}")))
        with sessionary.connect_sync("sqlite:///{tmp_path / "sync.db"}") as store:
            web = store.namespace("web", idle_ttl=timedelta(minutes=5))
            print(web.get(web.create(data={{"cart": [2]}}).id).data)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["{'cart': [1]}", "{'cart': [1]}", "{'cart': [2]}", ""]


# -- the command -----------------------------------------------------------------------------


def console_script() -> str:
    """Code that runs the `sessionary` console script as pyproject.toml declares it."""
    target = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]["sessionary"]
    module, _, function = target.partition(":")
    return f"import {module} as entry\nentry.{function}()"


LAUNCHERS = {
    "console script": console_script,
    "python -m sessionary": lambda: (
        "import runpy\nrunpy.run_module('sessionary', run_name='__main__')"
    ),
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("blocked", ["click", "rich"])
def test_the_command_without_the_server_extra_says_so(launcher: str, blocked: str) -> None:
    done = run_without([blocked], f"sys.argv = ['sessionary', '--help']\n{LAUNCHERS[launcher]()}")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"the sessionary command needs the {blocked} package: pip install 'sessionary[server]'\n"
    )


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_command_runs_with_the_server_extra(launcher: str) -> None:
    done = run_without([], f"sys.argv = ['sessionary', '--version']\n{LAUNCHERS[launcher]()}")
    assert (done.returncode, done.stdout) == (0, "sessionary, version 0.1.0\n"), done.stderr


#: what the `server` extra does not bring
BESIDE_SERVER = (
    "asyncpg",
    "celery",
    "django",
    "flask",
    "hiredis",
    "litestar",
    "mcp",
    "mcp_types",
    "redis",
)


def run_command(blocked: Iterable[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `sessionary` console script with `args`, the modules `blocked` missing."""
    return run_without(blocked, f"sys.argv = ['sessionary', *{list(args)!r}]\n{console_script()}")


def test_the_command_needs_the_server_extra_alone() -> None:
    done = run_command(BESIDE_SERVER, "--help")
    assert (done.returncode, done.stderr) == (0, "")
    assert "serve" in done.stdout


def test_a_command_on_a_redis_store_without_redis_names_the_extra() -> None:
    done = run_command(BESIDE_SERVER, "ping", "--store", "redis://127.0.0.1:6379/0")
    assert (done.returncode, done.stdout) == (2, "")  # as every missing extra: the line alone
    assert done.stderr == (
        "a redis:// store needs the redis package: pip install 'sessionary[redis]'\n"
    )


def test_migrating_from_the_legacy_redis_without_redis_names_the_extra() -> None:
    done = run_command(
        BESIDE_SERVER,
        "migrate",
        "--from-legacy-playground",
        "redis://127.0.0.1:6379/0",
        "--store",
        "memory://",
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "sessionary migrate needs the redis package: pip install 'sessionary[redis]'\n"
    )
