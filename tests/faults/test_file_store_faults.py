"""FileStore on a full disk and on a read-only file system.

The tests run as root here, and root ignores directory permissions, so
``chmod`` cannot make a directory read-only (tests/stores/test_file_store.py
has that test for other users). Real file systems do it instead: a small
``tmpfs`` mounted for the test is filled up, or remounted read-only. Mounting
needs root (CAP_SYS_ADMIN); where it is not allowed those tests skip, saying
so. The partial write that a full disk causes is also produced without any
privilege, by the file size limit (``RLIMIT_FSIZE``) in a forked child, so
that part runs everywhere.

What must hold:

* a write the disk cannot take fails with a :class:`StoreError` that says the
  disk is full; the record it would have replaced is still there, whole, with
  its old version; no temporary file is left behind; a new record is not
  created at all;
* on a read-only file system, reads keep working and every write fails with a
  :class:`StoreError` naming the cause;
* through the middleware, ``on_store_error="raise"`` turns that into an error
  and ``"empty"`` into a response whose change is not saved; either way the
  user's stored session is intact, and writes work again once there is room
  (or the file system is writable again).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Clock, client_for, set_cookies
from wsgi_kvsession import Session, StoreError
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import FileStore

#: The size of the test's file system: a few pages (tmpfs counts whole pages).
TMPFS_SIZE = 256 * 1024
MOUNT_TIMEOUT = 10.0
TOUCH_INTERVAL = 60.0


def later(seconds: float = 600.0) -> float:
    return time.time() + seconds


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False
    )


@contextlib.contextmanager
def tmpfs(path: Path, size: int = TMPFS_SIZE) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` for the block; skip if
    mounting is not allowed here."""
    path.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
            + (mounted.stderr.strip() or f"exit status {mounted.returncode}")
        )
    try:
        yield path
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))  # busy: detach now, freed when unused


def _remount(path: Path, mode: str) -> None:
    done = _run("mount", "-o", f"remount,{mode}", str(path))
    assert done.returncode == 0, done.stderr


def _leftovers(directory: Path) -> list[str]:
    """Temporary files of the store left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; return the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    error = None
    try:
        for _ in range(TMPFS_SIZE // 4096 + 16):  # bounded: more than fits
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                error = exc
                break
    finally:
        os.close(fd)
    assert error is not None, "the file system never filled up"
    assert error.errno == errno.ENOSPC, error
    return filler


def _routes(session: Session, request: Any) -> Any:
    if request.path == "/set":
        session.update(request.args.items())
        return None
    if request.path == "/big":
        session["big"] = "x" * int(request.args["n"])
        return None
    return repr(sorted(session.items()))


def _key(prefix: str, client: Any) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return store_key(prefix, cookie.value)


def test_a_full_disk_refuses_writes_and_keeps_every_record(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = FileStore(disk / "sessions")
        key = "session:" + secrets.token_hex(32)
        old_value = os.urandom(64 * 1024)
        assert store.insert(key, old_value, later())
        before = store.load(key)
        assert before is not None

        # Room for part of it only: the write starts, then the disk is full.
        with pytest.raises(StoreError, match=r"FileStore\(.*\): .*disk is full"):
            store.update(key, os.urandom(TMPFS_SIZE), later(), version=before.version)
        assert store.load(key) == before  # whole, same version
        assert _leftovers(store.directory) == []
        other = "session:" + secrets.token_hex(32)
        with pytest.raises(StoreError, match="disk is full"):
            store.insert(other, os.urandom(TMPFS_SIZE), later())
        assert store.load(other) is None

        filler = _fill(disk)  # not a byte left
        with pytest.raises(StoreError, match="FileStore"):
            store.insert(other, b"tiny", later())
        with pytest.raises(StoreError, match="FileStore"):
            store.touch(key, later(1200))
        assert store.load(key) == before
        assert store.load(other) is None
        assert _leftovers(store.directory) == []

        filler.unlink()  # room again: the same store object works
        assert store.update(key, b"after", later(), version=before.version) is True
        assert store.insert(other, b"new", later()) is True


@pytest.mark.parametrize("policy", ["raise", "empty"])
def test_a_full_disk_through_the_middleware_never_loses_the_session(
    tmp_path: Path, policy: str
) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = FileStore(disk / "sessions")
        prefix = "test:" + secrets.token_hex(4) + ":"
        client = client_for(_routes, store, key_prefix=prefix, on_store_error=policy)
        assert set_cookies(client.get("/set?a=1"))
        key = _key(prefix, client)
        before = store.load(key)
        assert before is not None

        big = f"/big?n={TMPFS_SIZE}"
        if policy == "raise":
            with pytest.raises(StoreError, match="disk is full"):
                client.get(big)
        else:
            response = client.get(big)
            assert response.status_code == 200
            assert set_cookies(response) == []
        assert store.load(key) == before
        assert client.get("/read").text == "[('a', '1')]"
        assert _leftovers(store.directory) == []


def test_a_read_only_file_system_reads_but_refuses_writes(tmp_path: Path, clock: Clock) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = FileStore(disk / "sessions")
        prefix = "test:" + secrets.token_hex(4) + ":"
        raising = client_for(_routes, store, key_prefix=prefix, touch_interval=TOUCH_INTERVAL)
        assert set_cookies(raising.get("/set?a=1"))
        key = _key(prefix, raising)
        before = store.load(key)
        assert before is not None

        _remount(disk, "ro")
        try:
            # Reads work (no touch is due yet for a fresh session).
            assert store.load(key) == before
            assert raising.get("/read").text == "[('a', '1')]"
            for write in (
                lambda: store.insert("session:" + secrets.token_hex(32), b"v", later()),
                lambda: store.update(key, b"v", later(), version=before.version),
                lambda: store.touch(key, later(1200)),
                lambda: store.delete(key),
            ):
                with pytest.raises(StoreError, match=r"FileStore\(.*Read-only file system"):
                    write()
            with pytest.raises(StoreError, match="Read-only file system"):
                raising.get("/set?b=2")
            empty = client_for(
                _routes,
                store,
                key_prefix=prefix,
                touch_interval=TOUCH_INTERVAL,
                on_store_error="empty",
            )
            empty.set_cookie("session", raising.get_cookie("session").value)  # type: ignore[union-attr]
            response = empty.get("/set?b=2")
            assert response.status_code == 200
            assert set_cookies(response) == []
            assert store.load(key) == before
            # Once the idle deadline is due to slide, even a read writes (a
            # touch): "raise" fails it, "empty" serves it and logs the failure.
            clock.advance(TOUCH_INTERVAL + 1)
            with pytest.raises(StoreError, match="Read-only file system"):
                raising.get("/read")
            response = empty.get("/read")
            assert response.status_code == 200
            assert response.text == "[('a', '1')]"
            assert store.load(key) == before
        finally:
            _remount(disk, "rw")
        assert raising.get("/set?b=2").status_code == 200
        assert raising.get("/read").text == "[('a', '1'), ('b', '2')]"


def test_a_write_cut_short_by_the_file_size_limit_keeps_the_record(tmp_path: Path) -> None:
    """The same partial write without privileges: past ``RLIMIT_FSIZE`` a
    write() stores what fits and returns the count; only the next one fails
    (``EFBIG``). Done in a forked child, so the limit stays there."""
    store = FileStore(tmp_path / "sessions")
    key = "session:" + secrets.token_hex(32)
    assert store.insert(key, b"small and whole", later())
    before = store.load(key)
    assert before is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reports by exit code
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY))
            try:
                store.update(key, os.urandom(256 * 1024), later(), version=before.version)
                code = 2  # reported success for a write that could not be done
            except StoreError as exc:
                code = 0 if "File too large" in str(exc) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    codes = {1: "the child failed", 2: "the short write was reported a success", 3: "wrong error"}
    assert os.WEXITSTATUS(status) == 0, codes.get(os.WEXITSTATUS(status))
    assert store.load(key) == before
    assert _leftovers(store.directory) == []
