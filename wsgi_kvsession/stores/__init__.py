"""Session stores: one module per backend, all implementing :class:`Store`.

The embedded stores are imported here; the server stores, and the
:class:`EncryptedStore` wrapper, are imported on first use (``from
wsgi_kvsession.stores import RedisStore``), so that importing this package
never needs redis-py, pymemcache, SQLAlchemy, simplekv or cryptography
installed. Without its library, that import raises :class:`ImportError` naming
the extra to install.
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
    from .encrypted import EncryptedStore
    from .memcache import MemcacheStore
    from .redis import RedisStore
    from .simplekv import SimpleKVStore
    from .sqlalchemy import SQLAlchemyStore

#: Stores that need an optional library (the server stores and the encrypting
#: wrapper), by name: the module that defines each, imported on first use.
_SERVER_STORES = {
    "EncryptedStore": "encrypted",
    "RedisStore": "redis",
    "MemcacheStore": "memcache",
    "SQLAlchemyStore": "sqlalchemy",
    "SimpleKVStore": "simplekv",
}

__all__ = [
    "EncryptedStore",
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
