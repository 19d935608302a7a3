"""FileStore beyond the shared contract: file names, permissions, corruption, sharing."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import assert_instances_share_records
from wsgi_kvsession.stores import FileStore, StoreError

TTL = 60.0


def later(seconds: float = TTL) -> float:
    return time.time() + seconds


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def record_files(directory: Path) -> list[Path]:
    """The store's record files: everything but its own dot-entries."""
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
def file_store(directory: Path) -> FileStore:
    return FileStore(directory)


@pytest.mark.parametrize(
    "key",
    [
        "session:" + "ab" * 32,
        "app/one:" + "cd" * 32,
        "..:" + "ef" * 32,
        ".hidden",
        "..",
        "/etc/passwd",
        "a\\b:c",
        "\u00fcber/..:x",
    ],
)
def test_file_names_have_no_slash_and_no_leading_dot(
    file_store: FileStore, directory: Path, key: str
) -> None:
    assert file_store.insert(key, b"value", later()) is True
    files = record_files(directory)
    assert len(files) == 1
    (path,) = files
    assert path.parent == directory
    assert "/" not in path.name
    assert not path.name.startswith(".")
    assert file_store.load(key) is not None
    assert [k for k, _ in file_store.iter_records()] == [key]


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "../outside", "../../../../../../tmp/x", "..%2F..%2Fx", "/abs"]
)
def test_traversal_keys_stay_inside_the_directory(tmp_path: Path, key: str) -> None:
    directory = tmp_path / "a" / "b" / "sessions"
    local = FileStore(directory)
    outside_before = tree(tmp_path) - tree(directory)
    assert local.insert(key, b"value", later()) is True
    assert local.update(key, b"value 2", later()) is True
    assert local.touch(key, later()) is True
    outside_after = tree(tmp_path) - tree(directory)
    # Only the directory itself (and its parents) may have been created.
    assert outside_after - outside_before <= {tmp_path / "a", tmp_path / "a" / "b", directory}
    for path in tree(directory):
        assert path.resolve().is_relative_to(directory.resolve())
    record = local.load(key)
    assert record is not None
    assert record.value == b"value 2"
    local.delete(key)
    assert record_files(directory) == []


def test_record_files_have_mode_0600(file_store: FileStore, directory: Path) -> None:
    old_umask = os.umask(0)  # the store must not rely on the process umask
    try:
        assert file_store.insert("session:" + secrets.token_hex(32), b"value", later()) is True
    finally:
        os.umask(old_umask)
    (path,) = record_files(directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lock_dir = directory / ".locks"
    assert stat.S_IMODE(lock_dir.stat().st_mode) & 0o077 == 0
    for lock in lock_dir.iterdir():
        assert stat.S_IMODE(lock.stat().st_mode) & 0o077 == 0


def test_a_directory_the_store_creates_is_private(file_store: FileStore, directory: Path) -> None:
    # Nobody else may add, replace or remove session files in a directory the
    # store made, whatever the process umask.
    old_umask = os.umask(0)
    try:
        assert file_store.insert("session:" + secrets.token_hex(32), b"value", later()) is True
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, oct(directory.stat().st_mode)


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o750)
    store = FileStore(directory)
    assert store.insert("session:" + secrets.token_hex(32), b"value", later()) is True
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750


def test_updated_and_touched_files_keep_mode_0600(file_store: FileStore, directory: Path) -> None:
    key = "session:" + secrets.token_hex(32)
    assert file_store.insert(key, b"value", later()) is True
    assert file_store.update(key, b"value 2", later()) is True
    assert file_store.touch(key, later(2 * TTL)) is True
    (path,) = record_files(directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _file_of(file_store: FileStore, directory: Path, key: str) -> Path:
    assert file_store.insert(key, b"a real session record", later()) is True
    (path,) = record_files(directory)
    return path


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"KVS1",
        b"garbage bytes that are not a session record at all",
        bytes(range(256)),
    ],
    ids=["empty", "magic-only", "garbage", "binary-garbage"],
)
def test_a_corrupt_file_reads_as_none(
    file_store: FileStore, directory: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    key = "session:" + secrets.token_hex(32)
    path = _file_of(file_store, directory, key)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        assert file_store.load(key) is None
        assert file_store.update(key, b"x", later()) is False
        assert file_store.touch(key, later()) is False
        assert [k for k, _ in file_store.iter_records()] == []
    # The key is free again: a new session can take it.
    assert file_store.insert(key, b"fresh", later()) is True
    record = file_store.load(key)
    assert record is not None
    assert record.value == b"fresh"


def test_a_file_cut_short_in_its_header_reads_as_none(
    file_store: FileStore, directory: Path
) -> None:
    key = "session:" + secrets.token_hex(32)
    path = _file_of(file_store, directory, key)
    blob = path.read_bytes()
    for size in range(20):  # the header: magic (4 bytes), expiry (8), version (8)
        path.write_bytes(blob[:size])
        assert file_store.load(key) is None, size
    assert file_store.cleanup() == 1  # an unreadable record of ours is garbage
    assert not path.exists()


def test_a_file_cut_short_in_its_value_reads_as_none(
    file_store: FileStore, directory: Path
) -> None:
    # What a crash between write() and the disk flush can leave behind: the
    # header is intact, the value is not. Returning the cut value as a record
    # would hand the session layer bytes that were never written as a whole.
    key = "session:" + secrets.token_hex(32)
    path = _file_of(file_store, directory, key)
    blob = path.read_bytes()
    for size in (len(blob) - 1, len(blob) - 5, 21):
        path.write_bytes(blob[:size])
        assert file_store.load(key) is None, size


def test_cleanup_does_not_delete_foreign_files(file_store: FileStore, directory: Path) -> None:
    key = "session:" + secrets.token_hex(32)
    assert file_store.insert(key, b"value", later()) is True
    long_foreign = directory / "notes.txt"
    long_foreign.write_bytes(b"a file that someone else put here, long enough for a header\n")
    dot_file = directory / ".gitignore"
    dot_file.write_bytes(b"*\n")
    assert file_store.cleanup() == 0
    assert long_foreign.exists()
    assert dot_file.exists()
    assert [k for k, _ in file_store.iter_records()] == [key]
    assert file_store.load(key) is not None


@pytest.mark.parametrize("name", ["README", "x.txt", "session%3Aabc"])
def test_cleanup_does_not_delete_small_foreign_files(
    file_store: FileStore, directory: Path, name: str
) -> None:
    # A short file is not a truncated record of ours unless it starts like one.
    assert file_store.insert("session:" + secrets.token_hex(32), b"value", later()) is True
    foreign = directory / name
    foreign.write_bytes(b"hello\n")
    file_store.cleanup()
    assert foreign.read_bytes() == b"hello\n"


def test_a_foreign_subdirectory_does_not_break_listing_or_cleanup(
    file_store: FileStore, directory: Path
) -> None:
    key = "session:" + secrets.token_hex(32)
    assert file_store.insert(key, b"value", later()) is True
    (directory / "backup").mkdir()
    assert [k for k, _ in file_store.iter_records()] == [key]
    assert file_store.cleanup() == 0
    assert (directory / "backup").is_dir()


def test_cleanup_removes_expired_files(file_store: FileStore, directory: Path) -> None:
    live = "session:" + secrets.token_hex(32)
    gone = "session:" + secrets.token_hex(32)
    assert file_store.insert(live, b"live", later()) is True
    assert file_store.insert(gone, b"gone", later()) is True
    assert file_store.touch(gone, time.time() - 10) is True
    assert len(record_files(directory)) == 2
    assert file_store.cleanup() == 1
    assert len(record_files(directory)) == 1
    assert file_store.load(live) is not None


def test_cleanup_removes_stale_temporary_files_only(file_store: FileStore, directory: Path) -> None:
    assert file_store.insert("session:" + secrets.token_hex(32), b"value", later()) is True
    stale = directory / ".tmp-0123456789abcdef"
    fresh = directory / ".tmp-fedcba9876543210"
    stale.write_bytes(b"half a record")
    fresh.write_bytes(b"a write in progress")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert file_store.cleanup() == 0  # temporary files are not records
    assert not stale.exists()
    assert fresh.exists()


def test_an_unusable_directory_gives_store_error(tmp_path: Path) -> None:
    # A path under a regular file: mkdir fails with ENOTDIR, even for root.
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    store = FileStore(blocker / "sessions")  # constructing touches nothing
    key = "session:" + secrets.token_hex(32)
    with pytest.raises(StoreError, match="FileStore"):
        store.insert(key, b"value", later())
    with pytest.raises(StoreError, match="FileStore"):
        store.load(key)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root ignores directory permissions",
)
def test_a_read_only_directory_gives_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        store = FileStore(directory)
        with pytest.raises(StoreError, match="FileStore"):
            store.insert("session:" + secrets.token_hex(32), b"value", later())
    finally:
        directory.chmod(0o700)


def test_error_messages_do_not_contain_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    store = FileStore(blocker / "sessions")
    secret = secrets.token_hex(32)
    with pytest.raises(StoreError) as info:
        store.insert("session:" + secret, b"value", later())
    assert secret not in str(info.value)


def test_two_instances_on_one_directory_share_records(directory: Path) -> None:
    # As two worker processes would: separate objects, separate lock descriptors.
    key = "session:" + secrets.token_hex(32)
    assert_instances_share_records(FileStore(directory), FileStore(directory), key)


def test_records_survive_a_new_instance(directory: Path) -> None:
    key = "session:" + secrets.token_hex(32)
    expires_at = later()
    first = FileStore(directory)
    assert first.insert(key, bytes(range(256)), expires_at) is True
    original = first.load(key)
    assert original is not None
    version = original.version
    first.close()
    second = FileStore(directory)
    record = second.load(key)
    assert record is not None
    assert record.value == bytes(range(256))
    assert record.expires_at == pytest.approx(expires_at, abs=1e-6)
    assert record.version == version
    assert second.update(key, b"next", later(), version=version) is True


def test_compare_and_set_across_two_instances_under_threads(directory: Path) -> None:
    # Two FileStore objects on one directory stand for two worker processes:
    # the flock-based locks must serialise writers that share no Python lock.
    stores = [FileStore(directory), FileStore(directory)]
    key = "session:" + secrets.token_hex(32)
    assert stores[0].insert(key, b"0", later()) is True
    threads, increments, max_attempts = 8, 25, 5_000
    start = threading.Barrier(threads)

    def increment_many(store: FileStore) -> None:
        start.wait(timeout=30)
        for _ in range(increments):
            for _attempt in range(max_attempts):
                record = store.load(key)
                assert record is not None
                value = str(int(record.value) + 1).encode()
                if store.update(key, value, record.expires_at, version=record.version):
                    break
            else:
                raise AssertionError("no increment succeeded")

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(increment_many, stores[i % 2]) for i in range(threads)]
        for future in futures:
            future.result(timeout=120)

    record = stores[1].load(key)
    assert record is not None
    assert int(record.value) == threads * increments


def test_a_user_directory_removed_by_another_writer_mid_mkdir_is_made_again(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another writer may rmdir the (empty) user directory between mkdir's EEXIST
    # and Path.mkdir's is-it-a-directory check: that must be a retry, not an error.
    store = FileStore(directory)
    real_mkdir = Path.mkdir
    raised: list[Path] = []

    def racing_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent.name == ".users" and not raised:
            raised.append(self)
            raise FileExistsError(17, "File exists")
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert store.insert("session:k", b"v", time.time() + 60, user="alice")
    assert raised  # the race happened once
    assert [key for key, _ in store.iter_user_records("alice")] == ["session:k"]
