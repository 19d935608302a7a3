"""SQLAlchemyStore beyond the shared contract: round trips, failures, schema, races."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy.schema import CreateIndex, CreateTable  # noqa: E402

from tests.support import (  # noqa: E402
    assert_instances_share_records,
    client_for,
    write_in_forked_child,
)
from wsgi_kvsession import Session  # noqa: E402
from wsgi_kvsession.stores import StoreError  # noqa: E402
from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore, define_table  # noqa: E402

from .backend_sql import fresh_store, server_url  # noqa: E402

TTL = 60.0
ALL = ["postgresql", "mariadb", "sqlalchemy-sqlite"]
SERVERS = ["postgresql", "mariadb"]


def later(seconds: float = TTL) -> float:
    return time.time() + seconds


def new_key() -> str:
    return "session:" + secrets.token_hex(32)


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(request: pytest.FixtureRequest, backend: str) -> str:
    return server_url(request, backend)


@pytest.fixture
def store(request: pytest.FixtureRequest, url: str) -> SQLAlchemyStore:
    return fresh_store(request, url)


@pytest.fixture(params=SERVERS)
def server_store(request: pytest.FixtureRequest) -> SQLAlchemyStore:
    return fresh_store(request, server_url(request, request.param))


# ------------------------------------------------------------ round trips


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    real = time.time
    c = Clock()
    monkeypatch.setattr(time, "time", lambda: real() + c.offset)
    return c


def _routes(session: Session, request: Any) -> Any:
    if request.path == "/set":
        for k, v in request.args.items():
            session[k] = v
    elif request.path == "/read":
        return repr(dict(session))
    return None


def test_round_trip_budget_rules_6_to_9(store: SQLAlchemyStore, clock: Clock) -> None:
    """DESIGN rules 6-9, counted as the statements the database receives.

    The count is taken with SQLAlchemy's ``before_cursor_execute`` event on the
    store's engine, which fires once for every statement sent through a DBAPI
    cursor. Not seen there, and not session commands: the pool's pre-ping on
    checkout (a COM_PING / an empty query) and transaction control. The store
    runs in autocommit mode, so there is no BEGIN/COMMIT (and it skips PyMySQL's
    needless ROLLBACK on return); were there any, they would not be cursor
    executes either.
    """
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    store.load(new_key())  # the first use creates the table: not on the clock
    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        client = client_for(_routes, store, idle_timeout=3600, touch_interval=60)

        client.get("/set?a=1")  # a new session with data: one insert
        assert statements == ["INSERT"]

        statements.clear()
        client.get("/nothing")  # rule 6: never touched
        assert statements == []

        fresh = client_for(_routes, store, idle_timeout=3600, touch_interval=60)
        fresh.get("/read")  # rule 7: a new session left empty
        assert statements == []

        client.get("/read")  # rule 8: read only
        assert statements == ["SELECT"]

        statements.clear()
        clock.offset += 120  # past touch_interval: one read plus one touch
        assert client.get("/read").text == "{'a': '1'}"
        assert statements == ["SELECT", "UPDATE"]

        statements.clear()
        client.get("/set?b=2")  # rule 9: one read and one write
        assert statements == ["SELECT", "UPDATE"]
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert client.get("/read").text == "{'a': '1', 'b': '2'}"


# ------------------------------------------------------------ store down


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


DOWN_URLS = [
    "postgresql://kvuser:{pw}@127.0.0.1:{port}/db",
    "mysql://kvuser:{pw}@127.0.0.1:{port}/db",
    "mariadb+pymysql://kvuser:{pw}@127.0.0.1:{port}/db",
]


#: The store's timeout in the failure tests, and what a failure may take: one
#: timeout plus scheduling slack. PostgreSQL gets 2 s because libpq will not
#: wait less than 2 s for a connection (a smaller timeout is rounded up).
TIMEOUTS = {"postgresql": 2.0, "mysql": 1.0, "mariadb": 1.0}
SLACK = 1.5


@pytest.mark.parametrize("template", DOWN_URLS, ids=["postgresql", "mysql", "mariadb"])
def test_store_down_raises_store_error_with_masked_password(template: str) -> None:
    password = "s3cr3t-" + secrets.token_hex(8)
    store = SQLAlchemyStore(template.format(pw=password, port=_closed_port()), timeout=1)
    assert password not in repr(store)
    for call in (
        lambda: store.load(new_key()),
        lambda: store.insert(new_key(), b"value", later()),
        lambda: store.cleanup(),
    ):
        started = time.monotonic()
        with pytest.raises(StoreError, match="SQLAlchemyStore") as info:
            call()
        assert time.monotonic() - started < 1 + SLACK
        assert password not in str(info.value)
        assert "***" in str(info.value)
    store.close()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_server_that_never_answers_fails_within_the_timeout(scheme: str) -> None:
    # A listening socket nobody accepts from: the TCP handshake completes (the
    # kernel's backlog), then silence, as from a hung server. Connecting fails
    # once, and the first use does not look for the table a second time.
    timeout = TIMEOUTS[scheme]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = SQLAlchemyStore(f"{scheme}://u:pw@127.0.0.1:{port}/db", timeout=timeout)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(StoreError, match="SQLAlchemyStore"):
                store.load(new_key())
            assert time.monotonic() - started < timeout + SLACK
            assert _drain(listener) == 1  # one attempt to connect per operation
        store.close()


def _drain(listener: socket.socket) -> int:
    """Accept and close the connections waiting in ``listener``'s backlog."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


class HangingProxy:
    """A TCP proxy on a free loopback port in front of a database server.

    It forwards both ways until :meth:`hang`; from then on it reads nothing
    and forwards nothing, and new connections are accepted and left unanswered,
    but every socket stays open: a server (or a pooler in front of it) that
    hangs mid-session. The kernel still acknowledges every packet on loopback,
    so TCP keepalives and ``tcp_user_timeout`` see a healthy peer; only a
    client-side deadline ends the wait. Threads poll a stop flag, and
    :meth:`close` shuts every socket down, so nothing outlives the test.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        #: Connections accepted since hang(): each is an attempt to reconnect.
        self.accepted_while_hung = 0
        self._hung = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self.listener]
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def hang(self) -> None:
        self._hung.set()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            sock.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if not ready:
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._keep(client)
            if self._hung.is_set():
                self.accepted_while_hung += 1
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._keep(server)
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while not self._stop.is_set():
            if self._hung.is_set():
                self._stop.wait(0.05)  # read nothing: the data stays unanswered
                continue
            try:
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                if not self._hung.is_set():
                    target.sendall(data)
            except (OSError, ValueError):  # closed by close(): the test is over
                return


def _through_proxy(
    request: pytest.FixtureRequest, server: str, timeout: float
) -> tuple[HangingProxy, SQLAlchemyStore]:
    """A store reaching ``server`` through a HangingProxy, in a fresh table.

    The table belongs to a direct store, which drops it at the end, after the
    proxied store and the proxy are closed (finalizers run last-in, first-out).
    """
    url = server_url(request, server)
    direct = fresh_store(request, url)
    direct.create_table()
    target = sa.engine.make_url(url)
    proxy = HangingProxy((target.host or "127.0.0.1", int(target.port)))
    request.addfinalizer(proxy.close)
    proxied_url = target.set(host="127.0.0.1", port=proxy.port)
    store = SQLAlchemyStore(
        proxied_url, table=direct.table.name, timeout=timeout, auto_create=False
    )
    request.addfinalizer(store.close)
    return proxy, store


def _fails_within(call: Callable[[], object], limit: float, proxy: HangingProxy) -> float:
    """Run ``call``, which must raise StoreError within ``limit`` s; return how long it took.

    It runs in a thread so that a store that waits forever fails the test
    instead of hanging it: after ``limit`` plus a margin the proxy is closed,
    which ends the wait.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(limit + 5)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        proxy.close()
        thread.join(10)
        pytest.fail(f"still waiting after {elapsed:.1f} s (limit {limit} s)")
    assert outcome, "the call ended without an outcome"
    assert isinstance(outcome[0], StoreError), outcome[0]
    assert "SQLAlchemyStore" in str(outcome[0])
    assert elapsed < limit, f"took {elapsed:.2f} s, limit {limit} s"
    return elapsed


@pytest.mark.parametrize("server", SERVERS)
def test_a_server_that_hangs_mid_session_fails_within_the_timeout(
    request: pytest.FixtureRequest, server: str
) -> None:
    """A hung server costs one timeout per operation: no retry, no second look.

    PostgreSQL: psycopg's wait ends ``timeout + 0.5`` s after sending (the
    server's statement_timeout never fires: the statement never arrived).
    MariaDB: PyMySQL's read_timeout. The failed connection is dropped, not
    retried (a retry would show as a connection accepted by the proxy); the
    next operation's new connection then fails on connect_timeout.
    """
    timeout = TIMEOUTS[server]
    proxy, store = _through_proxy(request, server, timeout)
    key = new_key()
    assert store.insert(key, b"value", later()) is True
    record = store.load(key)
    assert record is not None
    proxy.hang()

    _fails_within(lambda: store.load(key), timeout + SLACK, proxy)
    assert proxy.accepted_while_hung == 0, "the timed-out operation was retried"
    _fails_within(
        lambda: store.update(key, b"new", later(), record.version), timeout + SLACK, proxy
    )
    assert proxy.accepted_while_hung == 1  # the one new connection, not retried


@pytest.mark.parametrize("server", SERVERS)
def test_a_hung_server_fails_a_large_write_within_the_timeout(
    request: pytest.FixtureRequest, server: str
) -> None:
    # A write larger than the socket buffers: the client blocks sending, not
    # reading (PyMySQL's write_timeout; psycopg's deadline covers both).
    timeout = TIMEOUTS[server]
    proxy, store = _through_proxy(request, server, timeout)
    assert store.insert(new_key(), b"warm", later()) is True
    proxy.hang()
    value = os.urandom(16 * 1024 * 1024)
    _fails_within(lambda: store.insert(new_key(), value, later()), timeout + SLACK, proxy)
    assert proxy.accepted_while_hung == 0, "the timed-out operation was retried"


def test_construction_never_connects(tmp_path: Path) -> None:
    SQLAlchemyStore(f"postgresql://u:pw@127.0.0.1:{_closed_port()}/db")
    SQLAlchemyStore(f"mysql://u:pw@127.0.0.1:{_closed_port()}/db")
    SQLAlchemyStore(f"sqlite+pysqlite:///{tmp_path / 'x.db'}")
    assert not (tmp_path / "x.db").exists()


def _record_connection_ids(store: SQLAlchemyStore) -> list[int]:
    """Server-side ids of every connection the store opens from now on."""
    ids: list[int] = []

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        if store.engine.dialect.name == "postgresql":
            ids.append(dbapi_connection.info.backend_pid)
        else:
            ids.append(dbapi_connection.thread_id())

    sa.event.listen(store.engine, "connect", on_connect)
    return ids


def _kill(url: str, ids: list[int]) -> None:
    """Kill exactly these server connections, from a separate admin connection."""
    admin = sa.create_engine(SQLAlchemyStore(url).engine.url, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            for connection_id in ids:
                if admin.dialect.name == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": connection_id}
                    )
                else:
                    conn.execute(sa.text(f"KILL {int(connection_id)}"))
            conn.commit()
    finally:
        admin.dispose()


@pytest.mark.parametrize("server", SERVERS)
def test_the_pool_recovers_after_its_connections_are_killed(
    request: pytest.FixtureRequest, server: str
) -> None:
    url = server_url(request, server)
    store = fresh_store(request, url)
    ids = _record_connection_ids(store)
    key = new_key()
    assert store.insert(key, b"before", later()) is True
    assert ids, "the store opened no connection"
    _kill(url, list(ids))
    # The same store object: the first use of a dead connection fails as a
    # disconnect, the pool is emptied and the call retried on a new connection
    # (no pre-ping: that would cost a round trip on every operation).
    assert store.engine.pool._pre_ping is False
    record = store.load(key)
    assert record is not None
    assert record.value == b"before"
    assert store.update(key, b"after", later(), record.version) is True
    assert len(ids) > 1, "the killed connection was not replaced"


class DropConnection:
    """Closes the store's connection once, at its next statement on the table.

    ``when="before"``: before the statement is sent, as a connection the server
    had closed (nothing ran). ``when="after"``: after it ran and committed (the
    store runs in autocommit), then fails as a lost connection: a reply lost on
    the way back. Either way the driver raises its own disconnect error, from a
    statement on the closed connection.
    """

    def __init__(self, store: SQLAlchemyStore, when: str) -> None:
        self.store = store
        self.when = when
        self.fired = 0
        sa.event.listen(store.engine, f"{when}_cursor_execute", self.fire)

    def fire(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if self.fired or self.store.table.name not in statement:
            return
        self.fired += 1
        conn.connection.dbapi_connection.close()
        if self.when == "after":
            cursor.execute("SELECT 1")  # raises the driver's closed-connection error

    def remove(self) -> None:
        sa.event.remove(self.store.engine, f"{self.when}_cursor_execute", self.fire)


def test_a_write_whose_reply_was_lost_reports_success(store: SQLAlchemyStore) -> None:
    """The statement committed, the reply was lost, the retry finds the result.

    Insert and update recognise their own write by its new version; a delete
    whose retry finds nothing left reports the record removed.
    """
    store.load(new_key())  # creates the table; the connection is now pooled
    key = new_key()

    def lost(call: Callable[[], bool]) -> bool:
        drop = DropConnection(store, "after")
        try:
            return call()
        finally:
            drop.remove()
            assert drop.fired == 1

    assert lost(lambda: store.insert(key, b"one", later())) is True
    first = store.load(key)
    assert first is not None
    assert first.value == b"one"
    assert lost(lambda: store.update(key, b"two", later(), first.version)) is True
    second = store.load(key)
    assert second is not None
    assert second.value == b"two"
    assert lost(lambda: store.update(key, b"three", later())) is True
    assert lost(lambda: store.touch(key, later(120))) is True
    third = store.load(key)
    assert third is not None
    assert third.value == b"three"
    assert lost(lambda: store.delete(key, third.version)) is True
    assert store.load(key) is None
    other = new_key()
    assert store.insert(other, b"x", later()) is True
    assert lost(lambda: store.delete(other)) is True
    assert store.load(other) is None


def test_a_retry_on_a_stale_connection_still_refuses(store: SQLAlchemyStore) -> None:
    """A statement that never ran, retried: refusals stay refusals."""
    key = new_key()
    assert store.insert(key, b"theirs", later()) is True
    record = store.load(key)
    assert record is not None

    def stale(call: Callable[[], bool]) -> bool:
        drop = DropConnection(store, "before")
        try:
            return call()
        finally:
            drop.remove()
            assert drop.fired == 1

    assert stale(lambda: store.insert(key, b"mine", later())) is False
    assert stale(lambda: store.update(key, b"mine", later(), record.version + 1)) is False
    assert stale(lambda: store.delete(key, record.version + 1)) is False
    assert stale(lambda: store.load(key)) == record
    assert stale(lambda: store.update(key, b"mine", later(), record.version)) is True
    # The documented ambiguity: after a retry, no live record left counts as
    # removed, since the first attempt may have removed it; a client cannot
    # tell a statement that never ran from one whose reply was lost.
    assert stale(lambda: store.delete(new_key())) is True


def test_a_new_connection_that_fails_is_not_retried(store: SQLAlchemyStore) -> None:
    """Only a pooled connection found dead is retried: a new one that fails is
    the server failing now, and trying again would only double the wait."""
    store.load(new_key())  # creates the table
    store.engine.dispose()  # the next operation opens a new connection
    drop = DropConnection(store, "before")
    try:
        with pytest.raises(StoreError, match="SQLAlchemyStore"):
            store.load(new_key())
    finally:
        drop.remove()
    assert drop.fired == 1
    assert store.load(new_key()) is None  # and the store recovers


# ------------------------------------------------------------ construction


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("mysql://u@h/db", "mysql+pymysql"),
        ("mariadb://u@h/db", "mariadb+pymysql"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("mysql+pymysql://u@h/db", "mysql+pymysql"),
        ("sqlite+pysqlite:////tmp/x.db", "sqlite+pysqlite"),
    ],
)
def test_urls_without_a_driver_get_the_extras_drivers(given: str, driver: str) -> None:
    assert SQLAlchemyStore(given).engine.url.drivername == driver


def _connect_params(raw: str, **options: Any) -> dict[str, Any]:
    """The keyword arguments the store's engine hands the driver's connect()."""
    store = SQLAlchemyStore(raw, timeout=2.5, **options)
    seen: dict[str, Any] = {}

    def capture(dialect: Any, rec: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        seen.update(cparams)
        raise OSError("not connecting in this test")

    sa.event.listen(store.engine, "do_connect", capture)
    with pytest.raises(StoreError):
        store.load(new_key())
    return seen


def test_timeouts_reach_the_driver_and_the_url_wins() -> None:
    pg = _connect_params("postgresql://u@127.0.0.1:1/db")
    assert {k: pg[k] for k in pg if k not in ("host", "port", "user", "dbname", "context")} == {
        "connect_timeout": 3,
        "options": "-c statement_timeout=2500",
        "tcp_user_timeout": 2500,
        "keepalives": 1,
        "keepalives_idle": 3,
        "keepalives_interval": 1,
        "keepalives_count": 3,
    }
    assert (
        _connect_params("postgresql://u@127.0.0.1:1/db?connect_timeout=30")["connect_timeout"]
        == "30"
    )
    my = _connect_params("mysql://u@127.0.0.1:1/db")
    assert {k: my[k] for k in ("connect_timeout", "read_timeout", "write_timeout")} == {
        "connect_timeout": 2.5,
        "read_timeout": 2.5,
        "write_timeout": 2.5,
    }
    assert _connect_params("sqlite+pysqlite:////nonexistent/dir/x.db")["timeout"] == 2.5


def test_the_callers_connect_args_win_and_options_keep_the_statement_timeout() -> None:
    given = _connect_params(
        "postgresql://u@127.0.0.1:1/db?keepalives_idle=60",
        engine_options={"connect_args": {"tcp_user_timeout": 0, "options": "-c search_path=app"}},
    )
    assert given["keepalives_idle"] == "60"  # the URL's
    assert given["tcp_user_timeout"] == 0  # connect_args'
    assert given["keepalives_interval"] == 1  # the store's default
    assert given["options"] == "-c search_path=app -c statement_timeout=2500"
    in_url = _connect_params("postgresql://u@127.0.0.1:1/db?options=-c%20search_path%3Dapp")
    assert in_url["options"] == "-c search_path=app -c statement_timeout=2500"
    own = _connect_params(
        "postgresql://u@127.0.0.1:1/db",
        engine_options={"connect_args": {"options": "-c statement_timeout=0"}},
    )
    assert own["options"] == "-c statement_timeout=0"
    mysql = _connect_params(
        "mysql://u@127.0.0.1:1/db", engine_options={"connect_args": {"read_timeout": 30}}
    )
    assert (mysql["read_timeout"], mysql["write_timeout"]) == (30, 2.5)
    with pytest.raises(ValueError, match="connect_args"):
        SQLAlchemyStore("postgresql://u@h/db", engine_options={"connect_args": ["x"]})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table": "bad-name"}, "table"),
        ({"table": "x; DROP TABLE users"}, "table"),
        ({"table": "1abc"}, "table"),
        ({"table": "t" * 50}, "table"),
        ({"schema": "a.b"}, "schema"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"engine_options": {"no_such_option": 1}}, "engine_options"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SQLAlchemyStore("postgresql://u@h/db", **kwargs)


@pytest.mark.parametrize(
    "raw", ["sqlite+pysqlite://", "sqlite+pysqlite:///:memory:", "not a url", "nosuchdb://h/x"]
)
def test_unusable_urls_raise_value_error(raw: str) -> None:
    with pytest.raises(ValueError, match="SQLAlchemyStore"):
        SQLAlchemyStore(raw)


def test_a_users_engine_is_used_but_not_disposed(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite+pysqlite:///{tmp_path / 'own.db'}")
    with pytest.raises(ValueError, match="engine_options"):
        SQLAlchemyStore(engine, engine_options={"pool_size": 3})
    store = SQLAlchemyStore(engine)
    assert store.owns_engine is False
    key = new_key()
    assert store.insert(key, b"value", later()) is True
    idle_before = engine.pool.checkedin()
    assert idle_before >= 1
    store.close()
    assert engine.pool.checkedin() == idle_before  # the pool was not disposed
    # ...and the user's engine keeps its own isolation level.
    assert "isolation_level" not in engine.get_execution_options()
    record = store.load(key)
    assert record is not None
    engine.dispose()


def test_repr_masks_the_password() -> None:
    store = SQLAlchemyStore("postgresql://user:hunter2@db.example/app", table="sess")
    assert "hunter2" not in repr(store)
    assert repr(store) == (
        "SQLAlchemyStore('postgresql+psycopg://user:***@db.example/app', table='sess')"
    )


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://kvuser@127.0.0.1:{port}/db?password={pw}&sslmode=disable",
        "postgresql://kvuser:{pw}@127.0.0.1:{port}/db?sslpassword={pw}",
        "mysql://kvuser@127.0.0.1:{port}/db?passwd={pw}",
        "mariadb://kvuser@127.0.0.1:{port}/db?charset=utf8mb4&password={pw}",
    ],
)
@pytest.mark.filterwarnings("ignore:'passwd' is deprecated:DeprecationWarning")
def test_passwords_in_the_query_string_are_masked(template: str) -> None:
    password = "s3cr3t-" + secrets.token_hex(8)
    store = SQLAlchemyStore(template.format(pw=password, port=_closed_port()), timeout=1)
    assert password not in repr(store)
    assert "***" in repr(store)
    with pytest.raises(StoreError, match="SQLAlchemyStore") as info:
        store.load(new_key())
    assert password not in str(info.value)
    assert "***" in str(info.value)
    store.close()


def test_a_password_in_the_query_of_a_rejected_url_is_masked() -> None:
    password = "s3cr3t-" + secrets.token_hex(8)
    for raw in (f"nosuchdb://u@h/x?password={password}", f"not a url?password={password}"):
        with pytest.raises(ValueError, match="SQLAlchemyStore") as info:
            SQLAlchemyStore(raw)
        assert password not in str(info.value)


def test_the_query_of_a_url_stays_readable() -> None:
    store = SQLAlchemyStore("postgresql://u:pw@h/db?sslmode=require&application_name=app")
    assert repr(store) == (
        "SQLAlchemyStore('postgresql+psycopg://u:***@h/db?application_name=app"
        "&sslmode=require', table='kvsession')"
    )


# ------------------------------------------------------------ schema


def test_the_table_has_its_index_and_column_types(store: SQLAlchemyStore) -> None:
    assert store.insert(new_key(), b"value", later()) is True
    inspector = sa.inspect(store.engine)
    indexes = inspector.get_indexes(store.table.name)
    assert ["expires_at"] in [i["column_names"] for i in indexes]
    assert ["user_id"] in [i["column_names"] for i in indexes]
    assert inspector.get_pk_constraint(store.table.name)["constrained_columns"] == ["id"]
    columns = {c["name"]: c for c in inspector.get_columns(store.table.name)}
    assert set(columns) == {
        "id",
        "store_key",
        "data",
        "expires_at",
        "version",
        "created_at",
        "updated_at",
        "user_id",
    }
    assert columns["user_id"]["nullable"] is True
    if store.engine.dialect.name in ("mysql", "mariadb"):
        assert "LONGBLOB" in str(columns["data"]["type"]).upper()
        assert "DOUBLE" in str(columns["expires_at"]["type"]).upper()


def test_expires_at_keeps_sub_second_precision(store: SQLAlchemyStore) -> None:
    key = new_key()
    expires_at = later() + 0.123456
    assert store.insert(key, b"value", expires_at) is True
    record = store.load(key)
    assert record is not None
    assert record.expires_at == pytest.approx(expires_at, abs=1e-5)


def test_values_of_several_mib_round_trip(store: SQLAlchemyStore) -> None:
    key = new_key()
    value = os.urandom(4 * 1024 * 1024)
    assert store.insert(key, value, later()) is True
    record = store.load(key)
    assert record is not None
    assert record.value == value


def test_auto_create_false_leaves_the_schema_to_you(
    request: pytest.FixtureRequest, url: str
) -> None:
    store = fresh_store(request, url, auto_create=False)
    secret = os.urandom(8).hex()
    with pytest.raises(StoreError, match="SQLAlchemyStore") as info:
        store.insert(new_key(), secret.encode(), later())
    assert secret not in str(info.value)  # parameters never reach a message
    store.create_table()
    store.create_table()  # idempotent
    assert store.insert(new_key(), b"value", later()) is True
    with pytest.raises(StoreError, match="cannot create the table"):
        store.create_table(checkfirst=False)


def test_define_table_matches_the_stores_table(store: SQLAlchemyStore) -> None:
    mine = define_table(sa.MetaData(), store.table.name)
    dialect = store.engine.dialect
    assert str(CreateTable(mine).compile(dialect=dialect)) == str(
        CreateTable(store.table).compile(dialect=dialect)
    )
    assert len(mine.indexes) == 2  # expires_at (cleanup) and user_id (the user index)
    assert sorted(str(CreateIndex(i).compile(dialect=dialect)) for i in mine.indexes) == sorted(
        str(CreateIndex(i).compile(dialect=dialect)) for i in store.table.indexes
    )


def test_a_schema_other_than_the_default(request: pytest.FixtureRequest) -> None:
    url = server_url(request, "postgresql")
    schema = "kvs_schema_" + secrets.token_hex(4)
    admin = sa.create_engine(SQLAlchemyStore(url).engine.url, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        store = SQLAlchemyStore(url, table="sessions", schema=schema)
        key = new_key()
        assert store.insert(key, b"value", later()) is True
        assert store.load(key) is not None
        assert sa.inspect(admin).has_table("sessions", schema=schema)
        assert schema in repr(store)
        store.close()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# ------------------------------------------------------------ cleanup, listing


def test_cleanup_counts_across_batches(store: SQLAlchemyStore) -> None:
    keys = [new_key() for _ in range(25)]
    for k in keys:
        assert store.insert(k, b"value", later()) is True
        assert store.touch(k, time.time() - 10) is True
    live = new_key()
    assert store.insert(live, b"live", later()) is True
    assert store.cleanup(batch_size=10) == 25
    assert store.cleanup(batch_size=10) == 0
    assert store.load(live) is not None
    with pytest.raises(ValueError, match="batch_size"):
        store.cleanup(batch_size=0)


def test_iter_records_pages_through_many_records(store: SQLAlchemyStore) -> None:
    keys = {new_key() for _ in range(253)}
    for k in keys:
        assert store.insert(k, k.encode(), later()) is True
    listed = dict(store.iter_records())
    assert set(listed) == keys
    assert all(record.value == k.encode() for k, record in listed.items())


def test_two_instances_share_records(request: pytest.FixtureRequest, url: str) -> None:
    one = fresh_store(request, url)
    two = SQLAlchemyStore(url, table=one.table.name)
    try:
        assert_instances_share_records(one, two, new_key())
    finally:
        two.close()


# ------------------------------------------------------------ processes

PROCESSES = 3
INCREMENTS = 30


def _increment(url: str, table: str, key: str) -> int:
    store = SQLAlchemyStore(url, table=table, auto_create=False)
    retries = 0
    try:
        for _ in range(INCREMENTS):
            for _attempt in range(10_000):  # bounded: fail rather than hang
                record = store.load(key)
                assert record is not None
                value = str(int(record.value) + 1).encode()
                if store.update(key, value, record.expires_at, record.version):
                    break
                retries += 1
            else:
                raise AssertionError("compare-and-set never succeeded")
    finally:
        store.close()
    return retries


def _insert(url: str, table: str, key: str, barrier: Any) -> bool:
    store = SQLAlchemyStore(url, table=table, auto_create=False)
    try:
        store.load(key)  # connected before the race starts
        barrier.wait(30)
        return store.insert(key, f"pid {os.getpid()}".encode(), time.time() + 60)
    finally:
        store.close()


def test_compare_and_set_is_atomic_across_processes(server_store: SQLAlchemyStore) -> None:
    # Every operation is one autocommit statement, so MySQL's REPEATABLE READ
    # snapshot never feeds a write: the UPDATE's WHERE version = ... is checked
    # against the latest committed row (a locking read in InnoDB, a re-check
    # after waiting in PostgreSQL).
    url = server_store.engine.url.render_as_string(hide_password=False)
    assert server_store.insert("counter", b"0", later(600)) is True
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        pool.starmap_async(_increment, [(url, server_store.table.name, "counter")] * PROCESSES).get(
            timeout=180
        )
    record = server_store.load("counter")
    assert record is not None
    assert int(record.value) == PROCESSES * INCREMENTS


def test_insert_if_absent_has_one_winner_across_processes(
    server_store: SQLAlchemyStore,
) -> None:
    url = server_store.engine.url.render_as_string(hide_password=False)
    server_store.load("warm-up")  # creates the table
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(PROCESSES) as pool:
        for round_number in range(4):
            key = f"race{round_number}"
            if round_number % 2:
                # An expired row under the key: the racers must replace it once.
                assert server_store.insert(key, b"old", later()) is True
                assert server_store.touch(key, time.time() - 1) is True
            barrier = manager.Barrier(PROCESSES)
            wins = pool.starmap_async(
                _insert, [(url, server_store.table.name, key, barrier)] * PROCESSES
            ).get(timeout=60)
            assert sum(wins) == 1, wins
            record = server_store.load(key)
            assert record is not None
            assert record.value.startswith(b"pid ")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_store_used_before_fork_works_in_the_child(server_store: SQLAlchemyStore) -> None:
    key, child_key = new_key(), new_key()
    assert server_store.insert(key, b"parent", later()) is True  # a pooled connection
    write_in_forked_child(server_store, key, child_key, later())
    # The parent's own pooled connection was left intact by the child.
    record = server_store.load(key)
    assert record is not None
    assert record.value == b"child"
    assert server_store.load(child_key) is not None
