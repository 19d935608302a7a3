"""Django behind a :class:`~wsgi_kvsession.KVSessionMiddleware`: one session
shared with the other apps the middleware wraps.

``request.META`` of Django's ``WSGIRequest`` is the WSGI environ, so
``wsgi_kvsession.integrations.django.SessionMiddleware`` wraps the session the
WSGI middleware put there, and the WSGI middleware owns the cookie: a value
set by Flask (or a plain WSGI app) under the same middleware is read and
changed by Django and back, logging out in one logs out in all, and each
response carries at most one ``Set-Cookie`` for the session.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from django.conf import settings
from flask import Flask, session
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from wsgi_kvsession import KVSessionMiddleware, envelope, get_session
from wsgi_kvsession.ids import IdCodec, store_key
from wsgi_kvsession.integrations.django import session_options
from wsgi_kvsession.integrations.flask import KVSessionInterface

from . import django_support
from .django_support import OURS, PASSWORD, STOCK, USERNAME, DjangoSite
from .flask_support import Backend, Reply, WebTestDriver, add_routes

# The fixtures of django_support, in this module.
key_prefix = django_support.key_prefix
site = django_support.site
django_user = django_support.django_user

COOKIE = "session"  # the WSGI middleware's default cookie name


def wrapped(site: DjangoSite, backend: Backend, **options: Any) -> WebTestDriver:
    """Django (with our SessionMiddleware) behind the WSGI middleware."""
    site.middleware(OURS)
    app = KVSessionMiddleware(
        site.wsgi(), backend.store, key_prefix=backend.key_prefix, cookie_secure=False, **options
    )
    return site.webtest(app)


def login_path() -> str:
    return f"/login?user={USERNAME}&password={PASSWORD.replace(' ', '+')}"


def one_cookie(reply: Reply) -> None:
    """Rule 5: at most one Set-Cookie for the session, and never Django's own."""
    assert len(reply.cookies(COOKIE)) <= 1, reply.headers
    assert reply.cookies("sessionid") == [], reply.headers


# ======================================================= Django alone


def test_the_wsgi_middleware_owns_the_session(site: DjangoSite, backend: Backend) -> None:
    client = wrapped(site, backend)
    first = client.get("/set?a=1")
    one_cookie(first)
    assert first.cookie(COOKIE).value == client.cookie(COOKIE)
    assert first.header("Cache-Control") == "no-store"
    assert first.header("Vary") == "Cookie"
    assert backend.store.methods() == ["insert"]

    backend.store.reset()
    untouched = client.get("/nothing")
    assert backend.store.methods() == []
    assert untouched.header("Vary") is None
    assert client.get("/get?k=a").text == "'1'"
    assert backend.store.methods() == ["load"]


def test_login_and_logout_behind_the_middleware(
    site: DjangoSite, backend: Backend, django_user: tuple[str, str]
) -> None:
    client = wrapped(site, backend)
    client.get("/set?cart=1")
    anonymous = client.cookie(COOKIE)
    login = client.get(login_path())
    one_cookie(login)
    assert client.cookie(COOKIE) not in (None, anonymous)
    assert client.get("/whoami").text == USERNAME
    assert client.get("/get?k=cart").text == "'1'"
    assert len(backend.records()) == 1

    out = client.get("/logout")
    one_cookie(out)
    assert out.cookie(COOKIE).deletes
    assert backend.records() == {}
    assert client.get("/whoami").text == "anonymous"


def stored_permanent(backend: Backend, cookie_value: str | None) -> bool:
    """The ``permanent`` flag of the record behind a cookie value."""
    session_id = IdCodec().decode(cookie_value or "")
    assert session_id is not None
    record = backend.inner.load(store_key(backend.key_prefix, session_id))
    assert record is not None
    return envelope.unpack(record.value).permanent


def test_the_sites_cookie_policy_holds_behind_the_middleware(
    site: DjangoSite, backend: Backend
) -> None:
    """The cookie kind is the WSGI middleware's (``permanent_by_default``,
    False here), not Django's SESSION_EXPIRE_AT_BROWSER_CLOSE (False: lasting
    cookies); only an explicit ``set_expiry()`` changes it."""
    client = wrapped(site, backend)
    assert client.get("/set?a=1").cookie(COOKIE).max_age is None  # a browser-session cookie
    assert stored_permanent(backend, client.cookie(COOKIE)) is False
    assert client.get("/set?a=2").cookies(COOKIE) == []  # a later write keeps it so
    assert stored_permanent(backend, client.cookie(COOKIE)) is False
    assert client.get("/expiry?value=300").cookie(COOKIE).max_age == 300
    assert stored_permanent(backend, client.cookie(COOKIE)) is True
    assert client.get("/expiry?value=0").cookie(COOKIE).max_age is None
    assert client.get("/expiry?value=300").cookie(COOKIE).max_age == 300
    # set_expiry(None): back to the site's policy, not Django's.
    assert client.get("/expiry?value=none").cookie(COOKIE).max_age is None
    assert stored_permanent(backend, client.cookie(COOKIE)) is False


def test_a_lasting_site_cookie_stays_lasting_behind_the_middleware(
    site: DjangoSite, backend: Backend
) -> None:
    site.settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True)  # Django's; not the site's
    client = wrapped(site, backend, permanent_by_default=True, idle_timeout=600)
    assert client.get("/set?a=1").cookie(COOKIE).max_age == 600
    assert client.get("/expiry?value=0").cookie(COOKIE).max_age is None
    assert stored_permanent(backend, client.cookie(COOKIE)) is False
    assert client.get("/expiry?value=none").cookie(COOKIE).max_age == 600
    assert stored_permanent(backend, client.cookie(COOKIE)) is True


def test_middleware_options_rule_behind_the_middleware(site: DjangoSite, backend: Backend) -> None:
    site.settings(SESSION_COOKIE_NAME="ignored-here")
    client = wrapped(site, backend, cookie_name="sid", secret_key="front-signing-key-0123456789")
    reply = client.get("/key")
    assert reply.text == ""  # a new, empty session has no key
    client.get("/set?a=1")
    value = client.cookie("sid")
    assert value is not None  # signed by the middleware's key
    assert "." in value
    assert client.get("/key").text == value  # session_key is the cookie value
    assert client.cookie("ignored-here") is None


def test_a_session_deleted_meanwhile_is_not_brought_back(
    site: DjangoSite, backend: Backend
) -> None:
    client = wrapped(site, backend)
    client.get("/set?a=1")
    client.get("/vanish")
    assert backend.records() == {}


def test_session_options_build_a_matching_middleware(site: DjangoSite, backend: Backend) -> None:
    """``session_options()`` gives the WSGI middleware the options Django's test
    client and the engine use, so a cookie from one works in the other."""
    from wsgi_kvsession.integrations.django import SessionStore

    site.middleware(OURS)
    app = KVSessionMiddleware(site.wsgi(), backend.store, **session_options())
    client = site.webtest(app)
    reply = client.get("/set?a=1")
    value = client.cookie("sessionid")  # Django's SESSION_COOKIE_NAME
    assert value is not None
    assert SessionStore(value)["a"] == "1"
    # SESSION_EXPIRE_AT_BROWSER_CLOSE=False (Django's default) is the site's policy.
    assert reply.cookie("sessionid").max_age == settings.SESSION_COOKIE_AGE
    site.settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True)
    client = site.webtest(KVSessionMiddleware(site.wsgi(), backend.store, **session_options()))
    assert client.get("/set?a=1").cookie("sessionid").max_age is None


# ======================================== one session, several frameworks


def flask_app(backend: Backend) -> Flask:
    app = Flask("flask_beside_django")
    app.config.update(TESTING=True)
    app.session_interface = KVSessionInterface(
        backend.store, key_prefix=backend.key_prefix, cookie_secure=False
    )

    add_routes(app)

    @app.get("/browser-session")
    def browser_session() -> str:
        session.permanent = False
        session["kind"] = "browser"
        return "browser session"

    @app.get("/logout")
    def logout() -> str:
        session.destroy()  # type: ignore[attr-defined]
        return "logged out"

    return app


def raw_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A plain WSGI app: ``/raw/count`` counts visits in the session."""
    current = get_session(environ)
    current["visits"] = current.get("visits", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(current["visits"]).encode()]


@pytest.fixture
def mixed(site: DjangoSite, backend: Backend) -> WebTestDriver:
    """Flask at /flask, Django at /django and a raw WSGI app at /raw, one
    KVSessionMiddleware around all three."""
    site.middleware(OURS)
    dispatcher = DispatcherMiddleware(site.wsgi(), {"/flask": flask_app(backend), "/raw": raw_app})
    app = KVSessionMiddleware(
        dispatcher, backend.store, key_prefix=backend.key_prefix, cookie_secure=False
    )
    return site.webtest(app)


def test_values_travel_between_flask_django_and_raw_wsgi(
    mixed: WebTestDriver, backend: Backend
) -> None:
    for reply in [
        mixed.get("/flask/set?from_flask=1"),
        mixed.get("/set?from_django=2"),
        mixed.get("/raw/count"),
    ]:
        one_cookie(reply)
    cookie = mixed.cookie(COOKIE)
    assert len(backend.records()) == 1  # one session, one record

    assert mixed.get("/get?k=from_flask").text == "'1'"
    assert mixed.get("/flask/get?k=from_django").text == "'2'"
    assert mixed.get("/get?k=visits").text == "1"
    mixed.get("/set?from_flask=changed-by-django")
    assert mixed.get("/flask/get?k=from_flask").text == "'changed-by-django'"
    assert mixed.cookie(COOKIE) == cookie


def test_a_django_write_keeps_the_cookie_kind_flask_chose(
    site: DjangoSite, backend: Backend
) -> None:
    """A lasting site cookie made a browser-session cookie by the Flask part
    stays one when the Django part writes (Django's SESSION_EXPIRE_AT_BROWSER_CLOSE
    does not apply behind the WSGI middleware)."""
    site.middleware(OURS)
    dispatcher = DispatcherMiddleware(site.wsgi(), {"/flask": flask_app(backend)})
    app = KVSessionMiddleware(
        dispatcher,
        backend.store,
        key_prefix=backend.key_prefix,
        cookie_secure=False,
        permanent_by_default=True,
    )
    client = site.webtest(app)
    assert (client.get("/flask/set?a=1").cookie(COOKIE).max_age or 0) > 0
    assert client.get("/flask/browser-session").cookie(COOKIE).max_age is None
    for reply in (client.get("/set?b=2"), client.get("/cart"), client.get("/append?item=x")):
        assert all(cookie.max_age is None for cookie in reply.cookies(COOKIE)), reply.headers
    assert stored_permanent(backend, client.cookie(COOKIE)) is False
    assert client.get("/dump").text == (
        "[('a', '1'), ('b', '2'), ('cart', ['x']), ('kind', 'browser')]"
    )


def test_django_login_is_seen_by_flask_and_django_logout_logs_out_everywhere(
    mixed: WebTestDriver, backend: Backend, django_user: tuple[str, str]
) -> None:
    mixed.get("/flask/set?cart=apples")
    one_cookie(mixed.get(login_path()))
    assert mixed.get("/whoami").text == USERNAME
    assert mixed.get("/flask/get?k=cart").text == "'apples'"  # kept across cycle_key
    user_key = mixed.get("/flask/get?k=_auth_user_id").text
    assert user_key not in ("None", "")

    out = mixed.get("/logout")
    one_cookie(out)
    assert backend.records() == {}
    assert mixed.get("/flask/get?k=cart").text == "None"
    assert mixed.get("/flask/get?k=_auth_user_id").text == "None"


def test_flask_logout_logs_django_out(
    mixed: WebTestDriver, backend: Backend, django_user: tuple[str, str]
) -> None:
    mixed.get(login_path())
    assert mixed.get("/whoami").text == USERNAME
    out = mixed.get("/flask/logout")
    one_cookie(out)
    assert out.cookie(COOKIE).deletes
    assert backend.records() == {}
    assert mixed.get("/whoami").text == "anonymous"


def test_stock_django_middleware_behind_the_wsgi_middleware_is_a_separate_cookie(
    site: DjangoSite, backend: Backend
) -> None:
    """With Django's own middleware the WSGI middleware's session is not used:
    Django keeps its own cookie (documented; use ours to share)."""
    site.middleware(STOCK)
    app = KVSessionMiddleware(
        site.wsgi(), backend.store, key_prefix=backend.key_prefix, cookie_secure=False
    )
    client = site.webtest(app)
    reply = client.get("/set?a=1")
    assert reply.cookies(COOKIE) == []
    assert len(reply.cookies("sessionid")) == 1
