"""The Pyramid integration on a real Pyramid app under WebTest: ``ISession``,
flash, CSRF, login and logout, change detection and the store calls each kind
of request costs; each with a middleware in front and with the factory
committing the session itself, on memory and on Redis."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import webtest  # type: ignore[import-untyped]
from pyramid.interfaces import ICSRFStoragePolicy, ISession, ISessionFactory
from pyramid.testing import DummyRequest
from zope.interface.verify import verifyObject  # type: ignore[import-untyped]

from wsgi_kvsession import get_session
from wsgi_kvsession.integrations.pyramid import (
    CSRF_TOKEN_KEY,
    FLASH_KEY_PREFIX,
    KVSession,
    KVSessionCSRFStoragePolicy,
    KVSessionFactory,
)
from wsgi_kvsession.middleware import ENVIRON_KEY
from wsgi_kvsession.options import Options

from .pyramid_support import CSRF_POLICIES, MODES, Backend, make_app, reply, session_cookie


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(backend: Backend, mode: str) -> webtest.TestApp:
    """WebTest on the standard app, sessions from ``backend``."""
    return webtest.TestApp(make_app(backend, mode))


@pytest.fixture(params=CSRF_POLICIES)
def csrf_policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def csrf_client(backend: Backend, mode: str, csrf_policy: str) -> webtest.TestApp:
    """The same with ``set_default_csrf_options(require_csrf=True)``, under
    includeme's CSRF storage policy and under Pyramid's default one."""
    return webtest.TestApp(make_app(backend, mode, csrf=True, csrf_policy=csrf_policy))


def _json(client: webtest.TestApp, path: str) -> Any:
    return json.loads(client.get(path).text)


# ====================================================== the ISession contract


def test_session_and_factory_provide_pyramid_interfaces(backend: Backend) -> None:
    factory = KVSessionFactory(backend.store, key_prefix=backend.key_prefix)
    request = DummyRequest()
    session = factory(request)
    assert isinstance(session, KVSession)
    assert verifyObject(ISession, session)
    assert verifyObject(ISessionFactory, factory)
    # ISession's attributes and IDict's methods, beyond what verifyObject reads.
    session.update({"a": 1})
    assert session.setdefault("a", 2) == 1
    assert session.setdefault("b", 2) == 2
    assert sorted(session.keys()) == ["a", "b"]
    assert sorted(session.items()) == [("a", 1), ("b", 2)]
    assert sorted(session.values()) == [1, 2]
    assert session.pop("b") == 2
    assert session.pop("missing", "default") == "default"
    with pytest.raises(KeyError):
        session.pop("missing")
    assert session.popitem() == ("a", 1)
    assert len(session) == 0
    assert "a" not in session


def test_request_session_wraps_the_environ_session(client: webtest.TestApp, mode: str) -> None:
    seen = _json(client, "/owner")
    assert seen["same"] is True  # request.session is the session in environ
    # Only the factory's own session needs a response callback to commit it;
    # under the middleware, the middleware commits.
    assert seen["callbacks"] == (1 if mode == "factory" else 0)


def test_values_round_trip(client: webtest.TestApp, backend: Backend) -> None:
    client.get("/set?a=1&b=two")
    assert client.get("/dump").text == "[('a', '1'), ('b', 'two')]"
    assert len(backend.records()) == 1


# ============================================================ new, created


def test_new_and_created(client: webtest.TestApp) -> None:
    before = time.time()
    first = _json(client, "/info")
    assert first["new"] is True
    assert first["id"] is None
    assert isinstance(first["created"], float)
    assert before - 1 <= first["created"] <= time.time() + 1
    client.get("/set?a=1")
    stored = _json(client, "/info")
    assert stored["new"] is False
    assert stored["id"] is not None
    time.sleep(0.01)
    again = _json(client, "/info")
    assert again["created"] == stored["created"]  # the record's, not the request's


# ================================================================== flash


def test_flash_default_and_named_queues(client: webtest.TestApp) -> None:
    client.get("/flash?msg=hello")
    client.get("/flash?msg=again")
    client.get("/flash?msg=careful&queue=warning")
    assert _json(client, "/peek") == ["hello", "again"]
    assert _json(client, "/peek?queue=warning") == ["careful"]
    assert _json(client, "/peek") == ["hello", "again"]  # peek keeps the queue
    assert _json(client, "/pop") == ["hello", "again"]
    assert _json(client, "/pop") == []  # pop removed it
    assert _json(client, "/peek?queue=warning") == ["careful"]  # the other queue stays
    assert _json(client, "/pop?queue=warning") == ["careful"]
    assert _json(client, "/peek?queue=warning") == []


def test_flash_queues_live_under_pyramid_keys(client: webtest.TestApp, backend: Backend) -> None:
    client.get("/flash?msg=hello")
    client.get("/flash?msg=careful&queue=warning")
    assert client.get(f"/get?k={FLASH_KEY_PREFIX}").text == "['hello']"
    assert client.get(f"/get?k={FLASH_KEY_PREFIX}warning").text == "['careful']"


def test_flash_without_duplicates(client: webtest.TestApp) -> None:
    client.get("/flash?msg=once&dup=0")
    client.get("/flash?msg=once&dup=0")
    client.get("/flash?msg=twice")
    client.get("/flash?msg=twice")
    assert _json(client, "/pop") == ["once", "twice", "twice"]


def test_popping_the_last_flash_deletes_the_session(
    client: webtest.TestApp, backend: Backend
) -> None:
    client.get("/flash?msg=hello")
    assert len(backend.records()) == 1
    response = reply(client.get("/pop"))
    assert response.cookie().deletes  # emptied: record and cookie gone
    assert backend.records() == {}


# =================================================================== CSRF


def test_post_without_token_is_refused(csrf_client: webtest.TestApp, backend: Backend) -> None:
    response = csrf_client.post("/submit", {"v": "x"}, status=400)
    assert "CSRF" in response.text
    csrf_client.post("/submit", {"v": "x", "csrf_token": "forged"}, status=400)
    assert "v" not in csrf_client.get("/dump").text


def test_post_with_the_session_token_passes(csrf_client: webtest.TestApp) -> None:
    token = csrf_client.get("/token").text
    assert len(token) == 40
    int(token, 16)  # hex, as Pyramid's own tokens
    csrf_client.post("/submit", {"v": "by form", "csrf_token": token}, status=200)
    assert csrf_client.get("/get?k=v").text == "'by form'"
    csrf_client.post("/submit", {"v": "by header"}, headers={"X-CSRF-Token": token}, status=200)
    assert csrf_client.get("/get?k=v").text == "'by header'"
    assert csrf_client.get(f"/get?k={CSRF_TOKEN_KEY}").text == repr(token)


def test_token_survives_requests_and_rotates(csrf_client: webtest.TestApp) -> None:
    token = csrf_client.get("/token").text
    for _ in range(3):
        csrf_client.post("/submit", {"v": "x", "csrf_token": token}, status=200)
        assert csrf_client.get("/token").text == token
    new = csrf_client.get("/rotate").text
    assert new != token
    assert csrf_client.get("/token").text == new
    csrf_client.post("/submit", {"v": "x", "csrf_token": token}, status=400)
    csrf_client.post("/submit", {"v": "x", "csrf_token": new}, status=200)


def test_token_of_another_session_is_refused(
    backend: Backend, mode: str, csrf_policy: str, csrf_client: webtest.TestApp
) -> None:
    victim_token = csrf_client.get("/token").text
    attacker = webtest.TestApp(make_app(backend, mode, csrf=True, csrf_policy=csrf_policy))
    attacker.get("/token")
    attacker.post("/submit", {"v": "x", "csrf_token": victim_token}, status=400)


def test_refused_post_without_a_session_stores_nothing(backend: Backend, mode: str) -> None:
    client = webtest.TestApp(make_app(backend, mode, csrf=True))
    response = reply(client.post("/submit", {"v": "x", "csrf_token": "guess"}, status=400))
    assert response.all("Set-Cookie") == []
    assert backend.store.methods() == []
    assert backend.records() == {}
    # A session without a token (made before CSRF was on): refused, not written.
    client.get("/set?a=1")
    backend.store.reset()
    client.post("/submit", {"v": "x", "csrf_token": "guess"}, status=400)
    assert backend.store.methods() == ["load"]
    assert client.get(f"/get?k={CSRF_TOKEN_KEY}").text == "None"


def test_pyramid_default_policy_stores_a_session_for_a_refused_post(
    backend: Backend, mode: str
) -> None:
    # What includeme's policy avoids: Pyramid's default makes a token to check
    # against, so the refused request stores a session and sets a cookie.
    client = webtest.TestApp(make_app(backend, mode, csrf=True, csrf_policy="legacy"))
    response = reply(client.post("/submit", {"v": "x"}, status=400))
    assert response.cookie().value
    assert backend.store.methods() == ["insert"]


def test_csrf_policy_checks_bytes_and_odd_tokens(backend: Backend) -> None:
    factory = KVSessionFactory(backend.store, key_prefix=backend.key_prefix)
    request = DummyRequest()
    request.session = factory(request)
    policy = KVSessionCSRFStoragePolicy()
    assert verifyObject(ICSRFStoragePolicy, policy)
    assert policy.check_csrf_token(request, "anything") is False
    token = policy.get_csrf_token(request)
    assert policy.get_csrf_token(request) == token
    assert policy.check_csrf_token(request, token) is True
    assert policy.check_csrf_token(request, token.encode()) is True
    assert policy.check_csrf_token(request, token + "\udcff") is False
    assert policy.check_csrf_token(request, "é" * 40) is False
    assert policy.new_csrf_token(request) != token
    assert policy.check_csrf_token(request, token) is False


# ====================================================== login and logout


def test_login_regenerates_and_logout_invalidates(
    csrf_client: webtest.TestApp, backend: Backend
) -> None:
    token = csrf_client.get("/token").text
    before_login = session_cookie(csrf_client)
    assert before_login is not None
    old_keys = set(backend.records())
    csrf_client.post("/login", {"user": "alice", "csrf_token": token}, status=200)
    after_login = session_cookie(csrf_client)
    assert after_login is not None
    assert after_login != before_login
    assert set(backend.records()).isdisjoint(old_keys)  # the old record is gone
    assert len(backend.records()) == 1
    assert csrf_client.get("/whoami").text == "alice"
    assert csrf_client.get("/token").text == token  # data kept across regenerate

    response = reply(csrf_client.post("/logout", {"csrf_token": token}, status=200))
    cookie = response.cookie()
    assert cookie.deletes
    assert backend.records() == {}
    assert response.header("Cache-Control") == "no-store"

    # Replaying the logged-in cookie gets an anonymous session, and no record.
    replay = webtest.TestApp(csrf_client.app)
    replay.set_cookie("session", after_login)
    assert replay.get("/whoami").text == "anonymous"
    assert backend.records() == {}


def test_data_after_invalidate_starts_a_new_session(backend: Backend, mode: str) -> None:
    client = webtest.TestApp(make_app(backend, mode))
    client.get("/set?a=1")
    old = session_cookie(client)
    client.post("/logout")
    assert backend.records() == {}
    client.get("/flash?msg=bye")
    assert session_cookie(client) not in (None, old)
    assert _json(client, "/peek") == ["bye"]
    assert client.get("/get?k=a").text == "None"


def test_data_set_after_invalidate_in_the_same_request_gets_a_new_id(
    client: webtest.TestApp, backend: Backend
) -> None:
    client.post("/login", {"user": "carol"})
    logged_in = session_cookie(client)
    old_keys = set(backend.records())
    response = reply(client.post("/logout-and-flash"))
    new_cookie = response.cookie()
    assert new_cookie.value not in ("", logged_in)
    assert set(backend.records()).isdisjoint(old_keys)
    assert len(backend.records()) == 1
    assert client.get("/whoami").text == "anonymous"
    assert _json(client, "/pop") == ["logged out"]
    replay = webtest.TestApp(client.app)
    replay.set_cookie("session", logged_in)
    assert replay.get("/whoami").text == "anonymous"


def test_login_replay_of_pre_login_cookie_is_anonymous(
    client: webtest.TestApp, backend: Backend
) -> None:
    client.get("/set?a=1")
    planted = session_cookie(client)
    assert planted is not None
    client.post("/login", {"user": "bob"})
    attacker = webtest.TestApp(client.app)
    attacker.set_cookie("session", planted)
    assert attacker.get("/whoami").text == "anonymous"
    assert client.get("/whoami").text == "bob"


# ============================================ change detection and changed()


def test_nested_mutation_is_saved(client: webtest.TestApp) -> None:
    client.get("/cart")
    client.get("/append?item=apple")
    client.get("/append-changed?item=pear")
    assert client.get("/get?k=cart").text == "['apple', 'pear']"


def test_changed_forces_a_write(client: webtest.TestApp, backend: Backend) -> None:
    client.get("/set?a=1")
    backend.store.reset()
    client.get("/get?k=a")
    assert backend.store.methods() == ["load"]  # read only: no write
    backend.store.reset()
    client.get("/changed")
    assert backend.store.methods() == ["load", "update"]  # same data, written anyway


# ================================================ store calls per request


def test_store_calls_per_request(client: webtest.TestApp, backend: Backend) -> None:
    store = backend.store
    response = reply(client.get("/nothing"))
    assert store.methods() == []
    assert response.all("Set-Cookie") == []
    assert response.header("Vary") is None

    response = reply(client.get("/get?k=a"))  # no cookie yet: nothing to load
    assert store.methods() == []
    assert response.all("Set-Cookie") == []
    assert response.header("Vary") == "Cookie"

    response = reply(client.get("/set?a=1"))
    assert store.methods() == ["insert"]
    assert response.cookie().value
    assert response.header("Cache-Control") == "no-store"

    for path, calls in [
        ("/nothing", []),  # untouched, with a cookie: still nothing
        ("/get?k=a", ["load"]),  # read only
        ("/set?a=1", ["load"]),  # an equal value: nothing to write
        ("/set?a=2", ["load", "update"]),  # a change
    ]:
        store.reset()
        response = reply(client.get(path))
        assert store.methods() == calls, path
        assert response.all("Set-Cookie") == [], path


# ====================================================== the response side


def test_one_cookie_with_vary_and_no_store(client: webtest.TestApp) -> None:
    response = reply(client.get("/set?a=1"))
    cookie = response.cookie()
    assert cookie.has("HttpOnly")
    assert cookie.attrs.get("samesite") == "Lax"
    assert cookie.attrs.get("path") == "/"
    assert cookie.max_age is None  # not permanent: a browser-session cookie
    assert response.header("Vary") == "Cookie"
    assert response.header("Cache-Control") == "no-store"


def test_permanent_session_cookie_has_max_age(client: webtest.TestApp) -> None:
    cookie = reply(client.get("/permanent")).cookie()
    assert cookie.max_age is not None
    assert cookie.max_age > 0
    assert cookie.expires is not None


def test_error_response_saves_nothing(client: webtest.TestApp, backend: Backend) -> None:
    client.get("/set?a=1")
    response = client.get("/boom", status=500)
    assert response.text == "error: boom"
    assert client.get("/get?k=boom").text == "None"


def test_exception_view_response_is_committed(client: webtest.TestApp) -> None:
    response = reply(client.get("/redirect", status=302))
    assert response.cookie().value  # HTTPFound raised: its response carries the cookie
    assert client.get("/get?k=r").text == "'1'"


def test_change_after_the_response_callbacks(
    client: webtest.TestApp, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession.session"):
        client.get("/set?a=1&late=x")
    late = [r for r in caplog.records if "changed after the response" in r.getMessage()]
    if mode == "middleware":
        # The middleware commits when the body starts: the change is saved.
        assert client.get("/get?k=late").text == "'late:x'"
        assert late == []
    else:
        # The factory committed in its response callback: not saved, but logged.
        assert client.get("/get?k=late").text == "'x'"
        assert len(late) == 1


def test_nested_change_after_the_response_callbacks(
    client: webtest.TestApp, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession.session"):
        client.get("/cart?late_item=y")
    late = [r for r in caplog.records if "changed after the response" in r.getMessage()]
    if mode == "middleware":
        assert client.get("/get?k=cart").text == "['y']"
        assert late == []
    else:
        # No setter ran: the check at the end of the request finds it.
        assert client.get("/get?k=cart").text == "[]"
        assert len(late) == 1


def _late_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "changed after the response" in r.getMessage()]


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [("/nothing?late=x", "late", "late:x"), ("/nothing?finished=x", "finished", "finished:x")],
    ids=["new-response-subscriber", "finished-callback"],
)
def test_first_use_after_the_response_callbacks(
    client: webtest.TestApp,
    backend: Backend,
    mode: str,
    caplog: pytest.LogCaptureFixture,
    path: str,
    key: str,
    value: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession.session"):
        response = reply(client.get(path))
    if mode == "middleware":
        # The middleware commits when the body starts, after both.
        assert response.cookie().value
        assert _late_warnings(caplog) == []
        assert client.get(f"/get?k={key}").text == repr(value)
    else:
        # The factory's commit callback is added after Pyramid ran the
        # response callbacks: the session is never committed, but not silently.
        assert response.cookies() == []
        assert backend.records() == {}
        assert len(_late_warnings(caplog)) == 1
        assert "not saved" in _late_warnings(caplog)[0].getMessage()


def test_first_read_after_the_response_callbacks_is_no_change(
    client: webtest.TestApp, caplog: pytest.LogCaptureFixture
) -> None:
    client.get("/set?a=1")
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession.session"):
        response = reply(client.get("/nothing?late_read=a"))
    assert response.cookies() == []
    assert _late_warnings(caplog) == []


def test_unhandled_exception_saves_nothing_and_reports_no_late_change(
    client: webtest.TestApp, caplog: pytest.LogCaptureFixture
) -> None:
    from .pyramid_support import Crash

    client.get("/set?a=1")
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession.session"):
        with pytest.raises(Crash):
            client.get("/crash")
    # The factory never committed here either, but nothing was sent: no
    # response went out without the session, so there is nothing to report.
    assert _late_warnings(caplog) == []
    assert client.get("/get?k=crash").text == "None"


def test_secure_and_signed_options_reach_the_cookie(backend: Backend, mode: str) -> None:
    client = webtest.TestApp(
        make_app(backend, mode, cookie_name="sid", secret_key="x" * 32),
        extra_environ={"wsgi.url_scheme": "https"},
    )
    response = reply(client.get("/set?a=1"))
    cookie = response.cookie("sid")
    assert "." in cookie.value  # signed
    assert response.cookies("session") == []
    assert client.get("/get?k=a").text == "'1'"


# ====================================== the factory without a middleware


def test_factory_without_store_or_middleware_names_the_fix() -> None:
    from .pyramid_support import make_config

    config = make_config()
    config.include("wsgi_kvsession.integrations.pyramid")
    client = webtest.TestApp(config.make_wsgi_app())
    assert client.get("/nothing").text == "nothing"  # no session use, no error
    with pytest.raises(RuntimeError, match="KVSessionMiddleware") as info:
        client.get("/get?k=a")
    assert "kvsession.store_url" in str(info.value)


def test_factory_session_is_in_environ_for_other_code(backend: Backend) -> None:
    factory = KVSessionFactory(backend.store, key_prefix=backend.key_prefix)
    request = DummyRequest()
    session = factory(request)
    assert request.environ[ENVIRON_KEY] is session.raw
    assert get_session(request.environ) is session.raw
    assert len(request.response_callbacks) == 1


def test_factory_called_twice_for_one_request_gives_one_session(backend: Backend) -> None:
    factory = KVSessionFactory(backend.store, key_prefix=backend.key_prefix)
    request = DummyRequest()
    assert factory(request).raw is factory(request).raw
    assert len(request.response_callbacks) == 1


def test_factory_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="options need a store"):
        KVSessionFactory(cookie_name="sid")
    with pytest.raises(TypeError, match="a store URL"):
        KVSessionFactory(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cookie_samesite"):
        KVSessionFactory("memory://", cookie_samesite="None", cookie_secure=False)
    factory = KVSessionFactory("memory://", idle_timeout=60)
    assert isinstance(factory.options, Options)
    assert factory.options.idle_timeout == 60
