"""SQLiteStore's first use of a new database fails at once while another connection writes
(found by the soak).

The soak's first requests on SQLite (three gunicorn workers opening a new
``sessions.db`` together) sometimes answered 500:
``StoreError: ... cannot open the database: database is locked``, raised by
``PRAGMA journal_mode=WAL`` in ``SQLiteStore._connection``. Switching a
database that is not in WAL mode yet needs a write lock, and when another
connection holds one, SQLite returns ``SQLITE_BUSY`` at once instead of
waiting for the busy timeout (the statement already holds a read lock, so
waiting could deadlock). The store's ``timeout`` (5 s) is never used. Outside
the soak, three processes of four threads each doing a first insert into a new
database together hit it in 13 of 100 runs. The connection that failed is not
closed either: it keeps a file descriptor until the garbage collector finds it
(the soak counted 13 and 15 descriptors for 12 worker threads in those runs).

A bounded retry of the switch until the store's timeout (and closing the
connection when setting it up fails) fixes it: the same 100 runs then never fail.

This test makes it deterministic: a writer holds a write lock on a new database
for 0.3 s while the store is used for the first time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from wsgi_kvsession.stores import SQLiteStore

#: How long the other connection keeps its write lock.
HOLD = 0.3


def test_first_use_of_a_new_database_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    # Another worker is creating something in the new database right now.
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")
    release = threading.Timer(HOLD, writer.execute, ("COMMIT",))
    release.start()
    store = SQLiteStore(path, timeout=5.0)
    try:
        started = time.monotonic()
        assert store.insert("session:k", b"value", time.time() + 60)
        # It waited for the writer, within its timeout.
        assert time.monotonic() - started < 5.0 + 2.0
        assert store.load("session:k") is not None
    finally:
        release.join(10)
        store.close()
        writer.close()
