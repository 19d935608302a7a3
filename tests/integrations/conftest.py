"""Fixtures of the Flask integration tests.

Every test runs a real Flask app against two stores (the ``backend``
fixture): an in-process :class:`MemoryStore` and :class:`RedisStore` on the
shared Redis (skipped locally, failed under ``CI=true``, when Redis is not
there). Each test writes under a random ``key_prefix`` of its own, and the
Redis keys under it are deleted afterwards, so the shared server is never
flushed. The store is wrapped in a :class:`CountingStore` so a test can say
exactly which store calls a request cost.

``drive`` makes a client of an app, Flask's test client or WebTest
(``webtest.TestApp``, which also lints the WSGI traffic), so the core flows
run through both. The helpers are in :mod:`tests.integrations.flask_support`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from wsgi_kvsession.stores import MemoryStore, Store

from ..stores.backend_redis import REDIS_URL, redis_store
from ..support import CountingStore
from .flask_support import (
    SECRET,
    AppFactory,
    Backend,
    DriverFactory,
    FlaskDriver,
    WebTestDriver,
    add_routes,
    setup_sessions,
)


def purge_redis(prefix: str) -> None:
    """Delete every key under ``prefix`` on the shared Redis, expired-looking or
    not (after a test moved the clock the store no longer lists them)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


@pytest.fixture
def key_prefix() -> str:
    """A random key prefix for this test's sessions."""
    return f"test-flask-{secrets.token_hex(6)}:"


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[Backend]:
    """A fresh store of each kind; the sessions go under ``key_prefix``."""
    inner: Store = MemoryStore() if request.param == "memory" else redis_store(REDIS_URL)
    counting = CountingStore(inner)
    try:
        yield Backend(request.param, counting, key_prefix)
    finally:
        if request.param == "redis":
            # Every key a request touched (some tests use the default prefix,
            # e.g. through KVSessionExtension), then whatever is under ours.
            for key in {key for _, key in counting.calls}:
                inner.delete(key)
            purge_redis(key_prefix)
        inner.close()


@pytest.fixture
def make_app(backend: Backend, tmp_path: Path) -> AppFactory:
    """Build Flask apps whose sessions come from ``backend`` (see AppFactory)."""

    def make(
        config: Mapping[str, Any] | None = None,
        *,
        mode: str = "init_app",
        routes: bool = True,
        **options: Any,
    ) -> Flask:
        app = Flask(__name__, template_folder=str(tmp_path))
        app.config.update(SECRET_KEY=SECRET, TESTING=True)
        app.config.update(config or {})
        if routes:
            add_routes(app)
        setup_sessions(app, backend, mode, **options)
        return app

    return make


@pytest.fixture(params=["flask", "webtest"])
def drive(request: pytest.FixtureRequest) -> DriverFactory:
    """Make a client of an app: Flask's test client or WebTest."""
    if request.param == "flask":
        return FlaskDriver
    return WebTestDriver
