"""The Pyramid integration under a retrying execution policy (what
pyramid_retry does: a new ``Request`` per attempt on the same ``environ``),
with the factory committing the session itself and with a middleware in
front, on memory and on Redis; and a Pyramid app called on the same
``environ`` from a view of another."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import webtest  # type: ignore[import-untyped]
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from wsgi_kvsession.integrations.pyramid import KVSessionFactory
from wsgi_kvsession.middleware import ENVIRON_KEY

from .pyramid_support import MODES, Backend, make_app, reply


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _client(backend: Backend, mode: str) -> webtest.TestApp:
    return webtest.TestApp(make_app(backend, mode, attempts=2))


def test_the_successful_attempt_is_saved(backend: Backend, mode: str) -> None:
    # Factory mode used to take the first attempt's session, left in environ,
    # for a middleware's and add no commit callback: nothing was saved.
    client = _client(backend, mode)
    response = reply(client.get("/retry"))
    assert response.cookie().value
    assert client.get("/get?k=attempt").text == "'1'"


def test_factory_drops_a_failed_attempts_changes(backend: Backend) -> None:
    client = _client(backend, "factory")
    client.get("/set?a=1")
    backend.store.reset()
    response = client.get("/retry")
    # The second attempt starts from the stored session, as Pyramid's own
    # sessions do: what the failed attempt changed is gone.
    assert response.text == "[('a', '1'), ('attempt', '1')]"
    assert client.get("/dump").text == "[('a', '1'), ('attempt', '1')]"
    # One load per attempt (the second reads the session again), one write.
    assert backend.store.methods() == ["load", "load", "update", "load"]


def test_factory_drops_a_failed_new_sessions_changes(backend: Backend) -> None:
    client = _client(backend, "factory")
    response = reply(client.get("/retry"))
    assert response.text == "[('attempt', '1')]"
    assert response.cookie().value
    assert client.get("/dump").text == "[('attempt', '1')]"
    assert len(backend.records()) == 1  # the failed attempt stored nothing


def test_middleware_keeps_a_failed_attempts_changes(backend: Backend) -> None:
    """Documented behaviour (docs/pyramid.rst, "Retried requests"): the
    middleware's session is one for the whole WSGI request, so what a failed
    attempt changed stays in it and is saved with the successful attempt.
    Undoing it would need the core session to roll back to its loaded state."""
    client = _client(backend, "middleware")
    client.get("/set?a=1")
    response = client.get("/retry")
    assert response.text == "[('a', '1'), ('attempt', '1'), ('charged', 'yes')]"
    assert client.get("/get?k=charged").text == "'yes'"


def test_retry_after_an_exception_view_answered(backend: Backend, mode: str) -> None:
    # The failed attempt's response callbacks ran on its 503 response (which
    # pyramid_retry then discards): the factory's commit saved nothing there.
    client = _client(backend, mode)
    client.get("/set?a=1")
    response = reply(client.get("/retry?answered=503"))
    assert response.status == 200
    assert len(response.cookies()) <= 1
    if mode == "factory":
        assert response.text == "[('a', '1'), ('attempt', '1')]"
    else:
        assert response.text == "[('a', '1'), ('attempt', '1'), ('charged', 'yes')]"
    assert client.get("/get?k=attempt").text == "'1'"


def test_a_failed_attempt_logs_no_late_change_and_no_middleware(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(backend, "factory")
    with caplog.at_level(logging.INFO, logger="wsgi_kvsession"):
        client.get("/retry")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "changed after the response" in m], messages
    assert not [m for m in messages if "KVSessionMiddleware" in m], messages


def test_a_pyramid_app_called_on_the_same_environ_shares_the_session(
    backend: Backend,
) -> None:
    """A view that calls another Pyramid app with its own environ
    (``request.get_response(app)``, ``@wsgiapp``): the inner app is a new
    Request on the environ whose request still runs, so it shares the outer
    request's session, and the outer request commits it once."""
    options = backend.options(cookie_secure=False)

    def inner_view(request: Request) -> Response:
        request.session["inner"] = "1"
        same = request.session.raw is request.environ[ENVIRON_KEY]
        return Response(f"inner same={same}")

    inner = Configurator()
    inner.add_route("inner", "/")
    inner.add_view(inner_view, route_name="inner")
    inner.set_session_factory(KVSessionFactory(backend.store, **options))
    inner_app = inner.make_wsgi_app()

    def outer_view(request: Request) -> Any:
        request.session["outer"] = "1"
        response = request.get_response(inner_app)
        request.session["after"] = "1"
        return response

    def dump(request: Request) -> Response:
        return Response(repr(sorted(request.session.items())))

    outer = Configurator()
    outer.add_route("outer", "/")
    outer.add_view(outer_view, route_name="outer")
    outer.add_route("dump", "/dump")
    outer.add_view(dump, route_name="dump")
    outer.set_session_factory(KVSessionFactory(backend.store, **options))
    client = webtest.TestApp(outer.make_wsgi_app())

    response = reply(client.get("/"))
    assert response.text == "inner same=True"
    assert response.cookie().value  # exactly one
    assert client.get("/dump").text == "[('after', '1'), ('inner', '1'), ('outer', '1')]"
