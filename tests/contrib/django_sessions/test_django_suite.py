"""Django's own session backend tests (`SessionTestsMixin`, tests/sessions_tests/tests.py of the
Django source distribution, same version as installed) against `SessionStore`, on SQLite and
on Redis. Every test of the mixin runs; none is skipped or deselected."""

from __future__ import annotations

from django.test import SimpleTestCase
from sessions_tests.tests import SessionTestsMixin

from sessionary.contrib.django import SessionStore

from .stores import on_store


class _OnStore(SessionTestsMixin):  # type: ignore[misc]
    backend = SessionStore
    store_kind = ""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.enterClassContext(on_store(cls.store_kind))


class DjangoSuiteOnSQLite(_OnStore, SimpleTestCase):
    store_kind = "sqlite"


class DjangoSuiteOnRedis(_OnStore, SimpleTestCase):
    store_kind = "redis"
