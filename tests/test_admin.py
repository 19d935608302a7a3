"""SessionManager: sessions made over HTTP, then managed without their client.

Every session here is created by a request through the real middleware
(Werkzeug's test client); the manager then reads, changes and ends it, and the
next request of that client shows the effect. The stores are the contract
suite's backends (tests/stores/registry.py): memory, files, SQLite, Redis,
PostgreSQL, and a simplekv store for the path without a per-user index, each
test under its own random ``key_prefix`` so that a shared server's other keys
never count.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from wsgi_kvsession import Session, StoreError
from wsgi_kvsession.admin import SessionInfo, SessionManager
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import MemoryStore, SQLiteStore, Store, Version

from .stores.registry import STORE_SPECS, StoreSpec
from .support import Clock, CountingStore, client_for

BACKENDS = ["memory", "file", "sqlite", "redis", "postgresql", "simplekv-dict"]
IDLE = 3600


@pytest.fixture(params=BACKENDS)
def spec(request: pytest.FixtureRequest) -> StoreSpec:
    return STORE_SPECS[request.param]


@pytest.fixture
def store(request: pytest.FixtureRequest, spec: StoreSpec) -> Iterator[Store]:
    built = spec.factory(request)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def options() -> dict[str, Any]:
    """The middleware's options, shared with the manager: a fresh key prefix."""
    return {"key_prefix": f"admin:{secrets.token_hex(6)}:", "idle_timeout": IDLE}


@pytest.fixture
def manager(store: Store, options: dict[str, Any]) -> SessionManager:
    return SessionManager(store, **options)


def handler(session: Session, request: Request) -> str | None:
    """``/login?user=`` ties the session to a user (a new ID, as a login should),
    ``/set?k=&v=`` sets a key, ``/logout`` destroys, ``/leave`` unties the
    user, ``/id`` answers the session ID, ``/read`` the data and user."""
    op, args = request.path.strip("/"), request.args
    if op == "login":
        session.regenerate()
        session.user_id = args["user"]
        session["who"] = args["user"]
    elif op == "set":
        session[args["k"]] = args["v"]
    elif op == "logout":
        session.destroy()
    elif op == "leave":
        session.user_id = None
    elif op == "id":
        return session.id or ""
    return json.dumps({"data": dict(session), "user": session.user_id}, sort_keys=True)


def new_client(store: Store, options: dict[str, Any]) -> Client:
    return client_for(handler, store, **options)


def read(client: Client) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(client.get("/read").text)
    return result


def logged_in(store: Store, options: dict[str, Any], user: str) -> tuple[Client, str]:
    """A client logged in as ``user`` over HTTP, and its session ID."""
    client = new_client(store, options)
    client.get(f"/login?user={user}")
    session_id = client.get("/id").text
    assert session_id
    return client, session_id


def key_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


# -------------------------------------------------------------- one session


def test_get_returns_the_data_and_metadata_of_a_session(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    before = time.time()
    client, session_id = logged_in(store, options, "alice")
    client.get("/set?k=cart&v=3")

    info = manager.get(session_id)
    assert isinstance(info, SessionInfo)
    assert info.data == {"who": "alice", "cart": "3"}
    assert info.user_id == "alice"
    assert info.permanent is False
    assert info.key_hash == key_hash(session_id) == manager.key_hash(session_id)
    assert info.key == options["key_prefix"] + info.key_hash
    assert before - 1 <= info.created.timestamp() <= time.time() + 1
    assert info.created.tzinfo is not None
    assert info.written >= info.created
    assert info.expires_at.timestamp() == pytest.approx(time.time() + IDLE, abs=60)
    assert session_id not in repr(info)  # the store never had it, nor does a listing
    assert manager.get_by_hash(info.key_hash) == info


def test_get_of_an_unknown_or_ended_session_is_none(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    assert manager.get(secrets.token_urlsafe(32)) is None
    assert manager.get_by_hash("0" * 64) is None
    client, session_id = logged_in(store, options, "alice")
    client.get("/logout")
    assert manager.get(session_id) is None


def test_get_never_adopts_an_expired_session(
    store: Store, options: dict[str, Any], manager: SessionManager, clock: Clock
) -> None:
    _, session_id = logged_in(store, options, "alice")
    assert manager.get(session_id) is not None
    clock.advance(IDLE + 5)
    assert manager.get(session_id) is None
    assert manager.update(session_id, {"back": True}) is False
    assert manager.sessions_of("alice") == []
    assert manager.count() == 0


def test_the_absolute_timeout_of_the_managers_options_applies(
    store: Store, options: dict[str, Any], clock: Clock
) -> None:
    # The store still holds the record (its expiry came from a longer
    # absolute timeout), but under these options the session is over.
    _, session_id = logged_in(store, {**options, "absolute_timeout": 10 * IDLE}, "alice")
    strict = SessionManager(store, **{**options, "absolute_timeout": IDLE / 2})
    assert strict.get(session_id) is not None
    clock.advance(IDLE / 2 + 5)
    assert strict.get(session_id) is None
    assert strict.update(session_id, {"x": 1}) is False
    assert strict.count() == 0


def test_update_is_seen_by_the_next_request(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    client, session_id = logged_in(store, options, "alice")
    client.get("/set?k=cart&v=3")
    expires_at = manager.get(session_id).expires_at  # type: ignore[union-attr]

    assert manager.update(session_id, {"role": "admin", "cart": "4"}) is True
    assert read(client) == {
        "data": {"who": "alice", "cart": "4", "role": "admin"},
        "user": "alice",
    }
    assert manager.update_by_hash(key_hash(session_id), remove=["cart"]) is True
    assert read(client)["data"] == {"who": "alice", "role": "admin"}
    # An operator's change is not activity: the expiry did not move.
    info = manager.get(session_id)
    assert info is not None
    assert info.expires_at.timestamp() == pytest.approx(expires_at.timestamp(), abs=2)


def test_update_merges_with_a_request_that_writes_meanwhile(
    store: Store, options: dict[str, Any], manager: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, session_id = logged_in(store, options, "alice")
    original = store.load
    fired: list[bool] = []

    def load_then_a_request_writes(key: str) -> Any:
        record = original(key)
        if not fired:
            fired.append(True)
            client.get("/set?k=from_request&v=1")  # changes the record's version
        return record

    monkeypatch.setattr(store, "load", load_then_a_request_writes)
    assert manager.update(session_id, {"from_manager": "1"}) is True
    monkeypatch.undo()
    assert fired
    assert read(client)["data"] == {"who": "alice", "from_request": "1", "from_manager": "1"}


def test_update_never_brings_back_an_ended_session(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    client, session_id = logged_in(store, options, "alice")
    client.get("/logout")
    assert manager.update(session_id, {"role": "admin"}) is False
    assert store.load(store_key(options["key_prefix"], session_id)) is None
    assert manager.update(secrets.token_urlsafe(32), {"role": "admin"}) is False


def test_update_that_empties_a_session_deletes_it(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    client = new_client(store, options)
    client.get("/set?k=only&v=1")
    session_id = client.get("/id").text
    assert manager.update(session_id, remove=["only"]) is True
    assert manager.get(session_id) is None
    assert read(client)["data"] == {}


def test_update_refuses_unstorable_values_before_writing(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    client, session_id = logged_in(store, options, "alice")
    with pytest.raises(ValueError, match="cannot store"):
        manager.update(session_id, {"bad": object(), "fine": 1})
    assert read(client)["data"] == {"who": "alice"}


def test_revoke_logs_the_client_out(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    client, session_id = logged_in(store, options, "alice")
    assert manager.revoke(session_id) is True
    assert read(client) == {"data": {}, "user": None}
    assert manager.revoke(session_id) is False
    other, other_id = logged_in(store, options, "bob")
    assert manager.revoke_by_hash(key_hash(other_id)) is True
    assert read(other) == {"data": {}, "user": None}


# ------------------------------------------------------------- every session


def test_iter_sessions_and_count_list_the_live_sessions(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    ids = {}
    for user in ("alice", "bob"):
        ids[logged_in(store, options, user)[1]] = user
    anonymous = new_client(store, options)
    anonymous.get("/set?k=a&v=1")
    ids[anonymous.get("/id").text] = None
    ended, ended_id = logged_in(store, options, "carol")
    ended.get("/logout")

    listed = {info.key_hash: info for info in manager.iter_sessions()}
    assert set(listed) == {key_hash(i) for i in ids}
    assert key_hash(ended_id) not in listed
    for session_id, user in ids.items():
        assert listed[key_hash(session_id)].user_id == user
    assert listed[key_hash(next(iter(ids)))].data == {"who": "alice"}
    assert manager.count() == 3
    # Another application's sessions in the same store are not ours.
    other = SessionManager(store, key_prefix=options["key_prefix"] + "other:")
    assert other.count() == 0


def test_cleanup_removes_expired_sessions(
    store: Store,
    spec: StoreSpec,
    options: dict[str, Any],
    manager: SessionManager,
    clock: Clock,
) -> None:
    for user in ("alice", "bob"):
        logged_in(store, options, user)
    clock.advance(IDLE + 5)
    removed = manager.cleanup()
    if spec.cleanup == "exact":
        assert removed == 2
        assert manager.cleanup() == 0
    elif spec.cleanup == "at_least":
        assert removed >= 2
    assert manager.count() == 0


# ------------------------------------------------------------ a user's sessions


def test_revoke_user_logs_out_every_session_of_that_user_only(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    alice = [logged_in(store, options, "alice") for _ in range(3)]
    bob, bob_id = logged_in(store, options, "bob")
    anonymous = new_client(store, options)
    anonymous.get("/set?k=cart&v=1")
    alicia, _ = logged_in(store, options, "alice2")  # a user whose ID starts alike

    found = manager.sessions_of("alice")
    assert sorted(s.key_hash for s in found) == sorted(key_hash(i) for _, i in alice)
    assert all(s.user_id == "alice" and s.data == {"who": "alice"} for s in found)
    assert found == sorted(found, key=lambda s: s.created)

    assert manager.revoke_user("alice") == 3
    for client, _ in alice:
        assert read(client) == {"data": {}, "user": None}
    assert read(bob) == {"data": {"who": "bob"}, "user": "bob"}
    assert read(anonymous)["data"] == {"cart": "1"}
    assert read(alicia)["user"] == "alice2"
    assert manager.sessions_of("alice") == []
    assert [s.key_hash for s in manager.sessions_of("bob")] == [key_hash(bob_id)]
    assert manager.revoke_user("alice") == 0
    assert manager.count() == 3


def test_the_index_follows_the_user_of_a_session(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    client, alice_id = logged_in(store, options, "alice")
    assert len(manager.sessions_of("alice")) == 1
    client.get("/login?user=bob")  # a new login on the same browser: a new ID
    bob_id = client.get("/id").text
    assert manager.sessions_of("alice") == []
    assert manager.get(alice_id) is None
    assert [s.key_hash for s in manager.sessions_of("bob")] == [key_hash(bob_id)]
    client.get("/leave")  # untied from the user, the session goes on
    assert manager.sessions_of("bob") == []
    assert manager.revoke_user("bob") == 0
    assert read(client)["data"] == {"who": "bob"}


def test_an_int_user_id_and_its_text_are_one_user(
    store: Store, options: dict[str, Any], manager: SessionManager
) -> None:
    def tie_to_int(session: Session, request: Request) -> str:
        if request.path == "/id":
            return session.id or ""  # known once the session is stored
        session.user_id = 42
        session["n"] = 1
        return ""

    client = client_for(tie_to_int, store, **options)
    client.get("/")
    session_id = client.get("/id").text
    (info,) = manager.sessions_of("42")
    assert info.user_id == 42
    assert info.key_hash == key_hash(session_id)
    assert manager.revoke_user(42) == 1


# ------------------------------------------------------------------ refusals


def test_bad_arguments_are_refused_clearly(manager: SessionManager) -> None:
    with pytest.raises(ValueError, match="not a session ID") as info:
        manager.get("not an id; secret=" + "x" * 30)
    assert "secret" not in str(info.value)  # the value is never echoed
    with pytest.raises(ValueError, match="not a session ID"):
        manager.revoke("abc.signature")
    with pytest.raises(ValueError, match="64 lower-case hex"):
        manager.get_by_hash("session:" + "0" * 64)
    with pytest.raises(TypeError, match="str or an int"):
        manager.sessions_of(True)
    with pytest.raises(TypeError, match="str or an int"):
        manager.revoke_user(None)  # type: ignore[arg-type]
    # Text no record can hold (a lone surrogate) names no session.
    assert manager.sessions_of("\ud800") == []
    assert manager.revoke_user("\ud800") == 0


def test_a_store_is_required() -> None:
    with pytest.raises(TypeError, match="wsgi_kvsession store"):
        SessionManager("sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown session option"):
        SessionManager(MemoryStore(), key_prefx="x:")  # type: ignore[call-arg]


def test_memcached_manages_one_session_but_cannot_list(
    request: pytest.FixtureRequest, options: dict[str, Any]
) -> None:
    store = STORE_SPECS["memcached"].factory(request)
    try:
        manager = SessionManager(store, **options)
        client, session_id = logged_in(store, options, "alice")
        assert manager.get(session_id) is not None
        assert manager.update(session_id, {"role": "admin"}) is True
        assert read(client)["data"] == {"who": "alice", "role": "admin"}
        for listing in (
            lambda: manager.sessions_of("alice"),
            lambda: manager.revoke_user("alice"),
            lambda: list(manager.iter_sessions()),
            manager.count,
        ):
            with pytest.raises(NotImplementedError, match="memcached has no command that lists"):
                listing()
        assert manager.revoke(session_id) is True
        assert read(client)["data"] == {}
    finally:
        store.close()


# --------------------------------------------- stores and writers without the index


class OldStyleWrapper(CountingStore):
    """A store wrapper written before the per-user index: its ``insert`` and
    ``update`` take no ``user`` and so cannot pass one on."""

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:  # type: ignore[override]
        return self.inner.insert(key, value, expires_at)

    def update(  # type: ignore[override]
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
        return self.inner.update(key, value, expires_at, version)


def test_a_store_wrapper_without_user_is_scanned_and_can_be_reindexed(
    options: dict[str, Any],
) -> None:
    """A store written before the per-user index (``insert``/``update``
    without ``user``) still works: its sessions are found by a scan, and
    reindex_users() indexes them in the store underneath."""
    inner = MemoryStore()
    wrapper = OldStyleWrapper(inner)
    assert wrapper.indexes_users is False
    client, session_id = logged_in(wrapper, options, "alice")
    assert [s.key_hash for s in SessionManager(wrapper, **options).sessions_of("alice")] == [
        key_hash(session_id)
    ]
    direct = SessionManager(inner, **options)
    assert direct.sessions_of("alice") == []  # never indexed: written without user=
    assert direct.reindex_users() == 1
    assert [s.key_hash for s in direct.sessions_of("alice")] == [key_hash(session_id)]
    assert direct.revoke_user("alice") == 1
    assert read(client)["data"] == {}


def test_a_subclass_overriding_a_write_without_user_loses_the_index() -> None:
    class Old(MemoryStore):
        def insert(self, key: str, value: bytes, expires_at: float) -> bool:  # type: ignore[override]
            return super().insert(key, value, expires_at)

    class Passing(MemoryStore):
        def insert(self, key: str, value: bytes, expires_at: float, **kwargs: Any) -> bool:  # type: ignore[override]
            return super().insert(key, value, expires_at, **kwargs)

    assert MemoryStore.indexes_users is True
    assert Old.indexes_users is False  # a manager scans it instead of trusting the index
    assert Passing.indexes_users is True


def test_an_sqlite_table_of_an_earlier_version_gains_the_user_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE kvsession (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
            " expires_at REAL NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO kvsession VALUES ('session:old', x'00', ?, 1)", (time.time() + 60,)
        )
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.load("session:old") is not None  # old rows read as before
        assert store.insert("session:new", b"v", time.time() + 60, user="alice") is True
        assert [k for k, _ in store.iter_user_records("alice")] == ["session:new"]
        # A second store on the same file (another process) finds it done.
        again = SQLiteStore(path)
        assert [k for k, _ in again.iter_user_records("alice")] == ["session:new"]
        again.close()
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(kvsession)")]
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT key FROM kvsession WHERE user_id = ? AND key >= ?",
            ("alice", ""),
        ).fetchall()
    conn.close()
    assert columns.count("user_id") == 1
    assert "kvsession_user_id" in str(plan)


# --------------------------------------------------------- SQL: the user_id column


@pytest.fixture(params=["postgresql", "mariadb", "sqlalchemy-sqlite"])
def old_table(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """A table as an earlier version made it (no user_id column), in each SQL database."""
    sa = pytest.importorskip("sqlalchemy")
    from .stores.backend_sql import fresh_store, server_url

    def make(**store_options: Any) -> Any:
        store = fresh_store(request, server_url(request, request.param), **store_options)
        old = sa.MetaData()
        sa.Table(
            store.table.name,
            old,
            *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
              for c in store.table.columns if c.name != "user_id"),
        )  # fmt: skip
        old.create_all(store.engine)
        return store

    return make


def test_a_sql_table_without_user_id_is_migrated_by_auto_create(
    old_table: Callable[..., Any], options: dict[str, Any]
) -> None:
    import sqlalchemy as sa

    store = old_table()
    client, session_id = logged_in(store, options, "alice")
    manager = SessionManager(store, **options)
    assert [s.key_hash for s in manager.sessions_of("alice")] == [key_hash(session_id)]
    inspector = sa.inspect(store.engine)
    assert "user_id" in {c["name"] for c in inspector.get_columns(store.table.name)}
    assert ["user_id"] in [i["column_names"] for i in inspector.get_indexes(store.table.name)]
    assert manager.revoke_user("alice") == 1
    assert read(client)["data"] == {}


def test_a_sql_table_without_user_id_and_no_auto_create_says_what_to_do(
    old_table: Callable[..., Any], options: dict[str, Any]
) -> None:
    import sqlalchemy as sa

    store = old_table(auto_create=False)
    with pytest.raises(StoreError, match=r"no user_id column.*migration") as info:
        store.insert("session:" + "0" * 64, b"secret-value", time.time() + 60, user="alice")
    assert "secret-value" not in str(info.value)
    assert store.load("session:" + "1" * 64) is None  # reads work meanwhile

    # The documented migration, then the sessions written before it are
    # indexed by reindex_users().
    table = store.table.name
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN user_id VARCHAR(255)"))
        conn.execute(sa.text(f"CREATE INDEX ix_{table}_user_id ON {table} (user_id)"))
    _, session_id = logged_in(store, options, "alice")
    with store.engine.begin() as conn:  # as if written before the column existed
        conn.execute(sa.text(f"UPDATE {table} SET user_id = NULL"))  # noqa: S608
    manager = SessionManager(store, **options)
    assert manager.sessions_of("alice") == []
    assert manager.reindex_users() == 1
    assert [s.key_hash for s in manager.sessions_of("alice")] == [key_hash(session_id)]


def test_redis_a_touch_by_another_process_keeps_the_user_index(
    request: pytest.FixtureRequest,
) -> None:
    """A touch from a store object that never saw the record (another worker
    process) learns its user from the touch script and indexes it first: the
    session stays in its user's index past the expiry it was written with."""
    writer = STORE_SPECS["redis"].factory(request)
    toucher = STORE_SPECS["redis"].factory(request)
    try:
        user = "user-" + secrets.token_hex(6)
        prefix = "admin-touch:" + secrets.token_hex(6) + ":"
        key = prefix + secrets.token_hex(32)
        first = time.time() + 0.3
        assert writer.insert(key, b"v", first, user=user) is True
        assert toucher.touch(key, time.time() + 60) is True
        time.sleep(max(0.0, first + 0.2 - time.time()))
        assert [k for k, _ in toucher.iter_user_records(user, prefix)] == [key]
        assert [k for k, _ in writer.iter_user_records(user, prefix)] == [key]
        writer.delete(key)
        assert list(toucher.iter_user_records(user, prefix)) == []
    finally:
        writer.close()
        toucher.close()


def test_the_file_store_index_is_private_and_tidied(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    from wsgi_kvsession.stores import FileStore

    directory = tmp_path / "sessions"
    store = FileStore(directory)
    client, session_id = logged_in(store, options, "alice")
    users = directory / ".users"
    (user_dir,) = users.iterdir()
    (marker,) = user_dir.iterdir()
    assert users.stat().st_mode & 0o777 == 0o700
    assert user_dir.stat().st_mode & 0o777 == 0o700
    assert marker.stat().st_mode & 0o777 == 0o600
    assert (directory / marker.name).exists()  # named as the record file
    assert session_id not in str(list(directory.rglob("*")))
    client.get("/logout")
    assert list(users.iterdir()) == []  # the emptied user directory went too
