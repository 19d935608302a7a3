"""The raw-WSGI examples: plain WSGI, WebOb and Bottle, each under WebTest.

Each reads the middleware's session from the environ; the same flows run on a
MemoryStore and on the shared Redis (the ``backend`` fixture: random key
prefix, never flushed; skipped locally without Redis, failed under CI=true).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import webtest

from .flask_support import Backend

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(filename: str) -> Iterator[ModuleType]:
    name = f"wsgi_kvsession_example_{filename.removesuffix('.py')}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture(scope="module")
def webob_example() -> Iterator[ModuleType]:
    yield from _load("webob_app.py")


@pytest.fixture(scope="module")
def bottle_example() -> Iterator[ModuleType]:
    yield from _load("bottle_app.py")


@pytest.fixture(scope="module")
def counter_example() -> Iterator[ModuleType]:
    yield from _load("wsgi_counter.py")


def _client(example: ModuleType, backend: Backend) -> webtest.TestApp:
    # WebTest speaks http://: the cookie must not be Secure-only here.
    return webtest.TestApp(example.make_app(backend.store, **backend.options(cookie_secure=False)))


def _cookie(client: webtest.TestApp) -> str | None:
    return client.cookies.get("session")


def test_webob_notes_persist_and_logout_forgets_them(
    webob_example: ModuleType, backend: Backend
) -> None:
    client = _client(webob_example, backend)
    assert client.get("/").status_int == 200
    assert backend.store.methods() == []  # a fresh visitor: no cookie, no store call
    client.post("/notes", {"text": "buy <milk>"}).follow()
    client.post("/notes", {"text": "call Bob"})
    page = client.get("/")
    assert "buy &lt;milk&gt;" in page.text
    assert "call Bob" in page.text
    assert len(backend.records()) == 1
    old = _cookie(client)
    client.post("/logout")
    assert backend.records() == {}
    assert _cookie(client) is None
    replay = _client(webob_example, backend)
    replay.set_cookie("session", old)
    assert "call Bob" not in replay.get("/").text


def test_webob_unknown_path_costs_no_store_call(
    webob_example: ModuleType, backend: Backend
) -> None:
    client = _client(webob_example, backend)
    client.post("/notes", {"text": "x"})
    backend.store.reset()
    response = client.get("/missing", status=404)
    assert backend.store.methods() == []
    assert "Set-Cookie" not in response.headers


def test_bottle_name_regenerates_the_session_and_logout_destroys_it(
    bottle_example: ModuleType, backend: Backend
) -> None:
    client = _client(bottle_example, backend)
    assert "Hello, stranger." in client.get("/").text
    client.post("/name", {"name": "Ada"})
    first = _cookie(client)
    (first_key,) = backend.records()
    assert "Hello, Ada!" in client.get("/").text
    client.post("/name", {"name": "Grace"})
    assert _cookie(client) != first  # a new ID for a new identity
    (second_key,) = backend.records()
    assert second_key != first_key  # the old record is gone
    assert "Hello, Grace!" in client.get("/").text
    client.post("/logout")
    assert backend.records() == {}
    assert "Hello, stranger." in client.get("/").text


def test_plain_wsgi_counter_counts_per_session(
    counter_example: ModuleType, backend: Backend
) -> None:
    from wsgi_kvsession import KVSessionMiddleware

    app = KVSessionMiddleware(
        counter_example.counter_app, backend.store, **backend.options(cookie_secure=False)
    )
    one, two = webtest.TestApp(app), webtest.TestApp(app)
    for _ in range(3):
        one.get("/")
    assert "<strong>4</strong>" in one.get("/").text
    assert "<strong>1</strong>" in two.get("/").text
    one.get("/logout")
    assert "<strong>1</strong>" in one.get("/").text
