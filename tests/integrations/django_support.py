"""Helpers of the Django integration tests: settings, fixtures and clients.

Django is configured in-process, once, with :func:`setup_django` (called when
this module is imported): ``settings.configure()`` with :data:`SETTINGS`, a
throw-away SQLite database for ``django.contrib.auth`` in a temporary
directory, migrated once. Nothing else in the test run reads Django's
settings, so the Flask and Pyramid tests are unaffected.

Each test then layers its own settings over these with
``django.test.override_settings`` (the :class:`DjangoSite` of the ``site``
fixture): the store of the ``backend`` fixture (``WSGI_KVSESSION_STORE``) and
a random ``key_prefix`` of its own, so Redis keys of one test never meet
another's and the shared server is never flushed.

The test modules take the fixtures from here by assignment::

    from . import django_support

    site = django_support.site
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import django
import pytest
from django.conf import settings
from django.test import Client, override_settings

from .flask_support import Backend, Reply, WebTestDriver

#: Django's own session middleware, and ours.
STOCK = "django.contrib.sessions.middleware.SessionMiddleware"
OURS = "wsgi_kvsession.integrations.django.SessionMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
ENGINE = "wsgi_kvsession.integrations.django"

USERNAME = "alice"
PASSWORD = "correct horse battery staple"

_db_dir = Path(tempfile.mkdtemp(prefix="wsgi-kvsession-django-"))
atexit.register(shutil.rmtree, _db_dir, ignore_errors=True)

SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "django-integration-test-secret-0123456789",
    "ALLOWED_HOSTS": ["*"],
    "INSTALLED_APPS": [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
    ],
    "MIDDLEWARE": [STOCK, AUTH],
    "ROOT_URLCONF": "tests.integrations.django_project.urls",
    "DATABASES": {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(_db_dir / "db.sqlite3")}
    },
    "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
    "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
    "USE_TZ": True,
    # Leave the logging of the test run alone (no dictConfig by Django).
    "LOGGING_CONFIG": None,
    "SESSION_ENGINE": ENGINE,
    # Every test sets WSGI_KVSESSION_STORE; this is only the fallback.
    "WSGI_KVSESSION_STORE_URL": "memory://",
}

_ready = False


def setup_django() -> None:
    """Configure Django for this process (once) and create its tables."""
    global _ready
    if _ready:
        return
    if not settings.configured:
        settings.configure(**SETTINGS)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    _ready = True


setup_django()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def key_prefix() -> str:
    """A random key prefix for this test's sessions (overrides the Flask one,
    so that Redis keys say whose they are)."""
    return f"test-django-{secrets.token_hex(6)}:"


@pytest.fixture(scope="session")
def django_user() -> tuple[str, str]:
    """A user of django.contrib.auth: ``(username, password)``."""
    from django.contrib.auth.models import User

    if not User.objects.filter(username=USERNAME).exists():
        User.objects.create_user(USERNAME, password=PASSWORD)
    return USERNAME, PASSWORD


class DjangoSite:
    """The Django project of one test: its sessions in ``backend``.

    ``settings(...)`` changes settings for the rest of the test; ``client()``
    and ``webtest()`` are built with the settings as they are then.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._overrides: list[override_settings] = []
        self.settings(
            WSGI_KVSESSION_STORE=backend.store,
            WSGI_KVSESSION_OPTIONS={"key_prefix": backend.key_prefix},
        )

    def settings(self, **values: Any) -> None:
        override = override_settings(**values)
        override.enable()
        self._overrides.append(override)

    def options(self, **extra: Any) -> None:
        """Set WSGI_KVSESSION_OPTIONS: this test's key prefix and ``extra``."""
        self.settings(WSGI_KVSESSION_OPTIONS={"key_prefix": self.backend.key_prefix, **extra})

    def middleware(self, session_middleware: str) -> None:
        """Use ``session_middleware`` (:data:`STOCK` or :data:`OURS`)."""
        self.settings(MIDDLEWARE=[session_middleware, AUTH])

    def close(self) -> None:
        while self._overrides:
            self._overrides.pop().disable()

    def wsgi(self) -> Any:
        """A new Django WSGI application (middleware loaded now)."""
        from django.core.wsgi import get_wsgi_application

        return get_wsgi_application()

    def client(self) -> DjangoClientDriver:
        return DjangoClientDriver()

    def webtest(self, app: Any = None) -> WebTestDriver:
        return WebTestDriver(app if app is not None else self.wsgi())


@pytest.fixture
def site(backend: Backend) -> Iterator[DjangoSite]:
    """The Django project with this test's store and key prefix."""
    site = DjangoSite(backend)
    try:
        yield site
    finally:
        site.close()


# ---------------------------------------------------------------- drivers


def django_reply(response: Any) -> Reply:
    """A response of Django's test client as a :class:`Reply`, with the
    headers a WSGI server would send (cookies included)."""
    headers = [
        *response.items(),
        *(("Set-Cookie", c.output(header="").strip()) for c in response.cookies.values()),
    ]
    return Reply(response.status_code, response.content.decode(), headers)


class DjangoClientDriver:
    """Django's test ``Client`` (no WSGI server, no WSGI middleware)."""

    name = "client"

    def __init__(self) -> None:
        self.client = Client(raise_request_exception=False)

    def get(self, path: str, *, status: int = 200) -> Reply:
        result = django_reply(self.client.get(path))
        assert result.status == status, result.text
        return result

    def cookie(self, name: str = "sessionid") -> str | None:
        morsel = self.client.cookies.get(name)
        # The client keeps a deleted cookie, with an empty value.
        return morsel.value if morsel is not None and morsel.value else None

    def set_cookie(self, name: str, value: str) -> None:
        self.client.cookies[name] = value


class Driver(Protocol):
    name: str

    def get(self, path: str, *, status: int = 200) -> Reply: ...

    def cookie(self, name: str = ...) -> str | None: ...

    def set_cookie(self, name: str, value: str) -> None: ...


DRIVERS = ["client", "webtest"]


def make_driver(site: DjangoSite, kind: str) -> Driver:
    """Django's test client or WebTest over Django's WSGI application."""
    return site.client() if kind == "client" else site.webtest()


DriverFactory = Callable[[DjangoSite, str], Driver]

__all__ = [
    "AUTH",
    "DRIVERS",
    "ENGINE",
    "OURS",
    "PASSWORD",
    "STOCK",
    "USERNAME",
    "DjangoClientDriver",
    "DjangoSite",
    "django_reply",
    "django_user",
    "key_prefix",
    "make_driver",
    "site",
]
