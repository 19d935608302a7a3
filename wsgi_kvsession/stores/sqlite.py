"""The embedded default store: one SQLite database file, shared by processes."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .base import Record, Store, StoreError, Version

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class SQLiteStore(Store):
    """Keeps records in a table of an SQLite database file.

    The database runs in WAL mode, so readers never wait for the writer, and
    every write is a single statement (an atomic transaction of its own): the
    insert is an upsert that only replaces an *expired* row, the update is
    ``UPDATE … WHERE version = ?`` judged by its row count. Several worker
    processes can share the file; each thread of each process opens its own
    connection, reopened after a ``fork()``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "kvsession",
        timeout: float = 5.0,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(
                f"SQLiteStore(table={table!r}): use letters, digits and underscores only"
            )
        path_str = os.fspath(path)
        if path_str in ("", ":memory:") or path_str.startswith("file::memory:"):
            raise ValueError(
                "SQLiteStore needs a database file shared by every request; "
                "for an in-process store use MemoryStore"
            )
        self.path = Path(path_str).absolute()
        self.table = table
        self.timeout = timeout
        self._local = threading.local()
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, table={self.table!r})"

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            # isolation_level=None: autocommit, each statement its own transaction.
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"{self!r}: cannot open the database: {exc}") from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        if not self._schema_ready:
            self._create_schema(conn)
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            t = self.table
            try:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {t} ("
                    " key TEXT PRIMARY KEY,"
                    " value BLOB NOT NULL,"
                    " expires_at REAL NOT NULL,"
                    " version INTEGER NOT NULL"
                    ") WITHOUT ROWID"
                )
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)")
            except sqlite3.Error as exc:
                raise StoreError(f"{self!r}: cannot create the table: {exc}") from exc
            self._schema_ready = True

    def _execute(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self!r}: {exc}") from exc

    def load(self, key: str) -> Record | None:
        row = self._execute(
            f"SELECT value, expires_at, version FROM {self.table}"  # noqa: S608 - validated name
            " WHERE key = ? AND expires_at > ?",
            (key, time.time()),
        ).fetchone()
        return None if row is None else Record(bytes(row[0]), row[1], row[2])

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:
        # An expired row still holding the key counts as absent: replace it.
        cursor = self._execute(
            f"INSERT INTO {self.table} (key, value, expires_at, version) VALUES (?, ?, ?, 1)"  # noqa: S608
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " expires_at = excluded.expires_at, version = version + 1"
            f" WHERE {self.table}.expires_at <= ?",
            (key, value, expires_at, time.time()),
        )
        return cursor.rowcount == 1

    def update(
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
        sql = (
            f"UPDATE {self.table} SET value = ?, expires_at = ?, version = version + 1"  # noqa: S608
            " WHERE key = ? AND expires_at > ?"
        )
        params: tuple[object, ...] = (value, expires_at, key, time.time())
        if version is not None:
            sql += " AND version = ?"
            params += (version,)
        return self._execute(sql, params).rowcount == 1

    def delete(self, key: str) -> None:
        self._execute(f"DELETE FROM {self.table} WHERE key = ?", (key,))  # noqa: S608

    def touch(self, key: str, expires_at: float) -> bool:
        cursor = self._execute(
            f"UPDATE {self.table} SET expires_at = ?"  # noqa: S608
            " WHERE key = ? AND expires_at > ?",
            (expires_at, key, time.time()),
        )
        return cursor.rowcount == 1

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        # Pages by key so that a long listing holds no read transaction open.
        last = ""
        while True:
            rows = self._execute(
                f"SELECT key, value, expires_at, version FROM {self.table}"  # noqa: S608
                " WHERE key > ? AND expires_at > ? ORDER BY key LIMIT 500",
                (last, time.time()),
            ).fetchall()
            if not rows:
                return
            for key, value, expires_at, version in rows:
                yield key, Record(bytes(value), expires_at, version)
            last = rows[-1][0]

    def cleanup(self, batch_size: int = 1000) -> int:
        removed = 0
        now = time.time()
        while True:
            # Small batches keep each write transaction, and so each stall of
            # the other writers, short.
            count = self._execute(
                f"DELETE FROM {self.table} WHERE key IN ("  # noqa: S608
                f" SELECT key FROM {self.table} WHERE expires_at <= ? LIMIT ?)",
                (now, batch_size),
            ).rowcount
            removed += count
            if count < batch_size:
                return removed

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
