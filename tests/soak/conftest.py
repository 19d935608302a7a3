"""Fixtures of the soak: a store for the app, with a way to count its connections.

``soak_store`` (parametrized indirectly with a store kind) gives a
:class:`SoakStore`, built like the HTTP tests' ``http_store``
(``tests/http/conftest.py``) but with the app's connections named, so the
store server can tell which of its clients are the soak's workers:

* ``redis``: the machine's Redis (``KVSESSION_TEST_REDIS_URL``) under a random
  key prefix; the app's connections carry ``client_name=kvsoak-<random>``,
  counted in ``CLIENT LIST``. Every key under the prefix is deleted at teardown
  (never a flush).
* ``postgresql``: the machine's PostgreSQL (``KVSESSION_TEST_POSTGRESQL_URL``),
  in a fresh table dropped at teardown; the app's connections carry
  ``application_name=kvsoak-<random>``, counted in ``pg_stat_activity``.
* ``sqlite``: the embedded store in ``tmp_path``, its database created before
  the workers start; its "connections" are the workers' file descriptors open
  on the database file.

A missing server or client library skips the test locally and fails it under
``CI=true`` (:func:`tests.stores.registry.skip_or_fail`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wsgi_kvsession.stores import Store

from ..http.app_under_test import build_store
from ..stores.backend_redis import REDIS_URL, redis_store
from ..stores.backend_sql import table_name
from ..stores.registry import skip_or_fail
from .monitors import CountConnections, open_files_on

#: Summaries of the soaks run in this pytest session, printed at the end.
SUMMARIES: list[dict[str, Any]] = []


@dataclass
class SoakStore:
    """Where the app keeps its sessions, and how to look at them from outside."""

    kind: str
    #: The URL the app builds its store from (naming its connections).
    url: str
    key_prefix: str
    #: The test process's own store on the same records.
    store: Store
    count_connections: CountConnections
    #: What count_connections counts, for the report.
    connections_are: str
    table: str | None = None

    def env(self) -> dict[str, str]:
        env = {"KVSESSION_TEST_STORE_URL": self.url, "KVSESSION_TEST_KEY_PREFIX": self.key_prefix}
        if self.table:
            env["KVSESSION_TEST_SQL_TABLE"] = self.table
        return env

    def record_keys(self) -> set[str]:
        return {key for key, _ in self.store.iter_records(self.key_prefix)}


def with_query(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


@pytest.fixture
def soak_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SoakStore]:
    kind: str = request.param
    key_prefix = "test:soak:" + secrets.token_hex(8) + ":"
    name = "kvsoak-" + secrets.token_hex(6)
    if kind == "redis":
        store = redis_store(REDIS_URL)  # skips (fails under CI) when Redis is not there
        import redis

        admin = redis.Redis.from_url(REDIS_URL)

        def redis_clients(pids: Collection[int]) -> int:
            return sum(1 for client in admin.client_list() if client.get("name") == name)

        try:
            yield SoakStore(
                kind,
                with_query(REDIS_URL, "client_name", name),
                key_prefix,
                store,
                redis_clients,
                f"Redis clients named {name}",
            )
        finally:
            # Shared server: remove exactly this test's keys, never flush.
            try:
                for key in admin.scan_iter(match=key_prefix + "*", count=1000):
                    admin.unlink(key)
                assert not list(admin.scan_iter(match=key_prefix + "*", count=1000))
            finally:
                admin.close()
                store.close()
    elif kind == "postgresql":
        url = str(request.getfixturevalue("postgresql_url"))  # skips when unreachable
        import sqlalchemy as sa

        from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore

        table = table_name()
        sql_store = SQLAlchemyStore(url, table=table)
        query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")

        def backends(pids: Collection[int]) -> int:
            with sql_store.engine.connect() as conn:
                return int(conn.execute(query, {"name": name}).scalar_one())

        try:
            sql_store.create_table()  # before the workers start, so they do not race to
            yield SoakStore(
                kind,
                with_query(url, "application_name", name),
                key_prefix,
                sql_store,
                backends,
                f"PostgreSQL backends with application_name {name}",
                table=table,
            )
        finally:
            try:
                sql_store.table.drop(sql_store.engine, checkfirst=True)
            finally:
                sql_store.close()
    elif kind == "sqlite":
        path = tmp_path / "sessions.db"
        store = build_store(f"sqlite:///{path}")
        # Created (WAL mode, table) before the workers start, as the table of
        # PostgreSQL is: workers opening a new database together can fail at
        # once, which test_sqlite_first_use.py shows on its own.
        store.load(key_prefix + "create")

        def descriptors(pids: Collection[int]) -> int:
            return open_files_on(pids, path)

        try:
            yield SoakStore(
                kind,
                f"sqlite:///{path}",
                key_prefix,
                store,
                descriptors,
                "file descriptors of the workers open on the database file",
            )
        finally:
            store.close()
    else:
        raise ValueError(kind)


@pytest.fixture
def require_gunicorn() -> None:
    if importlib.util.find_spec("gunicorn") is None:
        skip_or_fail("gunicorn is not installed: pip install 'wsgi-kvsession[test]'")


def save_report(summary: dict[str, Any]) -> None:
    """Keep ``summary`` for the terminal summary, and merge it into the JSON
    file named by ``KVSESSION_SOAK_REPORT`` (keyed by store), if set."""
    SUMMARIES.append(summary)
    path = os.environ.get("KVSESSION_SOAK_REPORT")
    if not path:
        return
    report = Path(path)
    try:
        existing = json.loads(report.read_text())
    except (OSError, ValueError):
        existing = {}
    if not isinstance(existing, dict):
        existing = {}
    name = summary["store"] + (f"+{summary['broken']}" if summary.get("broken") else "")
    existing[name] = summary
    report.write_text(json.dumps(existing, indent=2, default=str) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print each soak's figures (requests, errors, connections, RSS), even without ``-s``."""
    if not SUMMARIES:
        return
    terminalreporter.section("wsgi_kvsession soak")
    for summary in SUMMARIES:
        rss = ", ".join(
            f"{pid}: {w['start_kib'] // 1024}→{(w['end_kib'] or 0) // 1024} MiB"
            for pid, w in summary["workers"].items()
        )
        terminalreporter.write_line(
            f"{summary['store']}{' (' + summary['broken'] + ')' if summary.get('broken') else ''}:"
            f" {summary['requests_total']} requests in {summary['seconds_measured']:.1f}s"
            f" (+{summary['warm_up_seconds']:.1f}s warm-up), 5xx {summary['server_errors_5xx']},"
            f" transport errors {sum(summary['transport_errors'].values())},"
            f" violations {summary['violations'] or 'none'},"
            f" connections max {summary['connections']['max']}"
            f" (bound {summary['connections']['bound']}), RSS {rss}"
        )
