"""A store that keeps one file per session in a directory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from .base import Record, Store, StoreError, Version

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# File layout: magic, expiry (unix time, float64), version (uint64), value length
# (uint64), then the value. The length tells a complete file from a cut-off one.
_MAGIC = b"KVF1"
_HEADER = struct.Struct(">4sdQQ")
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_LOCK_STRIPES = 64
_STALE_TEMP_SECONDS = 3600.0


def _file_name(key: str) -> str:
    # Every character outside [A-Za-z0-9_-] is percent-encoded, so a name can
    # never contain "/" or start with "." (no traversal, no clash with the
    # store's own ".tmp-" and ".locks" entries), whatever key_prefix holds.
    name = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in key)
    if len(name) > 255:
        raise ValueError(f"FileStore: key {key[:40]!r}... is too long for a file name")
    return name


class FileStore(Store):
    """Keeps each record in its own file, named after the (already hashed) key.

    Writes go to a temporary file that replaces the record atomically, so a
    reader sees the old or the new record, never half of one. Inserts, updates,
    touches and deletes of one key are serialised across threads and processes
    by ``flock`` on one of 64 lock files, so the insert-if-absent and
    compare-and-set rules hold under a multi-process server sharing the
    directory (a local file system: ``flock`` is not reliable over NFS).

    ``fsync=True`` flushes each write to disk before it replaces the record; off
    by default because sessions are short-lived and the cost is a disk flush per
    write.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise RuntimeError("FileStore needs POSIX file locks (fcntl); use SQLiteStore")
        self.directory = Path(directory).absolute()
        self.fsync = fsync
        self._lock_dir = self.directory / ".locks"
        self._ready = False

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    def _error(self, action: str, exc: OSError) -> StoreError:
        return StoreError(f"{self!r}: cannot {action}: {exc.strerror or exc}")

    def _path(self, key: str) -> Path:
        return self.directory / _file_name(key)

    def _ensure_dirs(self) -> None:
        if not self._ready:
            try:
                # Private: the files hold other users' sessions.
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._lock_dir.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise self._error("create the directory", exc) from exc
            self._ready = True

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        self._ensure_dirs()
        stripe = hashlib.sha256(key.encode()).digest()[0] % _LOCK_STRIPES
        try:
            fd = os.open(self._lock_dir / f"{stripe:02d}", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._error("open a lock file", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _read(self, path: Path, now: float) -> Record | None:
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("read a session file", exc) from exc
        if len(blob) < _HEADER.size or blob[:4] != _MAGIC:
            log.warning("%r: ignoring a file that is not a session record: %s", self, path.name)
            return None
        _, expires_at, version, length = _HEADER.unpack_from(blob)
        if len(blob) != _HEADER.size + length:
            log.warning("%r: ignoring a truncated session file %s", self, path.name)
            return None
        if expires_at <= now:
            return None
        return Record(blob[_HEADER.size :], expires_at, version)

    def _write(self, path: Path, value: bytes, expires_at: float, version: int) -> None:
        temp = self.directory / f".tmp-{secrets.token_hex(8)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, _HEADER.pack(_MAGIC, expires_at, version, len(value)) + value)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._error("write a session file (the disk is full)", exc) from exc
            raise self._error("write a session file", exc) from exc

    def load(self, key: str) -> Record | None:
        return self._read(self._path(key), time.time())

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:
        path = self._path(key)
        with self._locked(key):
            if self._read(path, time.time()) is not None:
                return False
            # A random first version: a record deleted and created again under
            # the same key never repeats a version an old reader holds.
            self._write(path, value, expires_at, secrets.randbits(62))
            return True

    def update(
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
        path = self._path(key)
        with self._locked(key):
            current = self._read(path, time.time())
            if current is None or (version is not None and current.version != version):
                return False
            self._write(path, value, expires_at, int(current.version) + 1)
            return True

    def delete(self, key: str, version: Version | None = None) -> bool:
        path = self._path(key)
        with self._locked(key):
            current = self._read(path, time.time())
            if version is not None and (current is None or current.version != version):
                return False
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise self._error("delete a session file", exc) from exc
            return current is not None

    def touch(self, key: str, expires_at: float) -> bool:
        path = self._path(key)
        with self._locked(key):
            current = self._read(path, time.time())
            if current is None:
                return False
            self._write(path, current.value, expires_at, int(current.version))
            return True

    def _entries(self) -> Iterator[os.DirEntry[str]]:
        """The directory's regular files that may be records (not ours: ".*")."""
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                        yield entry
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("list the directory", exc) from exc

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        now = time.time()
        for entry in self._entries():
            key = unquote(entry.name)
            if not key.startswith(prefix):
                continue
            record = self._read(Path(entry.path), now)
            if record is not None:
                yield key, record

    def cleanup(self) -> int:
        now = time.time()
        removed = 0
        self._remove_stale_temp_files(now)
        for entry in list(self._entries()):
            key = unquote(entry.name)
            if _file_name(key) != entry.name:
                continue  # not a name this store writes: not ours
            path = Path(entry.path)
            with self._locked(key):
                try:
                    with open(path, "rb") as f:
                        header = f.read(_HEADER.size)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise self._error("read a session file", exc) from exc
                if header[:4] != _MAGIC:
                    continue  # not a record of ours: leave it alone
                # A record of ours cut short is unreadable anyway: remove it.
                if len(header) < _HEADER.size or _HEADER.unpack(header)[1] <= now:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    removed += 1
        return removed

    def _remove_stale_temp_files(self, now: float) -> None:
        """Remove temporary files left behind by a process killed mid-write."""
        try:
            with os.scandir(self.directory) as entries:
                stale = [
                    e.path
                    for e in entries
                    if e.name.startswith(".tmp-")
                    and e.stat(follow_symlinks=False).st_mtime < now - _STALE_TEMP_SECONDS
                ]
        except OSError:
            return
        for path in stale:
            with contextlib.suppress(OSError):
                os.unlink(path)
