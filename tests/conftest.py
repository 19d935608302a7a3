from __future__ import annotations

import time
from pathlib import Path

import pytest

from wsgi_kvsession.stores import MemoryStore

from .support import Clock, CountingStore

#: The backends of the store contract suite (tests/stores/registry.py says how
#: one joins). Loaded as plugins so that each registers before the ``store``
#: fixture is built, and may bring fixtures of its own (a server it starts).
pytest_plugins = [
    f"tests.stores.{module.stem}"
    for module in sorted((Path(__file__).parent / "stores").glob("backend_*.py"))
]


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def counting(memory_store: MemoryStore) -> CountingStore:
    return CountingStore(memory_store)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Lets a test move ``time.time`` forward (``clock.advance(seconds)``)."""
    real = time.time
    moved = Clock()
    monkeypatch.setattr(time, "time", lambda: real() + moved.offset)
    return moved
