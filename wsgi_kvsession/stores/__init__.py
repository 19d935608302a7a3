"""Session stores: one module per backend, all implementing :class:`Store`.

The embedded stores are imported here; the server stores are imported on first
use (``from wsgi_kvsession.stores import RedisStore``), so that importing this
package never needs redis-py, pymemcache, SQLAlchemy or simplekv installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Record, Store, StoreError, Version
from .file import FileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .urls import store_from_url

if TYPE_CHECKING:
    from .memcache import MemcacheStore
    from .redis import RedisStore
    from .simplekv import SimpleKVStore
    from .sqlalchemy import SQLAlchemyStore

#: Server stores, by name: the module that defines each, imported on first use.
_SERVER_STORES = {
    "RedisStore": "redis",
    "MemcacheStore": "memcache",
    "SQLAlchemyStore": "sqlalchemy",
    "SimpleKVStore": "simplekv",
}

__all__ = [
    "FileStore",
    "MemcacheStore",
    "MemoryStore",
    "Record",
    "RedisStore",
    "SQLAlchemyStore",
    "SQLiteStore",
    "SimpleKVStore",
    "Store",
    "StoreError",
    "Version",
    "store_from_url",
]


def __getattr__(name: str) -> Any:
    module = _SERVER_STORES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
