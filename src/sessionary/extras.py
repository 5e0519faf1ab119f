"""Optional dependencies: the core needs only orjson, each extra (`pip install
'sessionary[redis]'`, `[postgres]`, `[server]`, ...) brings what one kind of user needs.

Where a feature first reaches for a package its extra brings, it says so, and a user without
the package reads one line that says what to install, not an import traceback::

    with needs("mcp", "sessionary.mcp"):           # around a module's third-party imports
        from mcp.server.streamable_http import EventStore

    require("redis", "redis", "a redis:// store")   # one module, imported where it is needed
    # MissingExtra: a redis:// store needs the redis package: pip install 'sessionary[redis]'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from sessionary.errors import SessionaryError


class MissingExtra(SessionaryError, ImportError):
    """A feature needs a package that an extra of sessionary brings, and it is not installed.

    Both a `SessionaryError` (every error sessionary raises on purpose is one) and an
    `ImportError` (what the import would have raised, and what code probing optional
    integrations catches): `except ImportError` around an optional feature goes on working.
    """

    code = "missing_extra"
    http_status = 500  # the server was installed without what it was configured to use

    def __init__(self, what: str, package: str, extra: str) -> None:
        super().__init__(
            f"{what} needs the {package} package: pip install 'sessionary[{extra}]'",
            name=package,
        )
        self.what = what
        self.package = package
        self.extra = extra


@contextmanager
def needs(extra: str, what: str) -> Iterator[None]:
    """Turn the absence of a module imported inside the block into `MissingExtra`, saying
    that `what` (a singular phrase: "a redis:// store", "the sessionary command") needs it and
    that the extra `extra` brings it. Only absence is translated: a package that is installed
    but fails otherwise, or a module of sessionary itself, raises its real error."""
    try:
        yield
    except ImportError as exc:
        package = _absent_package(exc)
        if package is None:
            raise
        raise MissingExtra(what, package, extra) from exc


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module` and return it, or raise `MissingExtra` (see `needs`)."""
    with needs(extra, what):
        return importlib.import_module(module)


def _absent_package(exc: ImportError) -> str | None:
    """The top-level package of the module `exc` says is not there (not installed, or blocked
    with `sys.modules[name] = None`), or None if the import failed for another reason."""
    name = exc.name
    if name is None or name.partition(".")[0] == "sessionary":
        return None
    blocked = name in sys.modules and sys.modules[name] is None
    if not (isinstance(exc, ModuleNotFoundError) or blocked):
        return None
    return name.partition(".")[0]
