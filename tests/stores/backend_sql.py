"""SQLAlchemyStore in the contract suite: PostgreSQL, MariaDB and SQLite.

The servers are the machine's shared ones (URLs from the environment, with
localhost defaults). Each store gets a fresh, randomly named table that is
dropped when the test ends, so nothing of anyone else's is ever touched and
cleanup() counts are exact.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from wsgi_kvsession.stores import Store

from .registry import skip_or_fail, store_factory

try:
    import sqlalchemy as sa

    from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore
except ImportError:  # pragma: no cover - the sql extra is not installed
    sa = None  # type: ignore[assignment]

#: Trust authentication as the ``postgres`` superuser: the role every
#: PostgreSQL installation (and the official Docker image CI uses) has.
POSTGRESQL_URL = os.environ.get(
    "KVSESSION_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "KVSESSION_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
#: How long the availability probe waits for a server.
PROBE_TIMEOUT = 3.0


def table_name() -> str:
    return "kvs_test_" + secrets.token_hex(6)


def _reachable(name: str, url: str) -> str:
    """``url`` if a server answers there; otherwise skip (fail under CI)."""
    if sa is None:
        skip_or_fail("SQLAlchemy is not installed (pip install 'wsgi-kvsession[sql]')")
    probe = SQLAlchemyStore(url, timeout=PROBE_TIMEOUT, auto_create=False)
    try:
        with probe.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        # repr(probe) masks the password; the driver's message carries none.
        cause = getattr(exc, "orig", None) or exc
        skip_or_fail(f"{name} is not reachable ({probe!r}): {type(cause).__name__}")
    finally:
        probe.close()
    return url


@pytest.fixture(scope="session")
def postgresql_url() -> str:
    return _reachable("PostgreSQL", POSTGRESQL_URL)


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    return _reachable("MariaDB", MARIADB_URL)


def fresh_store(request: pytest.FixtureRequest, url: str, **options: object) -> SQLAlchemyStore:
    """A store on ``url`` in a new table, dropped when ``request``'s scope ends."""
    options.setdefault("table", table_name())
    store = SQLAlchemyStore(url, **options)  # type: ignore[arg-type]

    def drop() -> None:
        try:
            store.table.drop(store.engine, checkfirst=True)
        finally:
            store.close()

    request.addfinalizer(drop)
    return store


def sqlite_url(request: pytest.FixtureRequest) -> str:
    if sa is None:
        skip_or_fail("SQLAlchemy is not installed (pip install 'wsgi-kvsession[sql]')")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return f"sqlite+pysqlite:///{tmp_path / 'sessions.db'}"


def server_url(request: pytest.FixtureRequest, backend: str) -> str:
    """The URL of the ``backend`` ("postgresql", "mariadb", "sqlalchemy-sqlite")."""
    if backend == "postgresql":
        return str(request.getfixturevalue("postgresql_url"))
    if backend == "mariadb":
        return str(request.getfixturevalue("mariadb_url"))
    return sqlite_url(request)


@store_factory("postgresql")
def _postgresql(request: pytest.FixtureRequest) -> Store:
    return fresh_store(request, server_url(request, "postgresql"))


@store_factory("mariadb")
def _mariadb(request: pytest.FixtureRequest) -> Store:
    return fresh_store(request, server_url(request, "mariadb"))


@store_factory("sqlalchemy-sqlite")
def _sqlalchemy_sqlite(request: pytest.FixtureRequest) -> Store:
    return fresh_store(request, server_url(request, "sqlalchemy-sqlite"))
