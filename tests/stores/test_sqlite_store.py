"""SQLiteStore beyond the shared contract: WAL, schema, validation, sharing, fork."""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support import assert_instances_share_records, write_in_forked_child
from wsgi_kvsession.stores import SQLiteStore, StoreError

TTL = 60.0


def later(seconds: float = TTL) -> float:
    return time.time() + seconds


def new_key() -> str:
    return "session:" + secrets.token_hex(32)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def sqlite_store(db_path: Path) -> SQLiteStore:
    return SQLiteStore(db_path)


def test_construction_touches_nothing(db_path: Path) -> None:
    SQLiteStore(db_path)
    assert not db_path.exists()


def test_wal_journal_mode_is_on(sqlite_store: SQLiteStore, db_path: Path) -> None:
    assert sqlite_store.insert(new_key(), b"value", later()) is True
    conn = sqlite3.connect(db_path)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    assert mode.lower() == "wal"


def test_the_table_has_an_index_on_expires_at(sqlite_store: SQLiteStore, db_path: Path) -> None:
    assert sqlite_store.insert(new_key(), b"value", later()) is True
    conn = sqlite3.connect(db_path)
    try:
        indexes = [row[1] for row in conn.execute("PRAGMA index_list(kvsession)")]
        indexed_columns = {
            name: [col[2] for col in conn.execute(f"PRAGMA index_info({name})")] for name in indexes
        }
    finally:
        conn.close()
    assert ["expires_at"] in indexed_columns.values(), indexed_columns


def test_a_custom_table_name_is_used(db_path: Path) -> None:
    store = SQLiteStore(db_path, table="app_sessions")
    key = new_key()
    assert store.insert(key, b"value", later()) is True
    store.close()
    conn = sqlite3.connect(db_path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        (count,) = conn.execute("SELECT count(*) FROM app_sessions").fetchone()
    finally:
        conn.close()
    assert "app_sessions" in tables
    assert "kvsession" not in tables
    assert count == 1


@pytest.mark.parametrize(
    "table",
    [
        "",
        "bad-name",
        "sessions; DROP TABLE users",
        'x"y',
        "1sessions",
        "has space",
        "t" * 64,
        "caf\u00e9",
    ],
)
def test_a_bad_table_name_raises_value_error_at_construction(db_path: Path, table: str) -> None:
    with pytest.raises(ValueError, match="table"):
        SQLiteStore(db_path, table=table)
    assert not db_path.exists()


@pytest.mark.parametrize("table", ["order", "select", "group", "sqlite_sessions"])
def test_a_table_name_sqlite_rejects_fails_at_construction_or_works(
    db_path: Path, table: str
) -> None:
    try:
        store = SQLiteStore(db_path, table=table)
    except ValueError:
        return  # rejected up front: fine
    key = new_key()
    assert store.insert(key, b"value", later()) is True  # otherwise it must just work
    record = store.load(key)
    assert record is not None
    assert record.value == b"value"


@pytest.mark.parametrize("path", [":memory:", "", "file::memory:?cache=shared"])
def test_an_in_memory_database_raises_value_error(path: str) -> None:
    with pytest.raises(ValueError, match="MemoryStore"):
        SQLiteStore(path)


def test_two_instances_on_one_file_see_each_others_writes(db_path: Path) -> None:
    one, two = SQLiteStore(db_path), SQLiteStore(db_path)
    try:
        assert_instances_share_records(one, two, new_key())
    finally:
        one.close()
        two.close()


def test_records_survive_a_new_instance(db_path: Path) -> None:
    key = new_key()
    expires_at = later()
    first = SQLiteStore(db_path)
    assert first.insert(key, bytes(range(256)), expires_at) is True
    original = first.load(key)
    assert original is not None
    first.close()
    second = SQLiteStore(db_path)
    try:
        record = second.load(key)
        assert record is not None
        assert record.value == bytes(range(256))
        assert record.expires_at == pytest.approx(expires_at, abs=1e-6)
        assert record.version == original.version
    finally:
        second.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_store_used_before_fork_works_in_the_child(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    key, child_key = new_key(), new_key()
    assert store.insert(key, b"parent", later()) is True  # the parent's connection is open

    write_in_forked_child(store, key, child_key, later())
    # The parent's own connection still works and sees the child's writes.
    record = store.load(key)
    assert record is not None
    assert record.value == b"child"
    child_record = store.load(child_key)
    assert child_record is not None
    assert child_record.value == b"from the child"
    store.close()


def test_an_unwritable_path_gives_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    store = SQLiteStore(blocker / "s.db")  # constructing touches nothing
    secret = secrets.token_hex(32)
    with pytest.raises(StoreError, match="SQLiteStore") as info:
        store.insert("session:" + secret, b"value", later())
    assert secret not in str(info.value)
    with pytest.raises(StoreError, match="SQLiteStore"):
        store.load("session:" + secret)


def test_a_file_that_is_not_a_database_gives_store_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not an SQLite database, just some text\n" * 100)
    store = SQLiteStore(db_path)
    with pytest.raises(StoreError, match="SQLiteStore"):
        store.load(new_key())


def test_cleanup_counts_across_batches(sqlite_store: SQLiteStore) -> None:
    keys = [new_key() for _ in range(25)]
    for k in keys:
        assert sqlite_store.insert(k, b"value", later()) is True
        assert sqlite_store.touch(k, time.time() - 10) is True
    live = new_key()
    assert sqlite_store.insert(live, b"live", later()) is True
    assert sqlite_store.cleanup(batch_size=10) == 25
    assert sqlite_store.cleanup(batch_size=10) == 0
    assert sqlite_store.load(live) is not None


def test_iter_records_pages_through_many_records(sqlite_store: SQLiteStore) -> None:
    keys = {new_key() for _ in range(1203)}
    for k in keys:
        assert sqlite_store.insert(k, k.encode(), later()) is True
    listed = dict(sqlite_store.iter_records())
    assert set(listed) == keys
    assert all(record.value == k.encode() for k, record in listed.items())
