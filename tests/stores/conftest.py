"""The store contract: a registry of store factories and the fixtures built on it.

Every test in ``tests/stores/test_contract.py`` takes the ``store`` fixture and so
runs once against every store registered here. The rules it checks are the
:class:`wsgi_kvsession.stores.base.Store` protocol (DESIGN.md sections 4 and 5).

How a new backend joins the contract
====================================

Add ONE decorated factory to this module, above the ``store`` fixture at the end
(the fixture's parameters are read from the registry when the module is
imported, so a factory defined below it would not be picked up)::

    @store_factory("redis", cleanup="native")
    def _redis(tmp_path: Path) -> Store:
        url = os.environ.get("KVSESSION_TEST_REDIS_URL", "redis://localhost:6379/15")
        try:
            import redis  # noqa: F401 - the optional client library
        except ImportError:
            skip_or_fail("redis is not installed: pip install 'wsgi-kvsession[redis]'")
        store = store_from_url(url)
        try:
            store.load("test:ping")  # constructing never connects; the first use does
        except StoreError as exc:
            skip_or_fail(f"no Redis server at KVSESSION_TEST_REDIS_URL: {exc}")
        return store

The factory receives the test's ``tmp_path`` (a fresh directory; embedded stores
put their files in it) and returns a new store. The ``store`` fixture closes it
after the test.

* A backend that needs a server reads the server's URL from an environment
  variable (``KVSESSION_TEST_<BACKEND>_URL``), with a sensible localhost
  default, and calls :func:`skip_or_fail` when the server, or the optional
  client library, is not there. Locally that skips the backend's tests with the
  reason given; under CI (``CI=true``) it fails them, so a CI job whose service
  container is missing cannot go green by skipping. Never put a password in the
  reason: :class:`StoreError` messages already mask it, a URL you format
  yourself does not.
* A shared server is never flushed. Each test uses keys under a random prefix
  (the ``key_prefix``, ``key`` and ``new_key`` fixtures), and the tests that
  list records (``iter_records``) look only at keys under their own prefix.
* ``cleanup`` says how :meth:`Store.cleanup` counts:

  ``"exact"`` (the default)
      the store is private to the test (a file in ``tmp_path``, an in-process
      dict) and cleanup returns exactly the number of expired records it removed;
  ``"at_least"``
      the store is shared (a database on a server) and cleanup may also remove,
      and count, expired records left by other tests or runs;
  ``"native"``
      the backend expires keys by itself (Redis TTL, memcached) and cleanup
      returns 0, or any count: only the absence of the expired records is checked.

* Whether compare-and-set is atomic comes from the store's own
  ``supports_versioning`` attribute; the CAS tests skip when it is False.
* The contract writes values up to 1 MiB (plus the store's own overhead): a
  memcached test server needs a larger item size (``memcached -I 4m``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import pytest

from wsgi_kvsession.stores import FileStore, MemoryStore, SQLiteStore, Store

#: How a store's ``cleanup()`` return value is checked (see the module docstring).
CleanupCount = Literal["exact", "at_least", "native"]

Factory = Callable[[Path], Store]


@dataclass(frozen=True)
class StoreSpec:
    """One registered backend: its name, factory and how its cleanup counts."""

    name: str
    factory: Factory
    cleanup: CleanupCount = "exact"


#: The registry: backend name -> spec. Filled by :func:`store_factory`.
STORE_SPECS: dict[str, StoreSpec] = {}
#: The same registry as plain factories, ``name -> callable(tmp_path) -> Store``.
STORE_FACTORIES: dict[str, Factory] = {}


def store_factory(name: str, *, cleanup: CleanupCount = "exact") -> Callable[[Factory], Factory]:
    """Register ``factory(tmp_path) -> Store`` under ``name`` for the contract suite."""
    if cleanup not in ("exact", "at_least", "native"):
        raise ValueError(f"store_factory({name!r}, cleanup={cleanup!r}): unknown mode")

    def register(factory: Factory) -> Factory:
        if name in STORE_SPECS:
            raise ValueError(f"store_factory: {name!r} is registered twice")
        STORE_SPECS[name] = StoreSpec(name, factory, cleanup)
        STORE_FACTORIES[name] = factory
        return factory

    return register


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test because a backend is unavailable, or fail it under CI.

    Locally a missing server or client library is not an error of the code
    under test, so the test is skipped with ``reason``. When the environment
    variable ``CI`` is ``"true"`` the backend is expected to be there, so the
    test fails instead of silently passing by skipping.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: backends must be available in CI)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------- the backends


@store_factory("memory")
def _memory(tmp_path: Path) -> Store:
    return MemoryStore()


@store_factory("file")
def _file(tmp_path: Path) -> Store:
    return FileStore(tmp_path / "sessions")


@store_factory("sqlite")
def _sqlite(tmp_path: Path) -> Store:
    return SQLiteStore(tmp_path / "s.db")


# Add new backends ABOVE this line: the fixture below reads the registry at import.
# ------------------------------------------------------------------ fixtures


@pytest.fixture(params=list(STORE_FACTORIES), ids=list(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store of each registered backend, closed after the test."""
    built = STORE_FACTORIES[request.param](tmp_path)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def store_spec(request: pytest.FixtureRequest, store: Store) -> StoreSpec:
    """The registry entry of the backend the ``store`` fixture built for this test."""
    return STORE_SPECS[request.node.callspec.params["store"]]


@pytest.fixture
def key_prefix() -> str:
    """A random prefix, unique to this test, for every key it writes."""
    return "test:" + secrets.token_hex(8) + ":"


@pytest.fixture
def new_key(key_prefix: str) -> Callable[[], str]:
    """Make another fresh key under this test's prefix (shaped like a real one)."""

    def make() -> str:
        return key_prefix + secrets.token_hex(32)

    return make


@pytest.fixture
def key(new_key: Callable[[], str]) -> str:
    """A fresh key under this test's prefix."""
    return new_key()
