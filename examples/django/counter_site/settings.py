"""Settings of the example: Django's defaults, with sessions in a sessionary store.

The lines that matter are `SESSION_ENGINE`, `SESSIONARY` and sessionary's `SessionMiddleware`
(Django's, answering a store outage with 503 instead of 500); the rest is a minimal project.
`SESSIONARY_STORE` picks the store (a `redis://...` URL, say); the default is an SQLite file
next to the project.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SESSION_ENGINE = "sessionary.contrib.django"
SESSIONARY = {
    "store": os.environ.get("SESSIONARY_STORE", f"sqlite:///{BASE_DIR / 'sessionary.db'}"),
    "namespace": "django",
    "absolute_ttl": 7 * 24 * 3600,  # however active, a session ends after a week
}
SESSION_COOKIE_AGE = 24 * 3600  # idle: a day without a request ends it

# A development key: set DJANGO_SECRET_KEY anywhere else (sessions do not need it: the cookie
# holds a 256-bit random id; Django's password reset and CSRF tokens do).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",  # for `manage.py clearsessions`; its table stays unused
]
MIDDLEWARE = [
    "sessionary.contrib.django.SessionMiddleware",  # Django's, with a 503 for a store outage
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "counter_site.urls"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"},
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
