"""Session stores: one module per backend, all implementing :class:`Store`."""

from __future__ import annotations

from .base import Record, Store, StoreError, Version
from .file import FileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .urls import store_from_url

__all__ = [
    "FileStore",
    "MemoryStore",
    "Record",
    "SQLiteStore",
    "Store",
    "StoreError",
    "Version",
    "store_from_url",
]
