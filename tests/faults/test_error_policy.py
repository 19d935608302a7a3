"""``on_store_error``, both ways, on a real store that is down (rule 13).

The store is the shared Redis, reached through a :class:`FaultProxy`: the
proxy refuses connections (a server that is gone) or black-holes them (a
hung server), while the records behind it survive, so the test can check
what the outage did to the user's stored session: nothing.

``"raise"`` (the default)
    a request that uses the session fails: gunicorn answers 500 and logs the
    :class:`StoreError` naming the store; no ``Set-Cookie``.
``"empty"``
    the request goes on with an empty session that is not saved: 200, the
    failure logged, no ``Set-Cookie``; and neither the outage nor the store
    coming back in the middle of the request (between the failed load and
    the save) replaces or changes the user's stored session.

Either way a request that never touches the session answers 200, a failure
comes within the store's timeout (plus a margin), and the same workers serve
the session again once the store is back.

Raw WSGI runs under gunicorn; Flask (``init_app(..., on_store_error=...)``)
and Pyramid (``kvsession.on_store_error`` in the settings) run in-process,
to show that their configuration reaches the same behaviour. Django's
setting (``WSGI_KVSESSION_OPTIONS``) is tested in
tests/integrations/test_django_store.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import client_for, set_cookies
from wsgi_kvsession import Session, StoreError
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import Store

from ..http.harness import GunicornServer
from ..stores.backend_redis import REDIS_URL, redis_store
from .app import build_store, store_error_policy
from .proxy import FaultProxy
from .support import (
    MARGIN,
    Timed,
    burst,
    delete_under,
    keys_under,
    new_prefix,
    redis_upstream,
    timed_get,
    worker_pids,
)

pytestmark = pytest.mark.server

POLICIES = ["raise", "empty"]
TIMEOUT = 1.0


@dataclass
class Down:
    """The shared Redis behind a proxy, a store through it, one straight to it."""

    proxy: FaultProxy
    url: str
    prefix: str
    direct: Store

    def store(self) -> Store:
        return build_store("redis", self.url, TIMEOUT)


@pytest.fixture
def down(proxy: Callable[[tuple[str, int]], FaultProxy]) -> Iterator[Down]:
    front = proxy(redis_upstream())
    direct = redis_store(REDIS_URL)
    setup = Down(front, f"redis://127.0.0.1:{front.port}/0", new_prefix(), direct)
    try:
        yield setup
    finally:
        delete_under(direct, setup.prefix)
        direct.close()


def _check_down_reply(policy: str, timed: Timed) -> None:
    reply = timed.ok()
    assert reply.set_cookies == [], f"{timed.path}: {reply.set_cookies}"
    assert timed.elapsed < TIMEOUT + MARGIN, f"{timed.path} took {timed.elapsed:.1f}s"
    if timed.path == "/pid":
        assert reply.status == 200
    elif policy == "raise":
        assert reply.status == 500, (timed.path, reply.status, reply.body)
    else:
        assert reply.status == 200, (timed.path, reply.status, reply.body)
        if timed.path == "/get":
            assert reply.json()["data"] == {}
            assert reply.json()["new"] is True


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_under_gunicorn_with_the_store_refused_then_hung(
    down: Down, serve: Callable[[Mapping[str, str]], GunicornServer], policy: str
) -> None:
    server = serve(
        {
            "FAULTS_STORE": "redis",
            "FAULTS_STORE_URL": down.url,
            "FAULTS_TIMEOUT": str(TIMEOUT),
            "FAULTS_KEY_PREFIX": down.prefix,
            "FAULTS_ON_STORE_ERROR": policy,
        }
    )
    workers = worker_pids(server)
    created = server.get("/set?k=a&v=1")
    assert created.status == 200, server.log_tail()
    cookie = created.cookie()
    assert cookie
    key = store_key(down.prefix, cookie)
    before = down.direct.load(key)
    assert before is not None
    requests = [("/pid", None), ("/get", cookie), ("/set?k=b&v=2", cookie), ("/set?k=c&v=3", None)]

    down.proxy.refuse()  # connections refused: every failure is immediate
    for timed in burst(server.port, requests * 3):
        _check_down_reply(policy, timed)
    down.proxy.black_hole()  # connections hang: each failure waits out the timeout
    for path, sent in requests:
        _check_down_reply(policy, timed_get(server.port, path, sent))

    down.proxy.forward()
    # Nothing was written during the outage: same record, same version.
    assert down.direct.load(key) == before
    assert keys_under(down.direct, down.prefix) == [key]
    back = server.get("/get", cookie)
    assert back.status == 200
    assert back.json()["data"] == {"a": "1"}
    for timed in burst(server.port, [("/get", cookie)] * 6):
        assert timed.ok().json()["data"] == {"a": "1"}
    assert worker_pids(server) == workers, "a worker was restarted"

    log = server.log_tail(400)
    store_name = f"RedisStore('{down.url}')"
    assert f"StoreError: {store_name}: load failed" in log, log
    assert f"StoreError: {store_name}: insert failed" in log, log
    if policy == "empty":
        assert "session store failed; continuing with an empty session" in log
        assert "session store failed; the session was not saved" in log
    else:
        assert "continuing with an empty session" not in log


def _outage_in_the_middle(down: Down) -> Callable[[Session, Any], Any]:
    """Routes: ``/set``; ``/read``; ``/outage``: the store is down when the
    session is read and back before the response (and so the save)."""

    def handler(session: Session, request: Any) -> Any:
        if request.path == "/set":
            session.update(request.args.items())
            return None
        if request.path == "/outage":
            down.proxy.refuse()
            try:
                seen: Any = dict(session)
            except StoreError:  # "raise": this app catches it and goes on
                seen = "error"
            down.proxy.forward()
            session["b"] = "2"  # the store answers again now
            return repr(seen)
        return repr(dict(session))

    return handler


@pytest.mark.parametrize("policy", POLICIES)
def test_a_store_back_before_the_save_never_replaces_the_session(down: Down, policy: str) -> None:
    store = down.store()
    try:
        client = client_for(
            _outage_in_the_middle(down), store, key_prefix=down.prefix, on_store_error=policy
        )
        assert set_cookies(client.get("/set?a=1"))
        cookie = client.get_cookie("session")
        assert cookie is not None
        key = store_key(down.prefix, cookie.value)
        before = down.direct.load(key)

        response = client.get("/outage")
        assert response.status_code == 200
        assert response.text == ("'error'" if policy == "raise" else "{}")
        assert set_cookies(response) == [], "a new session replaced the user's"
        assert down.direct.load(key) == before
        assert keys_under(down.direct, down.prefix) == [key]
        assert client.get("/read").text == "{'a': '1'}"
    finally:
        store.close()


# -- the frameworks' configuration ------------------------------------------


def _flask_app(down: Down, policy: str) -> Any:
    flask = pytest.importorskip("flask", reason="Flask is not installed")
    from wsgi_kvsession.integrations.flask import init_app

    app = flask.Flask(__name__)

    @app.route("/set")
    def set_() -> str:
        flask.session.update(flask.request.args.items())
        return "ok"

    @app.route("/get")
    def get() -> dict[str, Any]:
        return dict(flask.session)

    init_app(
        app,
        down.store(),
        key_prefix=down.prefix,
        cookie_secure=False,
        on_store_error=store_error_policy(policy),
    )
    return app


@pytest.mark.parametrize("policy", POLICIES)
def test_flask_init_app_takes_the_policy(
    down: Down, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = _flask_app(down, policy)
    client = app.test_client()
    assert client.get("/set?a=1").status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    before = down.direct.load(store_key(down.prefix, cookie.value))

    down.proxy.refuse()
    with caplog.at_level("ERROR"):
        read = client.get("/get")
        changed = client.get("/set?b=2")
    for response in (read, changed):
        assert response.headers.getlist("Set-Cookie") == []
        assert response.status_code == (500 if policy == "raise" else 200)
    if policy == "empty":
        assert read.get_json() == {}
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert logged, "the failure was not logged"
    assert all(isinstance(error, StoreError) for error in logged), logged

    down.proxy.forward()
    assert down.direct.load(store_key(down.prefix, cookie.value)) == before
    assert client.get("/get").get_json() == {"a": "1"}


def _pyramid_app(down: Down, policy: str) -> Any:
    pytest.importorskip("pyramid", reason="Pyramid is not installed")
    webtest = pytest.importorskip("webtest", reason="WebTest is not installed")
    from pyramid.config import Configurator

    config = Configurator(
        settings={
            "kvsession.store_url": down.url,
            "kvsession.key_prefix": down.prefix,
            "kvsession.cookie_secure": "false",
            "kvsession.on_store_error": policy,
        }
    )
    config.include("wsgi_kvsession.integrations.pyramid")

    def set_(request: Any) -> dict[str, str]:
        request.session.update(request.params.items())
        return {}

    def get(request: Any) -> dict[str, Any]:
        return dict(request.session)

    config.add_route("set", "/set")
    config.add_view(set_, route_name="set", renderer="json")
    config.add_route("get", "/get")
    config.add_view(get, route_name="get", renderer="json")
    return webtest.TestApp(config.make_wsgi_app())


@pytest.mark.parametrize("policy", POLICIES)
def test_pyramid_settings_take_the_policy(down: Down, policy: str) -> None:
    app = _pyramid_app(down, policy)
    app.get("/set?a=1")
    session_id = app.cookies["session"]
    before = down.direct.load(store_key(down.prefix, session_id))
    assert before is not None

    down.proxy.refuse()
    for path in ("/get", "/set?b=2"):
        if policy == "raise":
            # No exception view: the error reaches the server (a 500 there).
            with pytest.raises(StoreError, match=r"RedisStore\('redis://127\.0\.0\.1"):
                app.get(path)
        else:
            response = app.get(path)
            assert response.status_code == 200
            assert response.headers.getall("Set-Cookie") == []
            if path == "/get":
                assert response.json == {}

    down.proxy.forward()
    assert down.direct.load(store_key(down.prefix, session_id)) == before
    assert app.get("/get").json == {"a": "1"}
