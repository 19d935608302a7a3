"""Package-level guarantees: public names, no framework imports, typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import wsgi_kvsession
from wsgi_kvsession import KVSessionMiddleware, Session, StoreError, get_session
from wsgi_kvsession.stores import (
    FileStore,
    MemoryStore,
    SQLiteStore,
    Store,
    store_from_url,
)


def test_public_names() -> None:
    assert set(wsgi_kvsession.__all__) == {
        "KVSessionMiddleware",
        "Session",
        "StoreError",
        "get_session",
    }
    assert all(callable(x) for x in (KVSessionMiddleware, Session, get_session, store_from_url))
    assert issubclass(StoreError, Exception)
    for store in (MemoryStore, FileStore, SQLiteStore):
        assert issubclass(store, Store)


def test_core_never_imports_a_framework() -> None:
    code = (
        "import sys, wsgi_kvsession, wsgi_kvsession.stores, wsgi_kvsession.serializers;"
        "import wsgi_kvsession.middleware, wsgi_kvsession.session, wsgi_kvsession.ids;"
        "from wsgi_kvsession.stores import RedisStore, MemcacheStore, SQLAlchemyStore;"
        "from wsgi_kvsession.stores import SimpleKVStore;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flask', 'pyramid', 'django')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_stores_import_their_client_library_only_when_used() -> None:
    code = (
        "import sys, wsgi_kvsession, wsgi_kvsession.stores;"
        "from wsgi_kvsession.stores import store_from_url;"
        "store_from_url('sqlite:///x.db'); store_from_url('memory://');"
        "libs = ('redis', 'pymemcache', 'sqlalchemy', 'simplekv', 'minimalkv');"
        "bad = [m for m in sys.modules if m.split('.')[0] in libs];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_is_typed() -> None:
    assert (Path(wsgi_kvsession.__file__).parent / "py.typed").is_file()


def test_get_session_without_middleware_is_a_clear_error() -> None:
    with pytest.raises(LookupError, match="KVSessionMiddleware"):
        get_session({})


def test_pickle_is_never_imported_by_the_package() -> None:
    root = Path(wsgi_kvsession.__file__).parent
    for path in root.rglob("*.py"):
        assert "import pickle" not in path.read_text(), path
