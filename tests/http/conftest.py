"""Fixtures of the HTTP tests: a store for the app, and gunicorn serving the app on it.

``http_store`` (parametrized indirectly with a store kind) gives a
:class:`StoreSetup`: the URL and options the app builds its store from, and a
store object of the test's own on the same data, to look at the records.

* ``redis``: the machine's Redis (``KVSESSION_TEST_REDIS_URL``), under a
  random key prefix; the test's records are deleted at teardown, never flushed.
* ``memcached``: a memcached started for the test on a free port, stopped by PID.
* ``postgresql``: the machine's PostgreSQL (``KVSESSION_TEST_POSTGRESQL_URL``),
  in a fresh randomly named table, created before the server starts (so four
  workers do not race to create it) and dropped at teardown.
* ``sqlite``, ``file``: in the test's ``tmp_path``.

A server or client library that is missing skips the test locally and fails
it under ``CI=true`` (:func:`tests.stores.registry.skip_or_fail`).

``serve(variant, setup)`` starts gunicorn on the app of ``app_under_test``
(``"wsgi"`` or ``"flask"``) and stops it by PID at teardown; ``broken=`` wraps
the app's store in ``BrokenStore`` (the tests' self-checks).
"""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wsgi_kvsession.stores import Store

from ..stores.backend_memcached import start_memcached, url_of
from ..stores.backend_redis import REDIS_URL, redis_store
from ..stores.backend_sql import table_name
from ..stores.registry import skip_or_fail
from .app_under_test import build_store
from .harness import GunicornServer, HarnessError

#: The store kinds every HTTP test runs on.
STORE_KINDS = ["redis", "memcached", "postgresql", "sqlite", "file"]
#: The app variants: raw WSGI under the middleware, and Flask through init_app.
VARIANTS = ["wsgi", "flask"]
TARGETS = {
    "wsgi": "tests.http.app_under_test:make_wsgi_app()",
    "flask": "tests.http.app_under_test:make_flask_app()",
}


@dataclass
class StoreSetup:
    """Where the app under test keeps its sessions, and a store to inspect them."""

    kind: str
    url: str
    key_prefix: str
    #: The store object of the test process (not the app's) on the same records.
    store: Store
    table: str | None = None

    def env(self, signal_dir: Path) -> dict[str, str]:
        env = {
            "KVSESSION_TEST_STORE_URL": self.url,
            "KVSESSION_TEST_KEY_PREFIX": self.key_prefix,
            "KVSESSION_TEST_SIGNAL_DIR": str(signal_dir),
        }
        if self.table:
            env["KVSESSION_TEST_SQL_TABLE"] = self.table
        return env

    def records(self) -> list[str] | None:
        """The keys of every record under the prefix, or None where the store
        cannot list them (memcached)."""
        try:
            return [key for key, _ in self.store.iter_records(self.key_prefix)]
        except NotImplementedError:
            return None


def signal_dir_of(server_dir: Path) -> Path:
    """Where ``/slow-set`` of the server working in ``server_dir`` meets the test."""
    return server_dir / "signals"


def _require_gunicorn() -> None:
    if importlib.util.find_spec("gunicorn") is None:
        skip_or_fail("gunicorn is not installed: pip install 'wsgi-kvsession[test]'")


@pytest.fixture
def http_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSetup]:
    """A store of the kind given as the parameter, emptied or removed afterwards."""
    kind: str = request.param
    key_prefix = "test:http:" + secrets.token_hex(8) + ":"
    if kind == "redis":
        store = redis_store(REDIS_URL)  # skips (fails under CI) when Redis is not there
        setup = StoreSetup(kind, REDIS_URL, key_prefix, store)
        try:
            yield setup
        finally:
            # Shared server: remove exactly this test's records, never flush.
            for key in setup.records() or []:
                store.delete(key)
            store.close()
    elif kind == "memcached":
        if importlib.util.find_spec("pymemcache") is None:
            skip_or_fail("pymemcache is not installed: pip install 'wsgi-kvsession[memcached]'")
        try:
            server = start_memcached(tmp_path)
        except RuntimeError as exc:
            skip_or_fail(f"could not start memcached: {exc}")
        try:
            url = url_of(server)
            store = build_store(url)
            try:
                yield StoreSetup(kind, url, key_prefix, store)
            finally:
                store.close()
        finally:
            server.stop()
    elif kind == "postgresql":
        url = str(request.getfixturevalue("postgresql_url"))  # skips when unreachable
        from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore

        table = table_name()
        sql_store = SQLAlchemyStore(url, table=table)
        try:
            sql_store.create_table()
            yield StoreSetup(kind, url, key_prefix, sql_store, table=table)
        finally:
            try:
                sql_store.table.drop(sql_store.engine, checkfirst=True)
            finally:
                sql_store.close()
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'sessions.db'}"
        store = build_store(url)
        try:
            yield StoreSetup(kind, url, key_prefix, store)
        finally:
            store.close()
    elif kind == "file":
        url = f"file://{tmp_path / 'sessions'}"
        store = build_store(url)
        try:
            yield StoreSetup(kind, url, key_prefix, store)
        finally:
            store.close()
    else:
        raise ValueError(kind)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., GunicornServer]]:
    """Start gunicorn on an app variant over a store; stopped by PID after the test."""
    _require_gunicorn()
    servers: list[GunicornServer] = []

    def start(variant: str, setup: StoreSetup, *, broken: str | None = None) -> GunicornServer:
        if variant == "flask" and importlib.util.find_spec("flask") is None:
            skip_or_fail("Flask is not installed: pip install 'wsgi-kvsession[flask]'")
        work_dir = tmp_path / f"gunicorn-{len(servers)}"
        work_dir.mkdir()
        signal_dir = signal_dir_of(server_dir=work_dir)
        signal_dir.mkdir()
        env = setup.env(signal_dir)
        if broken:
            env["KVSESSION_TEST_BREAK"] = broken
        server = GunicornServer(TARGETS[variant], env, work_dir)
        servers.append(server)
        try:
            return server.start()
        except HarnessError as exc:
            pytest.fail(str(exc), pytrace=False)

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
