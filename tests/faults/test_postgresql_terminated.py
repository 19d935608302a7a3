"""PostgreSQL connections killed (``pg_terminate_backend``) between requests.

The store keeps connections in a pool and does not ping them before use (a
round trip per operation). A connection the server has closed is found dead
when its first statement fails, promptly, as a disconnect; the store then
empties the pool and runs the operation once more on a new connection
(``SQLAlchemyStore._run``). So the first request after the kill already
succeeds, on every worker: no error page, no restart.

The app's connections are told apart from everyone else's on the shared
server by a random ``application_name`` in the URL, so the test terminates
exactly those. The table is a fresh one, dropped at the end.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from tests.support import client_for, set_cookies
from wsgi_kvsession import Session
from wsgi_kvsession.ids import store_key

from ..http.harness import GunicornServer
from ..stores.backend_sql import table_name
from .support import Timed, new_prefix, until_every_worker, wait_until, worker_pids

sa = pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed")

from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore  # noqa: E402

pytestmark = pytest.mark.server

TIMEOUT = 2.0
#: Kill every connection of the app this many times, one after the other.
ROUNDS = 2


class Database:
    """The app's URL (with its own application_name) and an admin connection."""

    def __init__(self, base_url: str) -> None:
        self.application_name = "kvs_faults_" + secrets.token_hex(6)
        url = sa.engine.make_url(base_url)
        self.url = url.update_query_dict({"application_name": self.application_name})
        self.table = table_name()
        #: Creates and drops the table; inspects records (its own connections).
        self.direct = SQLAlchemyStore(base_url, table=self.table, timeout=TIMEOUT)
        self.admin = sa.create_engine(self.direct.engine.url, poolclass=sa.pool.NullPool)

    @property
    def url_text(self) -> str:
        return str(self.url.render_as_string(hide_password=False))

    def backends(self) -> set[int]:
        """The server PIDs of the app's open connections."""
        with self.admin.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": self.application_name},
            )
            return {int(row.pid) for row in rows}

    def terminate(self) -> set[int]:
        """Kill every connection of the app; return their PIDs once all are gone."""
        pids = self.backends()
        assert pids, "the app has no open connection to kill"
        with self.admin.connect() as conn:
            for pid in pids:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        wait_until(lambda: not (self.backends() & pids), "the killed connections to go")
        return pids

    def close(self) -> None:
        try:
            self.direct.table.drop(self.direct.engine, checkfirst=True)
        finally:
            self.direct.close()
            self.admin.dispose()


@pytest.fixture
def database(postgresql_url: str) -> Iterator[Database]:
    db = Database(postgresql_url)
    try:
        db.direct.create_table()
        yield db
    finally:
        db.close()


def _session_ok(expected: dict[str, str]) -> Callable[[Timed], int]:
    def check(timed: Timed) -> int:
        reply = timed.ok()
        assert reply.status == 200, (timed.path, reply.status, reply.body)
        assert reply.json()["data"] == expected
        return int(reply.json()["pid"])

    return check


def test_connections_killed_between_requests_cost_no_error(
    database: Database, serve: Callable[[Mapping[str, str]], GunicornServer]
) -> None:
    server = serve(
        {
            "FAULTS_STORE": "postgresql",
            "FAULTS_STORE_URL": database.url_text,
            "FAULTS_TIMEOUT": str(TIMEOUT),
            "FAULTS_KEY_PREFIX": new_prefix(),
            "FAULTS_SQL_TABLE": database.table,
        }
    )
    workers = worker_pids(server)
    created = server.get("/set?k=a&v=0")
    assert created.status == 200, server.log_tail()
    cookie = created.cookie()
    assert cookie
    expected = {"a": "0"}
    for round_ in range(1, ROUNDS + 1):
        # Every worker has used the store, so each holds pooled connections.
        until_every_worker(server, [("/get", cookie)] * 8, _session_ok(expected), "warm")
        killed = database.terminate()
        assert len(killed) >= len(workers)
        # The FIRST request of each worker meets only dead pooled connections:
        # every reply must be a 200 with the data (no error page, no new session).
        until_every_worker(
            server, [("/get", cookie)] * 8, _session_ok(expected), f"after kill {round_}"
        )
        changed = server.get(f"/set?k=a&v={round_}", cookie)
        assert changed.status == 200, server.log_tail()
        assert changed.set_cookies == []  # the same session, updated in place
        expected = {"a": str(round_)}
        assert server.get("/get", cookie).json()["data"] == expected
    assert worker_pids(server) == workers, "a worker was restarted"


def _handler(database: Database, store: SQLAlchemyStore) -> Callable[[Session, Any], Any]:
    def handler(session: Session, request: Any) -> Any:
        if request.path == "/set":
            session.update(request.args.items())
        elif request.path == "/kill-between-load-and-save":
            session.get("a")  # loaded: the connection is back in the pool
            database.terminate()
            session["b"] = "2"  # saved at the commit point, on a killed connection
        return repr(dict(session))

    return handler


def test_a_connection_killed_between_the_load_and_the_save_of_one_request(
    database: Database,
) -> None:
    store = SQLAlchemyStore(
        database.url_text, table=database.table, timeout=TIMEOUT, auto_create=False
    )
    prefix = new_prefix()
    try:
        client = client_for(_handler(database, store), store, key_prefix=prefix)
        first = client.get("/set?a=1")
        assert first.status_code == 200
        cookie = client.get_cookie("session")
        assert cookie is not None
        response = client.get("/kill-between-load-and-save")
        assert response.status_code == 200
        assert set_cookies(response) == []  # updated in place, no new ID
        assert database.direct.load(store_key(prefix, cookie.value)) is not None
        assert client.get("/read").text == "{'a': '1', 'b': '2'}"
    finally:
        store.close()
