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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from .base import Record, Store, StoreError, Version

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# File layout: magic, expiry (unix time, float64), version (uint64), value length
# (uint64), user length (uint32; _NO_USER for none), then the user (UTF-8) and
# the value. The lengths tell a complete file from a cut-off one. Files of the
# first format (KVF1: no user field) are still read, as records of no user.
_MAGIC = b"KVF2"
_HEADER = struct.Struct(">4sdQQI")
_MAGIC_V1 = b"KVF1"
_HEADER_V1 = struct.Struct(">4sdQQ")
_NO_USER = 0xFFFFFFFF
#: The per-user index: ``.users/<sha256 of the user>/<record file name>``, one
#: empty marker file per record of the user.
_USERS = ".users"
#: Attempts to create a marker while other writers empty (and remove) its
#: user directory at the same moment.
_MARKER_ATTEMPTS = 5
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_LOCK_STRIPES = 64
_STALE_TEMP_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class _Entry:
    """A record file as read back, live or expired."""

    expires_at: float
    version: int
    user: str | None
    value: bytes


def _user_bytes(user: str) -> bytes:
    return user.encode("utf-8", "surrogatepass")


def _parse_head(blob: bytes) -> tuple[float, int, str | None, int, int] | None:
    """``(expires_at, version, user, offset of the value, value length)`` from
    the start of a record file, or None when it is not (or not yet, being cut
    short) a record's start. ``blob`` must hold the header and the user."""
    if blob[:4] == _MAGIC_V1 and len(blob) >= _HEADER_V1.size:
        _, expires_at, version, length = _HEADER_V1.unpack_from(blob)
        return expires_at, version, None, _HEADER_V1.size, length
    if blob[:4] != _MAGIC or len(blob) < _HEADER.size:
        return None
    _, expires_at, version, length, user_length = _HEADER.unpack_from(blob)
    if user_length == _NO_USER:
        return expires_at, version, None, _HEADER.size, length
    end = _HEADER.size + user_length
    if len(blob) < end:
        return None
    try:
        user = blob[_HEADER.size : end].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    return expires_at, version, user, end, length


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, or raise :class:`OSError`.

    ``os.write`` may write only part of a buffer and return the count without
    an error: a file system that runs out of space in the middle of a write
    does exactly that (the *next* write raises ``ENOSPC``). Unchecked, the
    short temporary file would then replace a good record.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - write(2) reports no progress as an error
            raise OSError(errno.EIO, "no progress writing a session file")
        view = view[written:]


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

    Records written with ``user=`` are indexed by user: an empty marker file
    ``.users/<sha256 of the user>/<record file name>``, created before the
    record is written and removed after it is deleted or passes to another
    user (both under the record's lock), so :meth:`iter_user_records` lists one
    small directory. Each record file also names its user, so a marker left
    by a crash is recognised as stale and removed.
    """

    indexes_users = True

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise RuntimeError("FileStore needs POSIX file locks (fcntl); use SQLiteStore")
        self.directory = Path(directory).absolute()
        self.fsync = fsync
        self._lock_dir = self.directory / ".locks"
        self._users_dir = self.directory / _USERS
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
                # (The .users index directory comes with the first user's marker.)
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

    def _read_entry(self, path: Path) -> _Entry | None:
        """The record in ``path``, live or expired; None if there is none."""
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("read a session file", exc) from exc
        if blob[:4] not in (_MAGIC, _MAGIC_V1):
            log.warning("%r: ignoring a file that is not a session record: %s", self, path.name)
            return None
        head = _parse_head(blob)
        if head is None or len(blob) != head[3] + head[4]:
            log.warning("%r: ignoring a truncated session file %s", self, path.name)
            return None
        expires_at, version, user, offset, _ = head
        return _Entry(expires_at, version, user, blob[offset:])

    def _read(self, path: Path, now: float) -> Record | None:
        entry = self._read_entry(path)
        if entry is None or entry.expires_at <= now:
            return None
        return Record(entry.value, entry.expires_at, entry.version)

    def _write(
        self, path: Path, value: bytes, expires_at: float, version: int, user: str | None
    ) -> None:
        temp = self.directory / f".tmp-{secrets.token_hex(8)}"
        if user is None:
            head = _HEADER.pack(_MAGIC, expires_at, version, len(value), _NO_USER)
        else:
            name = _user_bytes(user)
            head = _HEADER.pack(_MAGIC, expires_at, version, len(value), len(name)) + name
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, head + value)
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

    # -- the per-user index (every call under the record's lock) -----------

    def _marker(self, user: str, key: str) -> Path:
        digest = hashlib.sha256(_user_bytes(user)).hexdigest()
        return self._users_dir / digest / _file_name(key)

    def _add_marker(self, user: str, key: str) -> None:
        marker = self._marker(user, key)
        # Bounded: another key's writer may remove the (then empty) user
        # directory between our mkdir and our create.
        for attempt in range(_MARKER_ATTEMPTS):
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600))
                return
            except FileNotFoundError as exc:
                if attempt == _MARKER_ATTEMPTS - 1:
                    raise self._error("index a session by user", exc) from exc
                try:
                    # Private, as the store's directory: 0o700 at each level.
                    self._users_dir.mkdir(mode=0o700, exist_ok=True)
                    marker.parent.mkdir(mode=0o700, exist_ok=True)
                except FileExistsError:
                    # mkdir found it, then it was gone when Path.mkdir checked it
                    # was a directory: another writer removed it. Try again.
                    continue
                except OSError as mkdir_exc:
                    raise self._error("index a session by user", mkdir_exc) from mkdir_exc
            except OSError as exc:
                raise self._error("index a session by user", exc) from exc
        # Every attempt lost its directory to another writer's cleanup.
        raise self._error(
            "index a session by user", FileExistsError(errno.EEXIST, "directory kept vanishing")
        )

    def _remove_marker(self, user: str, key: str) -> None:
        marker = self._marker(user, key)
        try:
            marker.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._error("update the index of sessions by user", exc) from exc
        with contextlib.suppress(OSError):  # not empty (the usual case), or gone
            marker.parent.rmdir()

    def _write_for(
        self,
        key: str,
        path: Path,
        old: _Entry | None,
        value: bytes,
        expires_at: float,
        version: int,
        user: str | None,
    ) -> None:
        """Write a record of ``user`` over ``old``, keeping the index right.

        The new user's marker comes first and the old user's goes last, so a
        crash in between leaves a marker too many (recognised as stale), never
        a record missing from its user's index.
        """
        if user is not None:
            self._add_marker(user, key)
        self._write(path, value, expires_at, version, user)
        if old is not None and old.user is not None and old.user != user:
            self._remove_marker(old.user, key)

    # -- the protocol ------------------------------------------------------

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        path = self._path(key)
        with self._locked(key):
            old = self._read_entry(path)
            if old is not None and old.expires_at > time.time():
                return False
            # A random first version: a record deleted and created again under
            # the same key never repeats a version an old reader holds.
            self._write_for(key, path, old, value, expires_at, secrets.randbits(62), user)
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
        path = self._path(key)
        with self._locked(key):
            current = self._read_entry(path)
            if (
                current is None
                or current.expires_at <= time.time()
                or (version is not None and current.version != version)
            ):
                return False
            self._write_for(key, path, current, value, expires_at, current.version + 1, user)
            return True

    def delete(self, key: str, version: Version | None = None) -> bool:
        path = self._path(key)
        with self._locked(key):
            entry = self._read_entry(path)
            live = entry is not None and entry.expires_at > time.time()
            if version is not None and (entry is None or not live or entry.version != version):
                return False
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise self._error("delete a session file", exc) from exc
            if entry is not None and entry.user is not None:
                self._remove_marker(entry.user, key)
            return live

    def touch(self, key: str, expires_at: float) -> bool:
        path = self._path(key)
        with self._locked(key):
            current = self._read_entry(path)
            if current is None or current.expires_at <= time.time():
                return False
            self._write(path, current.value, expires_at, current.version, current.user)
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

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """The live records of ``user`` under ``prefix``, from the user's
        index directory; a stale marker found on the way is removed."""
        directory = self._marker(user, "x").parent
        try:
            with os.scandir(directory) as entries:
                names = sorted(e.name for e in entries)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("list the index of sessions by user", exc) from exc
        for name in names:
            key = unquote(name)
            if _file_name(key) != name or not key.startswith(prefix):
                continue
            entry = self._read_entry(self._path(key))
            if entry is not None and entry.user == user and entry.expires_at > time.time():
                yield key, Record(entry.value, entry.expires_at, entry.version)
            else:
                self._prune_marker(user, key)

    def _prune_marker(self, user: str, key: str) -> None:
        """Remove ``user``'s marker of ``key`` if the record is not (or no
        longer) a live one of ``user``: checked again under the record's lock,
        so that a writer indexing it at this moment is never undone."""
        with self._locked(key):
            entry = self._read_entry(self._path(key))
            if entry is None or entry.user != user or entry.expires_at <= time.time():
                self._remove_marker(user, key)

    def _read_head(self, path: Path) -> tuple[bytes, float | None, str | None] | None:
        """``(magic, expiry, user)`` of a file; expiry None for a record of ours
        cut short; None for a file that is gone."""
        try:
            with open(path, "rb") as f:
                head = f.read(_HEADER.size)
                if head[:4] == _MAGIC and len(head) == _HEADER.size:
                    user_length = _HEADER.unpack(head)[4]
                    if user_length != _NO_USER:
                        head += f.read(user_length)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("read a session file", exc) from exc
        parsed = _parse_head(head)
        if parsed is None:
            return head[:4], None, None
        return head[:4], parsed[0], parsed[2]

    def cleanup(self) -> int:
        """Remove expired records (and stale index markers); return how many
        records were removed."""
        now = time.time()
        removed = 0
        self._remove_stale_temp_files(now)
        for entry in list(self._entries()):
            key = unquote(entry.name)
            if _file_name(key) != entry.name:
                continue  # not a name this store writes: not ours
            path = Path(entry.path)
            with self._locked(key):
                head = self._read_head(path)
                if head is None:
                    continue
                magic, expires_at, user = head
                if magic not in (_MAGIC, _MAGIC_V1):
                    continue  # not a record of ours: leave it alone
                # A record of ours cut short is unreadable anyway: remove it.
                if expires_at is None or expires_at <= now:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    if user is not None:
                        self._remove_marker(user, key)
                    removed += 1
        self._sweep_user_index()
        return removed

    def _sweep_user_index(self) -> None:
        """Remove markers whose record is gone, expired or not their user's
        (left by a crash between two steps of a write), and empty user
        directories. Each marker is judged again under its record's lock."""
        try:
            with os.scandir(self._users_dir) as users:
                directories = [Path(e.path) for e in users if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for directory in directories:
            try:
                with os.scandir(directory) as entries:
                    names = [e.name for e in entries]
            except OSError:
                continue
            for name in names:
                key = unquote(name)
                if _file_name(key) != name or self._marks_a_live_record(directory.name, key):
                    continue
                with self._locked(key):
                    if not self._marks_a_live_record(directory.name, key):
                        with contextlib.suppress(FileNotFoundError):
                            (directory / name).unlink()
            with contextlib.suppress(OSError):  # not empty, or gone
                directory.rmdir()

    def _marks_a_live_record(self, digest: str, key: str) -> bool:
        """Whether ``key`` holds a live record of the user whose hash is ``digest``."""
        head = self._read_head(self._path(key))
        if head is None:
            return False
        _, expires_at, user = head
        return (
            expires_at is not None
            and expires_at > time.time()
            and user is not None
            and hashlib.sha256(_user_bytes(user)).hexdigest() == digest
        )

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
