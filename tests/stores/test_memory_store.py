"""MemoryStore beyond the shared contract: the bound on its size."""

from __future__ import annotations

import logging
import time

import pytest

from wsgi_kvsession.stores import MemoryStore

TTL = 60.0


def later(seconds: float = TTL) -> float:
    return time.time() + seconds


@pytest.mark.parametrize("max_entries", [0, -1, -10_000])
def test_max_entries_below_one_raises(max_entries: int) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_entries=max_entries)


def test_max_entries_of_one_is_allowed() -> None:
    store = MemoryStore(max_entries=1)
    assert store.insert("a", b"a", later()) is True
    assert store.load("a") is not None


def test_a_full_store_evicts_the_least_recently_written_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore(max_entries=3)
    for k in ("a", "b", "c"):
        assert store.insert(k, k.encode(), later()) is True
    assert store.update("a", b"a2", later()) is True  # "a" is now the newest write
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        assert store.insert("d", b"d", later()) is True
    assert store.load("b") is None  # the least recently written is gone
    for k in ("a", "c", "d"):
        assert store.load(k) is not None
    assert len(list(store.iter_records())) == 3
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("wsgi_kvsession")
    ]
    assert len(warnings) == 1
    assert "max_entries=3" in warnings[0].getMessage()


def test_the_bound_holds_under_many_inserts(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(max_entries=10)
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        for i in range(100):
            assert store.insert(f"k{i}", b"x", later()) is True
    assert len(list(store.iter_records())) == 10
    assert [store.load(f"k{i}") is not None for i in range(90, 100)] == [True] * 10
    assert caplog.records, "evicting live sessions must be logged"


def test_expired_records_are_dropped_before_live_ones_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore(max_entries=2)
    assert store.insert("old", b"old", later()) is True
    assert store.touch("old", time.time() - 10) is True  # expired, still in the dict
    assert store.insert("live", b"live", later()) is True
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        assert store.insert("new", b"new", later()) is True
    assert store.load("live") is not None
    assert store.load("new") is not None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_warning_below_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(max_entries=5)
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        for i in range(5):
            assert store.insert(f"k{i}", b"x", later()) is True
    assert not caplog.records


def test_each_store_is_separate() -> None:
    one, two = MemoryStore(), MemoryStore()
    assert one.insert("k", b"one", later()) is True
    assert two.load("k") is None
    assert two.insert("k", b"two", later()) is True
