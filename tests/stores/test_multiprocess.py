"""Compare-and-set and insert-if-absent across processes, as under gunicorn workers."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from wsgi_kvsession.stores import FileStore, SQLiteStore, Store

PROCESSES = 3
INCREMENTS = 40


def _make(kind: str, path: Path) -> Store:
    return FileStore(path / "files") if kind == "file" else SQLiteStore(path / "s.db")


def _increment(kind: str, path: str, key: str) -> int:
    """Add INCREMENTS to the counter under ``key`` with compare-and-set; return retries."""
    store = _make(kind, Path(path))
    retries = 0
    for _ in range(INCREMENTS):
        for _attempt in range(10_000):  # bounded: fails the test rather than hang
            record = store.load(key)
            assert record is not None
            value = str(int(record.value) + 1).encode()
            if store.update(key, value, record.expires_at, record.version):
                break
            retries += 1
        else:
            raise AssertionError("compare-and-set never succeeded")
    return retries


def _insert(kind: str, path: str, key: str) -> bool:
    return _make(kind, Path(path)).insert(key, b"mine", time.time() + 60)


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_compare_and_set_is_atomic_across_processes(kind: str, tmp_path: Path) -> None:
    store = _make(kind, tmp_path)
    assert store.insert("counter", b"0", time.time() + 600)
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap_async(
            _increment, [(kind, str(tmp_path), "counter")] * PROCESSES
        ).get(timeout=120)
    record = store.load("counter")
    assert record is not None
    assert int(record.value) == PROCESSES * INCREMENTS
    assert len(results) == PROCESSES


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_insert_if_absent_has_one_winner_across_processes(kind: str, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        for round_number in range(5):
            key = f"race{round_number}"
            wins = pool.starmap_async(_insert, [(kind, str(tmp_path), key)] * PROCESSES).get(
                timeout=60
            )
            assert sum(wins) == 1
