"""SQLAlchemyStore beyond the shared contract: round trips, failures, schema, races."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy.schema import CreateIndex, CreateTable  # noqa: E402

from tests.support import assert_instances_share_records, client_for  # noqa: E402
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


@pytest.mark.parametrize("template", DOWN_URLS, ids=["postgresql", "mysql", "mariadb"])
def test_store_down_raises_store_error_with_masked_password(template: str) -> None:
    password = "s3cr3t-" + secrets.token_hex(8)
    store = SQLAlchemyStore(template.format(pw=password, port=_closed_port()), timeout=1)
    assert password not in repr(store)
    started = time.monotonic()
    for call in (
        lambda: store.load(new_key()),
        lambda: store.insert(new_key(), b"value", later()),
        lambda: store.cleanup(),
    ):
        with pytest.raises(StoreError, match="SQLAlchemyStore") as info:
            call()
        assert password not in str(info.value)
        assert "***" in str(info.value)
    assert time.monotonic() - started < 10 * 3
    store.close()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_server_that_never_answers_fails_within_the_timeout(scheme: str) -> None:
    # A listening socket nobody accepts from: the TCP handshake completes (the
    # kernel's backlog), then silence, as from a hung server.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = SQLAlchemyStore(f"{scheme}://u:pw@127.0.0.1:{port}/db", timeout=1)
        started = time.monotonic()
        with pytest.raises(StoreError, match="SQLAlchemyStore"):
            store.load(new_key())
        # timeout=1 (psycopg rounds a connect timeout up to libpq's 2 s minimum)
        assert time.monotonic() - started < 10
        store.close()


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


def test_timeouts_reach_the_driver_and_the_url_wins(request: pytest.FixtureRequest) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for name, raw in [
        ("pg", "postgresql://u@127.0.0.1:1/db"),
        ("pg-url", "postgresql://u@127.0.0.1:1/db?connect_timeout=30"),
        ("my", "mysql://u@127.0.0.1:1/db"),
        ("lite", "sqlite+pysqlite:////nonexistent/dir/x.db"),
    ]:
        store = SQLAlchemyStore(raw, timeout=2.5)

        def capture(
            dialect: Any, rec: Any, cargs: Any, cparams: dict[str, Any], n: str = name
        ) -> Any:
            seen[n] = dict(cparams)
            raise OSError("not connecting in this test")

        sa.event.listen(store.engine, "do_connect", capture)
        with pytest.raises(StoreError):
            store.load(new_key())
    assert seen["pg"]["connect_timeout"] == 3
    assert seen["pg"]["options"] == "-c statement_timeout=2500"
    assert seen["pg-url"]["connect_timeout"] == "30"
    assert {k: seen["my"][k] for k in ("connect_timeout", "read_timeout", "write_timeout")} == {
        "connect_timeout": 2.5,
        "read_timeout": 2.5,
        "write_timeout": 2.5,
    }
    assert seen["lite"]["timeout"] == 2.5


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


# ------------------------------------------------------------ schema


def test_the_table_has_its_index_and_column_types(store: SQLAlchemyStore) -> None:
    assert store.insert(new_key(), b"value", later()) is True
    inspector = sa.inspect(store.engine)
    indexes = inspector.get_indexes(store.table.name)
    assert ["expires_at"] in [i["column_names"] for i in indexes]
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
    }
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
    (index,) = mine.indexes
    (store_index,) = store.table.indexes
    assert str(CreateIndex(index).compile(dialect=dialect)) == str(
        CreateIndex(store_index).compile(dialect=dialect)
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
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reports by exit code
        code = 1
        try:
            record = server_store.load(key)
            if record is None or record.value != b"parent":
                code = 2
            elif not server_store.update(key, b"child", later(), version=record.version):
                code = 3
            elif not server_store.insert(child_key, b"from the child", later()):
                code = 4
            else:
                code = 0
        except BaseException:
            code = 5
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    assert os.WEXITSTATUS(status) == 0, "child exit code (see the test for the meaning)"
    # The parent's own pooled connection was left intact by the child.
    record = server_store.load(key)
    assert record is not None
    assert record.value == b"child"
    assert server_store.load(child_key) is not None
