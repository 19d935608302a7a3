"""An adapter for any simplekv or minimalkv ``KeyValueStore``.

Flask-KVSession users keep the store objects they already configured
(simplekv's ``RedisStore``, ``FilesystemStore``, ``DictStore``,
``SQLAlchemyStore``, any of them wrapped in a ``PrefixDecorator``), and
minimalkv's S3, Azure, Google Cloud Storage and MongoDB stores become session
stores. Neither library is imported here: the adapter only calls ``get``,
``put``, ``delete`` and ``keys``/``iter_keys`` on the object it is given, so it
works with either library, and this module imports with neither installed.

What a ``KeyValueStore`` cannot do, and what follows from it:

* It has no insert-if-absent and no compare-and-set. Insert, update, delete
  and touch are a ``get`` followed by a ``put`` (check-then-act), so
  :attr:`SimpleKVStore.supports_versioning` is ``False``. The threads of one
  process are serialised per key by locks in the adapter, so within one
  process the check and the act are atomic; between processes (several
  gunicorn workers, several hosts) they are not. Two parallel requests of one
  session that change different keys may then overwrite each other (the
  session's merge still runs, but cannot be atomic), and a logout racing a
  slow request is closed down to the small window between that request's
  ``get`` and ``put``. Who needs more uses a native store: ``RedisStore``,
  ``SQLAlchemyStore``, ``SQLiteStore``, ``FileStore`` or ``MemcacheStore``.
* Its keys are restricted (``VALID_KEY_REGEXP`` of both libraries: letters,
  digits and ``!"`#$%&'()+,-.<=>?@[]^_{}~``; no ``:`` or ``/``) and, by the
  libraries' promise, only guaranteed up to 250 characters (a file name holds
  255 bytes). Session keys are ``key_prefix + sha256 hex`` with a prefix the
  user chooses, so they are mapped injectively into a safe alphabet (see
  :func:`encode_key`), and a key whose mapped form is too long is stored under
  a hash of it, the original key kept in the record so that listing returns it.
* It stores no expiry. Each value therefore starts with a small header
  (expiry, version token, lengths) checked on every read. Where the store has
  time-to-live support (``ttl_support``, which simplekv's and minimalkv's
  ``TimeToLiveMixin`` set), every ``put`` also passes ``ttl_secs`` rounded up
  to whole seconds, so the backend reaps expired records; elsewhere
  :meth:`SimpleKVStore.cleanup` scans the keys and removes expired records.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .base import Record, Store, StoreError, Version

log = logging.getLogger(__name__)

# Value layout: magic, expiry (unix time, float64), version (uint64), length of
# the stored key (uint16; 0 unless the name is a hash), length of the value
# (uint64), then the stored key and the value. The lengths tell a complete
# value from one cut off by a writer still at work (simplekv's and minimalkv's
# FilesystemStore write the file in place, not through a rename).
_MAGIC = b"WKV1"
_HEADER = struct.Struct(">4sdQHQ")

#: Characters a mapped key keeps as they are. Deliberately fewer than the
#: libraries allow: ``"<>?`` and friends are valid keys but not valid file
#: names on every system, nor comfortable in S3, Azure or GCS object names.
_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
#: Mapped names of keys stored under their hash: "~~" never appears in an
#: escaped name, where "~" is always followed by two hex digits.
_HASHED = "~~"
_HASHED_NAME = re.compile(r"~~[0-9a-f]{64}")
_MIN_KEY_LENGTH = len(_HASHED) + 64

#: Pauses between re-reads of a value that looks cut off mid-write (bounded).
_PARTIAL_READ_PAUSES = (0.002, 0.01, 0.05)
_LOCK_STRIPES = 64
#: ``scheme://user:password@`` in an error text from a wrapped store.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
#: Depth to which ``repr`` follows decorators (``_dstore``) to the real store.
_REPR_DEPTH = 4


def encode_key(key: str) -> str:
    """Map a session-store key to a name every ``KeyValueStore`` accepts.

    Letters, digits, ``_`` and ``-`` stay as they are, and ``:`` (as in the
    default prefix ``session:``) becomes ``.``, so the common key reads
    ``session.3f9a…``. Every other character, ``.`` and ``~`` included, becomes
    ``~`` and two upper-case hex digits per UTF-8 byte. Each character so maps
    to its own code and no code is the prefix of another, which makes the
    mapping injective and :func:`decode_key` its inverse. A leading ``:`` is
    escaped too, so a name never starts with ``.`` (no hidden file, never
    ``.`` or ``..``).
    """
    parts: list[str] = []
    for i, char in enumerate(key):
        if char in _KEEP:
            parts.append(char)
        elif char == ":" and i:
            parts.append(".")
        else:
            parts.extend(f"~{b:02X}" for b in char.encode("utf-8", "surrogatepass"))
    return "".join(parts)


def decode_key(name: str) -> str | None:
    """The key :func:`encode_key` maps to ``name``, or ``None`` if none does
    (a name some other program wrote into the same store)."""
    raw = bytearray()
    i = 0
    while i < len(name):
        char = name[i]
        if char == "~":
            try:
                raw.append(int(name[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
            continue
        raw += b":" if char == "." else char.encode("ascii", "replace")
        i += 1
    try:
        key = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    # Only the one canonical spelling is ours (not "~41" for "A", say).
    return key if encode_key(key) == name else None


@dataclass(frozen=True, slots=True)
class _Stored:
    """A value of ours as read back: header fields and payload."""

    expires_at: float
    version: int
    key: bytes
    value: bytes


class _Partial:
    """Marker: the value looks like ours, cut off by a writer still at work."""


_PARTIAL = _Partial()


def _parse(blob: bytes) -> _Stored | _Partial | None:
    """Decode a value; ``None`` for bytes that are not a record of ours."""
    if len(blob) < _HEADER.size:
        # An empty file is what an in-place writer leaves for a moment.
        return _PARTIAL if _MAGIC.startswith(blob[:4]) else None
    magic, expires_at, version, key_length, value_length = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        return None
    end = _HEADER.size + key_length + value_length
    if len(blob) < end:
        return _PARTIAL
    if len(blob) > end or not math.isfinite(expires_at):
        return None
    key = blob[_HEADER.size : _HEADER.size + key_length]
    return _Stored(expires_at, version, key, blob[_HEADER.size + key_length :])


def _describe(kvstore: object) -> str:
    """Class names of ``kvstore`` and the stores it decorates, never their repr
    (minimalkv stores may hold credentials in theirs)."""
    names: list[str] = []
    current: object = kvstore
    for _ in range(_REPR_DEPTH):
        cls = type(current)
        names.append(f"{cls.__module__.partition('.')[0]}.{cls.__name__}")
        inner = current.__dict__.get("_dstore") if hasattr(current, "__dict__") else None
        if inner is None:
            break
        current = inner
    return "(".join(names) + ")" * (len(names) - 1)


class SimpleKVStore(Store):
    """Keeps session records in a simplekv or minimalkv ``KeyValueStore``.

    ``kvstore`` is the store object itself (this adapter has no URL form:
    build the store with its library, e.g. ``minimalkv.get_store_from_url``,
    and pass it). Its client's own timeouts bound each call (for a Redis-backed
    store, give ``redis.Redis`` a ``socket_timeout`` and
    ``socket_connect_timeout``); every error it raises, other than the
    ``KeyError`` of a missing key, becomes a :class:`StoreError`.

    ``max_key_length`` is the longest name this adapter gives the store (250,
    the length both libraries promise every backend handles); a longer mapped
    key is stored under ``~~`` and its SHA-256.

    Thread-safe if the wrapped store is (simplekv's and minimalkv's stores are
    used from several threads by Flask-KVSession). Use one adapter object per
    store and process: the per-key locks live in the adapter.

    A ``KeyValueStore`` has no secondary index, so this adapter keeps none
    (:attr:`indexes_users` is False): ``user=`` is accepted on writes and not
    kept, and ``SessionManager.sessions_of`` / ``revoke_user`` find a user's
    sessions by listing every key and reading every record (a scan).
    """

    #: No atomic compare-and-set between processes (see the module docstring).
    supports_versioning = False

    def __init__(self, kvstore: Any, *, max_key_length: int = 250) -> None:
        if isinstance(kvstore, str | bytes | os.PathLike):
            raise ValueError(
                "SimpleKVStore(kvstore=...): pass a simplekv or minimalkv KeyValueStore "
                "object, not a URL or path; build one first, e.g. "
                "minimalkv.get_store_from_url(url)"
            )
        missing = [m for m in ("get", "put", "delete") if not callable(getattr(kvstore, m, None))]
        if not (
            callable(getattr(kvstore, "keys", None))
            or callable(getattr(kvstore, "iter_keys", None))
        ):
            missing.append("keys")
        if missing:
            raise ValueError(
                f"SimpleKVStore(kvstore=<{type(kvstore).__name__}>): not a KeyValueStore, "
                f"it has no {', '.join(m + '()' for m in missing)}; "
                "pass a simplekv or minimalkv store"
            )
        if max_key_length < _MIN_KEY_LENGTH:
            raise ValueError(
                f"SimpleKVStore(max_key_length={max_key_length!r}): must be at least "
                f"{_MIN_KEY_LENGTH} (a hashed name's length)"
            )
        self.kvstore = kvstore
        self.max_key_length = max_key_length
        # The libraries' own test (TimeToLiveMixin sets ttl_support = True, and
        # their decorators pass attribute lookups through to the inner store).
        # "is True" so that a mock or proxy answering anything does not count.
        self.ttl_support: bool = getattr(kvstore, "ttl_support", False) is True
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def __repr__(self) -> str:
        return f"SimpleKVStore({_describe(self.kvstore)})"

    # ------------------------------------------------------------ low level

    def _error(self, action: str, exc: BaseException) -> StoreError:
        text = _URL_PASSWORD.sub(r"\1***@", f"{type(exc).__name__}: {exc}")
        return StoreError(f"{self!r}: cannot {action}: {text}")

    def _name(self, key: str) -> str:
        name = encode_key(key)
        if len(name) > self.max_key_length:
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
            return _HASHED + digest
        if not name:
            raise ValueError("SimpleKVStore: a key must not be empty")
        return name

    def _lock(self, name: str) -> threading.Lock:
        return self._locks[hash(name) % _LOCK_STRIPES]

    def _get(self, name: str) -> bytes | None:
        try:
            blob = self.kvstore.get(name)
        except KeyError:
            return None
        except Exception as exc:
            raise self._error("read a record", exc) from exc
        return bytes(blob)

    def _read(self, name: str, key: str | None) -> _Stored | None:
        """The record of ours under ``name`` (live or expired), or None.

        ``key`` None skips the check of a hashed name's stored key (listing).
        """
        stored = self._read_complete(name)
        if stored is None:
            return None
        if (
            key is not None
            and name.startswith(_HASHED)
            and stored.key != key.encode("utf-8", "surrogatepass")
        ):
            return None
        return stored

    def _read_complete(self, name: str) -> _Stored | None:
        """Read and parse, reading again (a bounded number of times) while the
        value looks cut off by a writer still at work."""
        for pause in (*_PARTIAL_READ_PAUSES, None):
            blob = self._get(name)
            if blob is None:
                return None
            stored = _parse(blob)
            if isinstance(stored, _Stored):
                return stored
            if stored is None:
                # Not the name: another program's keys (Flask-KVSession's hold
                # raw session IDs) must not end up in logs.
                log.debug("%r: ignoring a value that is not a session record", self)
                return None
            if pause is not None:
                time.sleep(pause)
        log.warning("%r: ignoring a value that stays cut off", self)
        return None

    def _put(self, name: str, key: str, value: bytes, expires_at: float, version: int) -> None:
        stored_key = key.encode("utf-8", "surrogatepass") if name.startswith(_HASHED) else b""
        blob = (
            _HEADER.pack(_MAGIC, expires_at, version, len(stored_key), len(value))
            + stored_key
            + value
        )
        try:
            if self.ttl_support:
                # Whole seconds, rounded up, and at least 1: the backend must
                # never reap a record before its header says it expires, and
                # 0 or None would mean "no expiry" (or an error) to some stores.
                ttl = max(1, math.ceil(expires_at - time.time()))
                try:
                    self.kvstore.put(name, blob, ttl_secs=ttl)
                    return
                except TypeError as exc:
                    # A decorator whose put() drops the keyword (PrefixDecorator
                    # of simplekv 0.11): keep working, with cleanup() reaping.
                    if "ttl_secs" not in str(exc):
                        raise
                    log.warning(
                        "%r: the store claims ttl_support but its put() takes no "
                        "ttl_secs; storing without a TTL (run cleanup() regularly)",
                        self,
                    )
                    self.ttl_support = False
            self.kvstore.put(name, blob)
        except Exception as exc:
            raise self._error("write a record", exc) from exc

    def _remove(self, name: str) -> None:
        try:
            self.kvstore.delete(name)
        except KeyError:
            pass
        except Exception as exc:
            raise self._error("delete a record", exc) from exc

    @staticmethod
    def _new_version(old: int | None = None) -> int:
        # Random, not a counter: a key deleted and written again never repeats
        # a version an old reader still holds.
        while True:
            version = secrets.randbits(63)
            if version != old:
                return version

    def _names(self) -> list[str]:
        lister = getattr(self.kvstore, "keys", None) or self.kvstore.iter_keys
        for attempt in range(3):
            try:
                return [str(name) for name in lister()]
            except RuntimeError as exc:
                # A DictStore listed while another thread writes to it.
                if "changed size during iteration" in str(exc) and attempt < 2:
                    continue
                raise self._error("list the keys", exc) from exc
            except Exception as exc:
                raise self._error("list the keys", exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------- protocol

    def load(self, key: str) -> Record | None:
        stored = self._read(self._name(key), key)
        if stored is None or stored.expires_at <= time.time():
            return None
        return Record(stored.value, stored.expires_at, stored.version)

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        name = self._name(key)
        with self._lock(name):
            current = self._read(name, key)
            if current is not None and current.expires_at > time.time():
                return False
            # Check-then-act: another process may insert between the read and
            # this put (see the module docstring).
            self._put(name, key, value, expires_at, self._new_version())
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
        name = self._name(key)
        with self._lock(name):
            current = self._read(name, key)
            if current is None or current.expires_at <= time.time():
                return False
            if version is not None and current.version != version:
                return False
            self._put(name, key, value, expires_at, self._new_version(current.version))
            return True

    def delete(self, key: str, version: Version | None = None) -> bool:
        name = self._name(key)
        with self._lock(name):
            current = self._read(name, key)
            if current is None:
                return False  # nothing, or not ours: leave it alone
            if current.expires_at <= time.time():
                self._remove(name)  # an expired record of ours: tidy up
                return False
            if version is not None and current.version != version:
                return False
            self._remove(name)
            return True

    def touch(self, key: str, expires_at: float) -> bool:
        name = self._name(key)
        with self._lock(name):
            current = self._read(name, key)
            if current is None or current.expires_at <= time.time():
                return False
            # The whole value is rewritten (a KeyValueStore cannot change only
            # an expiry), with the same version. Between the read and this put,
            # another process may delete the record (a logout) or change it:
            # this put then brings the old record back. That is the price of a
            # store without compare-and-set, and why the docs say so.
            self._put(name, key, current.value, expires_at, current.version)
            return True

    def _key_of(self, name: str, stored: _Stored) -> str | None:
        if _HASHED_NAME.fullmatch(name):
            try:
                key = stored.key.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                return None
            return key if self._name(key) == name else None
        decoded = decode_key(name)
        return decoded if decoded and self._name(decoded) == name else None

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """Every live record, with its original key.

        Lists all keys of the wrapped store first (simplekv's and minimalkv's
        Redis stores do so with ``KEYS``, which blocks a large Redis for a
        while: prefer :class:`RedisStore` there). Values that are not records
        of ours (Flask-KVSession's pickles, anything else) are skipped.
        """
        for name in self._names():
            decoded = decode_key(name)
            if decoded is None and not _HASHED_NAME.fullmatch(name):
                continue  # not a name this adapter writes: do not even read it
            if decoded is not None and not decoded.startswith(prefix):
                continue
            stored = self._read(name, None)
            if stored is None or stored.expires_at <= time.time():
                continue
            key = self._key_of(name, stored)
            if key is not None and key.startswith(prefix):
                yield key, Record(stored.value, stored.expires_at, stored.version)

    def cleanup(self) -> int:
        """Remove expired records of ours and return how many.

        With a store that has time-to-live support the backend reaps them and
        this returns 0 without listing anything.
        """
        if self.ttl_support:
            return 0
        removed = 0
        for name in self._names():
            if decode_key(name) is None and not _HASHED_NAME.fullmatch(name):
                continue
            stored = self._read(name, None)
            if stored is None or stored.expires_at > time.time():
                continue
            with self._lock(name):
                # Read again under the lock: it may have been written since.
                again = self._read(name, None)
                if again is not None and again.expires_at <= time.time():
                    self._remove(name)
                    removed += 1
        return removed

    def close(self) -> None:
        """Nothing to release: the wrapped store and its connections are the caller's."""
