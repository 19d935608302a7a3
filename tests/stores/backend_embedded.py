"""The embedded stores in the contract suite: memory, files and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgi_kvsession.stores import FileStore, MemoryStore, SQLiteStore, Store

from .registry import store_factory


@store_factory("memory")
def _memory(request: pytest.FixtureRequest) -> Store:
    return MemoryStore()


@store_factory("file")
def _file(request: pytest.FixtureRequest) -> Store:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return FileStore(tmp_path / "sessions")


@store_factory("sqlite")
def _sqlite(request: pytest.FixtureRequest) -> Store:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return SQLiteStore(tmp_path / "s.db")
