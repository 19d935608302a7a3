"""EncryptedStore in the contract suite, wrapping stores of every kind.

* ``encrypted-memory``: over a MemoryStore, one key given as base64 text;
* ``encrypted-sqlite``: over a SQLiteStore in ``tmp_path``, with two keys
  (``keys=[current, old]``, as during a rotation);
* ``encrypted-redis``: over the shared Redis of ``KVSESSION_TEST_REDIS_URL``
  (skipped when it is not there, a failure under ``CI=true``);
* ``encrypted-memcached``: over the memcached these tests start, a store that
  cannot list its records, so the wrapper must say so as memcached does.

Each test gets fresh random keys. The wrapper must pass the whole contract
unchanged: encryption is invisible to everything but the bytes at rest.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from wsgi_kvsession.stores import MemoryStore, SQLiteStore, Store

from ..servers import ServerProcess
from .registry import skip_or_fail, store_factory

# The other backends' helpers are imported inside the factories: importing
# those modules here, before pytest loads them as plugins, would keep pytest
# from rewriting their asserts.


def new_key() -> bytes:
    return os.urandom(32)


def encrypted(inner: Store, *keys: bytes | str) -> Store:
    """``EncryptedStore(inner, ...)``, or skip (fail under CI) without cryptography."""
    try:
        from wsgi_kvsession.stores import EncryptedStore
    except ImportError:
        inner.close()
        skip_or_fail("cryptography is not installed: pip install 'wsgi-kvsession[encryption]'")
    if len(keys) == 1:
        return EncryptedStore(inner, keys[0])
    return EncryptedStore(inner, keys=list(keys))


@store_factory("encrypted-memory")
def _encrypted_memory(request: pytest.FixtureRequest) -> Store:
    return encrypted(MemoryStore(), base64.urlsafe_b64encode(new_key()).decode())


@store_factory("encrypted-sqlite")
def _encrypted_sqlite(request: pytest.FixtureRequest) -> Store:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return encrypted(SQLiteStore(tmp_path / "s.db"), new_key(), new_key())


@store_factory("encrypted-redis", cleanup="native")
def _encrypted_redis(request: pytest.FixtureRequest) -> Store:
    from .backend_redis import REDIS_URL, redis_store

    return encrypted(redis_store(REDIS_URL), new_key())


@store_factory("encrypted-memcached", cleanup="native")
def _encrypted_memcached(request: pytest.FixtureRequest) -> Store:
    from .backend_memcached import memcache_store, url_of

    server: ServerProcess = request.getfixturevalue("memcached_server")
    return encrypted(memcache_store(url_of(server)), new_key())
