"""Fixtures of the store contract suite, built on the backend registry.

Every test in ``tests/stores/test_contract.py`` takes the ``store`` fixture and so
runs once against every backend registered in :mod:`tests.stores.registry`
(its docstring says how a backend joins). The rules it checks are the
:class:`wsgi_kvsession.stores.base.Store` protocol (DESIGN.md sections 4 and 5).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from wsgi_kvsession.stores import Store

from .registry import STORE_SPECS, StoreSpec

# ------------------------------------------------------------------ fixtures


@pytest.fixture(params=list(STORE_SPECS), ids=list(STORE_SPECS))
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh store of each registered backend, closed after the test."""
    built = STORE_SPECS[request.param].factory(request)
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
