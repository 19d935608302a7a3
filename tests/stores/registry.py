"""The registry of store backends the contract suite runs against.

A backend joins the contract with ONE decorated factory, in a module of its own
under ``tests/stores/`` named ``backend_<name>.py`` and listed in
``pytest_plugins`` of ``tests/conftest.py`` (so it is imported, and registers,
before ``tests/stores/conftest.py`` builds the ``store`` fixture from this
registry; being a plugin, the module may also define its own fixtures, such as
a session-scoped server it starts)::

    @store_factory("redis", cleanup="native")
    def _redis(request: pytest.FixtureRequest) -> Store:
        url = os.environ.get("KVSESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        store = RedisStore(url, key_prefix_for_tests...)
        ...
        return store

The factory receives the test's ``request``: ``request.getfixturevalue("tmp_path")``
gives a fresh directory, ``request.getfixturevalue("some_server")`` a server
fixture. The ``store`` fixture closes the store after the test.

* A backend that needs a server reads the server's URL from an environment
  variable (``KVSESSION_TEST_<BACKEND>_URL``), with a sensible localhost
  default, and calls :func:`skip_or_fail` when the server, or the optional
  client library, is not there. Locally that skips the backend's tests with the
  reason given; under CI (``CI=true``) it fails them, so a CI job whose server
  is missing cannot go green by skipping. Never put a password in the reason:
  :class:`StoreError` messages already mask it, a URL you format yourself does not.
* A shared server is never flushed. Each test uses keys under a random prefix
  (the ``key_prefix``, ``key`` and ``new_key`` fixtures), and the tests that
  list records (``iter_records``) look only at keys under their own prefix.
* ``cleanup`` says how :meth:`Store.cleanup` counts:

  ``"exact"`` (the default)
      the store is private to the test (a file in ``tmp_path``, an in-process
      dict, a fresh table) and cleanup returns exactly the number of expired
      records it removed;
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NoReturn

import pytest

from wsgi_kvsession.stores import Store

#: How a store's ``cleanup()`` return value is checked (see the module docstring).
CleanupCount = Literal["exact", "at_least", "native"]

Factory = Callable[[pytest.FixtureRequest], Store]


@dataclass(frozen=True)
class StoreSpec:
    """One registered backend: its name, factory and how its cleanup counts."""

    name: str
    factory: Factory
    cleanup: CleanupCount = "exact"


#: The registry: backend name -> spec. Filled by :func:`store_factory`.
STORE_SPECS: dict[str, StoreSpec] = {}


def store_factory(name: str, *, cleanup: CleanupCount = "exact") -> Callable[[Factory], Factory]:
    """Register ``factory(request) -> Store`` under ``name`` for the contract suite."""
    if cleanup not in ("exact", "at_least", "native"):
        raise ValueError(f"store_factory({name!r}, cleanup={cleanup!r}): unknown mode")

    def register(factory: Factory) -> Factory:
        if name in STORE_SPECS:
            raise ValueError(f"store_factory: {name!r} is registered twice")
        STORE_SPECS[name] = StoreSpec(name, factory, cleanup)
        return factory

    return register


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test because a backend is unavailable, or fail it under CI.

    Locally a missing server or client library is not an error of the code
    under test, so the test is skipped with ``reason``. When the environment
    variable ``CI`` is ``"true"`` the backend is expected to be there, so the
    test fails instead of silently passing by skipping.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI=true: backends must be available in CI)", pytrace=False)
    pytest.skip(reason)
