"""The embedded default store: one SQLite database file, shared by processes."""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from .base import Record, Store, StoreError, Version


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the base class cannot)."""


_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class SQLiteStore(Store):
    """Keeps records in a table of an SQLite database file.

    The database runs in WAL mode, so readers never wait for the writer, and
    every write is a single statement (an atomic transaction of its own): the
    insert is an upsert that only replaces an *expired* row, the update is
    ``UPDATE … WHERE version = ?`` judged by its row count. Several worker
    processes can share the file; each thread of each process opens its own
    connection, reopened after a ``fork()``.

    The user a record belongs to (``user=``) is kept in a ``user_id`` column
    with a partial index (only rows that have a user), written by the same
    statement as the record. A table made by an earlier version gains the
    column and the index on first use.
    """

    indexes_users = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "kvsession",
        timeout: float = 5.0,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table) or table.lower().startswith("sqlite_"):
            raise ValueError(
                f"SQLiteStore(table={table!r}): use letters, digits and underscores, "
                "not starting with 'sqlite_' (reserved by SQLite)"
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
        # Quoted, so that names SQLite reserves as keywords (order, group) work.
        self._t = f'"{table}"'
        self._local = threading.local()
        self._schema_ready = False
        self._lock = threading.Lock()
        #: Every open connection, so that close() reaches other threads' too;
        #: weak, so a connection goes away with the thread that opened it.
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        #: Bumped by close(): a thread holding an older connection reopens.
        self._generation = 0

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, table={self.table!r})"

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if (
            conn is not None
            and self._local.pid == os.getpid()
            and self._local.generation == self._generation
        ):
            return conn
        try:
            # isolation_level=None: autocommit, each statement its own transaction.
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
                factory=_Connection,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self!r}: cannot open the database: {exc}") from exc
        try:
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            conn.close()  # not left to the garbage collector: it holds a descriptor
            raise StoreError(f"{self!r}: cannot open the database: {exc}") from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        self._local.generation = self._generation
        with self._lock:
            self._connections.add(conn)
        if not self._schema_ready:
            self._create_schema(conn)
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the database to WAL, waiting (up to ``timeout``) for other writers.

        On a database not in WAL mode yet (a new file), the switch needs a write
        lock, and SQLite answers "database is locked" at once, without its busy
        timeout, when another connection is writing (waiting could deadlock): as
        happens when several workers open a new database together.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if self._schema_ready:
                return
            t = self._t
            try:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {t} ("
                    " key TEXT PRIMARY KEY,"
                    " value BLOB NOT NULL,"
                    " expires_at REAL NOT NULL,"
                    " version INTEGER NOT NULL,"
                    " user_id TEXT"
                    ") WITHOUT ROWID"
                )
                self._add_user_column(conn)
                index = f'"{self.table}_expires_at"'
                conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)")
                # Partial: anonymous sessions, usually most of them, cost the
                # index nothing; "user_id = ?" implies "IS NOT NULL", so
                # SQLite uses it for a user's lookup.
                index = f'"{self.table}_user_id"'
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {index} ON {t} (user_id, key)"
                    " WHERE user_id IS NOT NULL"
                )
            except sqlite3.Error as exc:
                raise StoreError(f"{self!r}: cannot create the table: {exc}") from exc
            self._schema_ready = True

    def _add_user_column(self, conn: sqlite3.Connection) -> None:
        """Add the ``user_id`` column to a table made before it existed."""
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({self._t})")}
        if "user_id" in columns:
            return
        try:
            conn.execute(f"ALTER TABLE {self._t} ADD COLUMN user_id TEXT")
        except sqlite3.OperationalError as exc:
            # Another process added it first.
            if "duplicate column" not in str(exc):
                raise

    def _execute(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self!r}: {exc}") from exc

    def load(self, key: str) -> Record | None:
        row = self._execute(
            f"SELECT value, expires_at, version FROM {self._t}"  # noqa: S608 - validated name
            " WHERE key = ? AND expires_at > ?",
            (key, time.time()),
        ).fetchone()
        return None if row is None else Record(bytes(row[0]), row[1], row[2])

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        # An expired row still holding the key counts as absent: replace it.
        # The first version is random, so a key deleted and created again never
        # repeats a version that an old reader still holds.
        cursor = self._execute(
            f"INSERT INTO {self._t} (key, value, expires_at, version, user_id)"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " expires_at = excluded.expires_at, version = version + 1,"
            " user_id = excluded.user_id"
            f" WHERE {self._t}.expires_at <= ?",
            (key, value, expires_at, secrets.randbits(62), user, time.time()),
        )
        return cursor.rowcount == 1

    def update(
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        *,
        user: str | None = None,
    ) -> bool:
        sql = (
            f"UPDATE {self._t} SET value = ?, expires_at = ?, version = version + 1,"  # noqa: S608
            " user_id = ? WHERE key = ? AND expires_at > ?"
        )
        params: tuple[object, ...] = (value, expires_at, user, key, time.time())
        if version is not None:
            sql += " AND version = ?"
            params += (version,)
        return self._execute(sql, params).rowcount == 1

    def delete(self, key: str, version: Version | None = None) -> bool:
        # Only a live row counts; an expired one is left to cleanup() (and an
        # insert replaces it).
        sql = f"DELETE FROM {self._t} WHERE key = ? AND expires_at > ?"  # noqa: S608
        params: tuple[object, ...] = (key, time.time())
        if version is not None:
            sql += " AND version = ?"
            params += (version,)
        return self._execute(sql, params).rowcount == 1

    def touch(self, key: str, expires_at: float) -> bool:
        cursor = self._execute(
            f"UPDATE {self._t} SET expires_at = ?"  # noqa: S608
            " WHERE key = ? AND expires_at > ?",
            (expires_at, key, time.time()),
        )
        return cursor.rowcount == 1

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        return self._pages("", (), prefix)

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        # Through the partial index on (user_id, key).
        return self._pages("user_id = ? AND ", (user,), prefix)

    def _pages(
        self, condition: str, params: tuple[str, ...], prefix: str
    ) -> Iterator[tuple[str, Record]]:
        """The live records under ``prefix`` that also meet ``condition``.

        Pages by key so that a long listing holds no read transaction open.
        Keys under a prefix are one contiguous range of the key order: start
        at the prefix, stop at the first key past it.
        """
        last = ""
        while True:
            rows = self._execute(
                f"SELECT key, value, expires_at, version FROM {self._t}"  # noqa: S608
                f" WHERE {condition}key >= ? AND key > ? AND expires_at > ?"
                " ORDER BY key LIMIT 500",
                (*params, prefix, last, time.time()),
            ).fetchall()
            if not rows:
                return
            for key, value, expires_at, version in rows:
                if not key.startswith(prefix):
                    if key > prefix:
                        return
                    continue
                yield key, Record(bytes(value), expires_at, version)
            last = rows[-1][0]

    def cleanup(self, batch_size: int = 1000) -> int:
        removed = 0
        now = time.time()
        while True:
            # Small batches keep each write transaction, and so each stall of
            # the other writers, short.
            count = self._execute(
                f"DELETE FROM {self._t} WHERE key IN ("  # noqa: S608
                f" SELECT key FROM {self._t} WHERE expires_at <= ? LIMIT ?)",
                (now, batch_size),
            ).rowcount
            removed += count
            if count < batch_size:
                return removed

    def close(self) -> None:
        """Close every connection of every thread; the next use reopens."""
        with self._lock:
            connections = list(self._connections)
            self._connections = weakref.WeakSet()
            self._generation += 1
        for conn in connections:
            conn.close()
