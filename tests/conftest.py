from __future__ import annotations

import pytest

from wsgi_kvsession.stores import MemoryStore

from .support import CountingStore


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def counting(memory_store: MemoryStore) -> CountingStore:
    return CountingStore(memory_store)
