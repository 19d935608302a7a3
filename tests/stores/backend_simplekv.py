"""SimpleKVStore in the contract suite, over several simplekv / minimalkv stores.

* ``simplekv-dict``, ``minimalkv-dict``: in-process ``DictStore`` (no TTL, so
  cleanup scans and counts exactly);
* ``simplekv-fs``, ``minimalkv-fs``: ``FilesystemStore`` in ``tmp_path`` (exact);
* ``simplekv-prefix-dict``: simplekv's ``PrefixDecorator`` over a ``DictStore``
  that also holds a foreign key outside the prefix (exact);
* ``simplekv-redis``: simplekv's ``RedisStore`` (TTL support) on the shared
  Redis at ``KVSESSION_TEST_REDIS_URL``, in a ``PrefixDecorator`` with a random
  prefix; the backend reaps, so cleanup is ``native``. Nothing is flushed: the
  keys under the prefix are deleted at teardown.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from wsgi_kvsession.stores import Store

from .registry import skip_or_fail, store_factory

REDIS_URL = os.environ.get("KVSESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _adapter(kvstore: Any) -> Store:
    try:
        from wsgi_kvsession.stores.simplekv import SimpleKVStore
    except ImportError as exc:  # pragma: no cover - the module imports without either library
        skip_or_fail(f"SimpleKVStore is not importable: {exc}")
    return SimpleKVStore(kvstore)


def import_or_skip(module: str) -> Any:
    """Import a client library, or skip (fail under CI) saying which extra installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        skip_or_fail(f"{module} is not installed (pip install 'wsgi-kvsession[simplekv]')")


def redis_client() -> Any:
    """A redis-py client on the shared test Redis, or skip (fail under CI)."""
    redis = import_or_skip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        # No URL in the reason: it could carry a password.
        skip_or_fail(f"the test Redis (KVSESSION_TEST_REDIS_URL) is not reachable: {exc}")
    return client


def delete_prefixed(client: Any, prefix: str) -> None:
    """Delete this test's keys (SCAN, never KEYS or FLUSH on a shared server)."""
    keys = list(client.scan_iter(match=prefix + "*", count=500))
    if keys:
        client.delete(*keys)


@store_factory("simplekv-dict")
def _simplekv_dict(request: pytest.FixtureRequest) -> Store:
    memory = import_or_skip("simplekv.memory")
    return _adapter(memory.DictStore())


@store_factory("simplekv-fs")
def _simplekv_fs(request: pytest.FixtureRequest) -> Store:
    fs = import_or_skip("simplekv.fs")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return _adapter(fs.FilesystemStore(str(tmp_path / "kv")))


@store_factory("minimalkv-dict")
def _minimalkv_dict(request: pytest.FixtureRequest) -> Store:
    memory = import_or_skip("minimalkv.memory")
    return _adapter(memory.DictStore())


@store_factory("minimalkv-fs")
def _minimalkv_fs(request: pytest.FixtureRequest) -> Store:
    fs = import_or_skip("minimalkv.fs")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return _adapter(fs.FilesystemStore(str(tmp_path / "kv")))


@store_factory("simplekv-prefix-dict")
def _simplekv_prefix_dict(request: pytest.FixtureRequest) -> Store:
    memory = import_or_skip("simplekv.memory")
    decorator = import_or_skip("simplekv.decorator")
    inner = memory.DictStore()
    # Something else's key beside the prefix: never listed, counted or removed.
    inner.put("other_app_key", b"not ours")
    return _adapter(decorator.PrefixDecorator("sessions_", inner))


@store_factory("simplekv-redis", cleanup="native")
def _simplekv_redis(request: pytest.FixtureRequest) -> Store:
    redisstore = import_or_skip("simplekv.memory.redisstore")
    decorator = import_or_skip("simplekv.decorator")
    client = redis_client()
    prefix = f"wkvs-test-{secrets.token_hex(8)}-"

    def teardown() -> None:
        try:
            delete_prefixed(client, prefix)
        finally:
            client.close()

    request.addfinalizer(teardown)
    return _adapter(decorator.PrefixDecorator(prefix, redisstore.RedisStore(client)))
