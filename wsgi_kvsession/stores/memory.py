"""An in-process store: for tests, development and single-process servers."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from .base import Record, Store, Version

log = logging.getLogger(__name__)


class MemoryStore(Store):
    """Keeps records in a dictionary guarded by one lock.

    Each process has its own copy, so under a server with several worker
    processes a session exists only in the worker that created it: use a
    shared store (SQLite, files, Redis, SQL) there.

    The store is bounded by ``max_entries``. When it is full, expired records
    are dropped first and then the least recently written ones, so an attacker
    who opens many sessions cannot exhaust memory, at the price of evicting
    live sessions; a warning is logged when that happens.

    Records written with ``user=`` are indexed by user in a dictionary beside
    them, so :meth:`iter_user_records` reads only that user's records.
    """

    indexes_users = True

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError(f"MemoryStore(max_entries={max_entries!r}): must be at least 1")
        self.max_entries = max_entries
        self._records: OrderedDict[str, Record] = OrderedDict()
        #: The user of each record written with one, and the reverse index.
        self._user_of: dict[str, str] = {}
        self._keys_of: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._versions = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryStore(max_entries={self.max_entries})"

    def _live(self, key: str, now: float) -> Record | None:
        record = self._records.get(key)
        if record is not None and record.expires_at <= now:
            self._remove(key)
            return None
        return record

    def _remove(self, key: str) -> None:
        """Drop ``key``'s record and its index entry (the lock is held)."""
        del self._records[key]
        self._set_user(key, None)

    def _set_user(self, key: str, user: str | None) -> None:
        old = self._user_of.pop(key, None)
        if old is not None and old != user:
            keys = self._keys_of[old]
            keys.discard(key)
            if not keys:
                del self._keys_of[old]
        if user is not None:
            self._user_of[key] = user
            self._keys_of.setdefault(user, set()).add(key)

    def _write(
        self, key: str, value: bytes, expires_at: float, version: Version, user: str | None
    ) -> None:
        self._records[key] = Record(value, expires_at, version)
        self._set_user(key, user)
        # Least recently written last-out: a write moves the key to the end.
        self._records.move_to_end(key)
        if len(self._records) > self.max_entries:
            self._evict()

    def _evict(self) -> None:
        now = time.time()
        for key in [k for k, r in self._records.items() if r.expires_at <= now]:
            self._remove(key)
        evicted = 0
        while len(self._records) > self.max_entries:
            key, _ = self._records.popitem(last=False)
            self._set_user(key, None)
            evicted += 1
        if evicted:
            log.warning(
                "MemoryStore is full (max_entries=%d): evicted %d live session(s); "
                "raise max_entries or use a persistent store",
                self.max_entries,
                evicted,
            )

    def load(self, key: str) -> Record | None:
        with self._lock:
            return self._live(key, time.time())

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        with self._lock:
            if self._live(key, time.time()) is not None:
                return False
            self._write(key, value, expires_at, next(self._versions), user)
            return True

    def update(
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        *,
        user: str | None = None,
    ) -> bool:
        with self._lock:
            current = self._live(key, time.time())
            if current is None or (version is not None and current.version != version):
                return False
            self._write(key, value, expires_at, next(self._versions), user)
            return True

    def delete(self, key: str, version: Version | None = None) -> bool:
        with self._lock:
            current = self._live(key, time.time())
            if current is None or (version is not None and current.version != version):
                return False
            self._remove(key)
            return True

    def touch(self, key: str, expires_at: float) -> bool:
        with self._lock:
            current = self._live(key, time.time())
            if current is None:
                return False
            self._records[key] = Record(current.value, expires_at, current.version)
            return True

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        now = time.time()
        with self._lock:
            snapshot = list(self._records.items())
        for key, record in snapshot:
            if record.expires_at > now and key.startswith(prefix):
                yield key, record

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        now = time.time()
        with self._lock:
            snapshot = [(k, self._records[k]) for k in self._keys_of.get(user, ())]
        for key, record in sorted(snapshot):
            if record.expires_at > now and key.startswith(prefix):
                yield key, record

    def cleanup(self) -> int:
        now = time.time()
        with self._lock:
            expired = [k for k, r in self._records.items() if r.expires_at <= now]
            for key in expired:
                self._remove(key)
        return len(expired)
