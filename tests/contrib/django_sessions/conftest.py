"""Django, configured once for the process (settings.configure can run only once, and the other
frameworks' tests share the process): the example project's settings, plus the app of Django's
own session tests (`sessions_tests`, from the Django source distribution, whose models the
mixin's module imports), an in-memory test database, and a memory store until a test names
its own (`stores.on_store`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import django
import pytest
from django.conf import settings
from django.test import override_settings
from django.test.utils import setup_test_environment, teardown_test_environment

from sessionary import ManualClock
from sessionary.sync import SyncStore, connect_sync
from tests.peers import suite

from .stores import on_store

if TYPE_CHECKING:
    from django.contrib.auth.models import User

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "django"


def _configure() -> None:
    if settings.configured:
        return
    sys.path.insert(0, str(EXAMPLE))
    sys.path.append(str(suite("django") / "tests"))  # last: its modules must shadow nothing
    from counter_site import settings as example

    chosen: dict[str, Any] = {
        name: getattr(example, name) for name in dir(example) if name.isupper()
    }
    chosen["INSTALLED_APPS"] = [*example.INSTALLED_APPS, "sessions_tests"]
    chosen["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    chosen["SESSIONARY"] = {"store": "memory://"}
    chosen["PASSWORD_HASHERS"] = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    settings.configure(**chosen)
    django.setup()


_configure()


@pytest.fixture(scope="session", autouse=True)
def _django_test_database() -> Iterator[None]:
    """What Django's test runner does: the test environment (locmem mail, `testserver` an
    allowed host) and a migrated test database."""
    from django.db import connection

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0)
    yield
    connection.creation.destroy_test_db(old_name, verbosity=0)
    teardown_test_environment()


@pytest.fixture(params=["sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Django's sessions on each store in turn, one of the test's own."""
    with on_store(request.param):
        yield request.param


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["sqlite", "redis"])
def store_on_clock(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[SyncStore]:
    """Django's sessions on each store in turn, on the test's clock."""
    with on_store(request.param) as url:
        store = connect_sync(url, clock=clock)
        try:
            with override_settings(SESSIONARY={"store": store, "namespace": "django"}):
                yield store
        finally:
            store.close()


@pytest.fixture
def user() -> Iterator[User]:
    from django.contrib.auth.models import User  # only once Django is set up

    made = User.objects.create_user("ada", password="analytical-engine")
    yield made
    made.delete()
