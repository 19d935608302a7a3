"""Django projects with their sessions in a wsgi_kvsession store, through
Django's middleware stack: real views, ``django.contrib.auth`` login and
logout, Django's test ``Client`` and WebTest over Django's WSGI application.

Two ways of running, each on both stores and through both clients:

* ``stock``: Django's own ``SessionMiddleware`` with
  ``SESSION_ENGINE = "wsgi_kvsession.integrations.django"``: Django's rules;
* ``ours``: ``wsgi_kvsession.integrations.django.SessionMiddleware`` with no
  WSGI middleware in front: the core's rules, committed onto Django's response.
"""

from __future__ import annotations

import logging
import time

import pytest
from django.test import Client

from wsgi_kvsession import Session, envelope
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.integrations.django import KVSession, SessionStore, get_options

from . import django_support
from .django_support import (
    DRIVERS,
    OURS,
    PASSWORD,
    STOCK,
    USERNAME,
    DjangoSite,
    Driver,
    make_driver,
)
from .flask_support import Backend

# The fixtures of django_support, in this module.
key_prefix = django_support.key_prefix
site = django_support.site
django_user = django_support.django_user

COOKIE = "sessionid"  # Django's SESSION_COOKIE_NAME


@pytest.fixture(params=["stock", "ours"])
def mode(request: pytest.FixtureRequest, site: DjangoSite) -> str:
    site.middleware(STOCK if request.param == "stock" else OURS)
    return str(request.param)


@pytest.fixture(params=DRIVERS)
def client(request: pytest.FixtureRequest, site: DjangoSite, mode: str) -> Driver:
    return make_driver(site, request.param)


def login_path(password: str = PASSWORD) -> str:
    return f"/login?user={USERNAME}&password={password.replace(' ', '+')}"


def envelope_of(backend: Backend, cookie_value: str) -> envelope.Envelope | None:
    session_id = get_options().ids.decode(cookie_value)
    assert session_id is not None
    record = backend.inner.load(store_key(backend.key_prefix, session_id))
    return None if record is None else envelope.unpack(record.value)


# ============================================================ core flows


def test_set_and_get_across_requests(client: Driver, backend: Backend, mode: str) -> None:
    first = client.get("/set?a=1&b=two")
    cookie = first.cookie(COOKIE)
    assert cookie.value
    assert cookie.value == client.cookie(COOKIE)
    assert "Cookie" in (first.header("Vary") or "")
    assert backend.store.methods() == ["insert"]  # a new session: no load, one write
    assert len(backend.records()) == 1
    if mode == "ours":
        assert first.header("Cache-Control") == "no-store"

    backend.store.reset()
    assert client.get("/get?k=a").text == "'1'"
    assert client.get("/dump").text == "[('a', '1'), ('b', 'two')]"
    assert backend.store.methods() == ["load", "load"]


def test_store_calls_untouched_read_changed(client: Driver, backend: Backend, mode: str) -> None:
    client.get("/set?a=1")
    backend.store.reset()

    untouched = client.get("/nothing")
    assert backend.store.methods() == []
    assert untouched.cookies(COOKIE) == []
    assert untouched.header("Vary") is None

    read = client.get("/get?k=a")
    assert backend.store.methods() == ["load"]
    assert read.cookies(COOKIE) == []
    assert "Cookie" in (read.header("Vary") or "")

    backend.store.reset()
    client.get("/set?a=2")
    assert backend.store.methods() == ["load", "update"]

    backend.store.reset()
    client.get("/same?k=a")  # an equal value
    # Django's middleware saves whatever a setter touched (a touch, no rewrite);
    # ours compares bytes and writes nothing.
    assert backend.store.methods() == (["load", "touch"] if mode == "stock" else ["load"])
    assert client.get("/get?k=a").text == "'2'"


def test_nested_mutation_is_saved(client: Driver) -> None:
    client.get("/cart")
    client.get("/append?item=apple")
    client.get("/append?item=pear")
    assert client.get("/get?k=cart").text == "['apple', 'pear']"


def test_login_cycles_the_key_and_logout_ends_the_session(
    client: Driver, backend: Backend, django_user: tuple[str, str]
) -> None:
    client.get("/set?before=1")
    anonymous = client.cookie(COOKIE)
    assert anonymous is not None
    backend.store.reset()

    client.get(login_path())
    # One read, the old record deleted at once, the new one written once.
    assert backend.store.methods() == ["load", "delete", "insert"]
    logged_in = client.cookie(COOKIE)
    assert logged_in is not None
    assert logged_in != anonymous
    assert envelope_of(backend, anonymous) is None
    head = envelope_of(backend, logged_in)
    assert head is not None
    from django.contrib.auth.models import User  # needs the app registry (django_support)

    user = User.objects.get(username=USERNAME)
    assert head.user_id == str(user.pk)  # SessionManager.revoke_user() finds it
    assert client.get("/whoami").text == USERNAME
    assert client.get("/get?k=before").text == "'1'"  # the data came along

    out = client.get("/logout")
    assert out.cookie(COOKIE).deletes or out.cookie(COOKIE).max_age == 0
    assert backend.records() == {}
    assert client.cookie(COOKIE) is None
    assert client.get("/whoami").text == "anonymous"
    assert backend.records() == {}  # the anonymous visit after logout stores nothing


def test_failed_login_keeps_the_session(client: Driver, django_user: tuple[str, str]) -> None:
    client.get("/set?a=1")
    before = client.cookie(COOKIE)
    client.get(login_path("wrong"), status=403)
    assert client.cookie(COOKIE) == before
    assert client.get("/whoami").text == "anonymous"


def test_cycle_and_flush_views(client: Driver, backend: Backend) -> None:
    client.get("/set?a=1")
    old = client.cookie(COOKIE)
    client.get("/cycle")
    new = client.cookie(COOKIE)
    assert new is not None
    assert new != old
    assert client.get("/get?k=a").text == "'1'"
    assert len(backend.records()) == 1
    client.get("/flush")
    assert backend.records() == {}
    assert client.get("/dump").text == "[]"


def test_a_session_deleted_during_the_request_is_not_brought_back(
    client: Driver, backend: Backend, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.get("/set?a=1")
    with caplog.at_level(logging.WARNING, "wsgi_kvsession"):
        if mode == "stock":
            # Django: UpdateError -> SessionInterrupted -> 400 Bad Request.
            client.get("/vanish", status=400)
        else:
            # The core: the change is dropped and logged, the response stands.
            client.get("/vanish")
            assert "destroyed or expired while this request ran" in caplog.text
    assert backend.records() == {}
    assert client.get("/dump").text == "[]"


def test_server_errors_save_nothing(client: Driver, backend: Backend) -> None:
    client.get("/set?a=1")
    backend.store.reset()
    client.get("/boom", status=500)
    assert "update" not in backend.store.methods()
    assert client.get("/get?k=boom").text == "None"
    assert client.get("/get?k=a").text == "'1'"


def test_a_new_session_failing_stores_nothing(client: Driver, backend: Backend) -> None:
    client.get("/boom", status=500)
    assert backend.records() == {}
    assert client.cookie(COOKIE) is None


@pytest.mark.parametrize("planted", ["garbage", "x" * 40 + "/..", "unknown"])
def test_malformed_and_unknown_cookies_are_never_adopted(
    client: Driver, backend: Backend, planted: str
) -> None:
    well_formed = planted == "unknown"
    if well_formed:
        planted = get_options().ids.new_id()  # the right shape, but nobody stored it
    client.set_cookie(COOKIE, planted)
    backend.store.reset()
    client.get("/set?a=1")
    # A well-formed ID is looked up (and not found); anything else is not.
    assert backend.store.methods() == (["load", "insert"] if well_formed else ["insert"])
    issued = client.cookie(COOKIE)
    assert issued is not None
    assert issued != planted
    # (WebTest keeps a cookie set by hand beside the server's; a browser replaces it.)
    client.set_cookie(COOKIE, issued)
    assert client.get("/get?k=a").text == "'1'"


def test_malformed_cookie_costs_no_store_call(client: Driver, backend: Backend) -> None:
    client.set_cookie(COOKIE, "../../etc/passwd")
    backend.store.reset()
    assert client.get("/get?k=a").text == "None"
    assert backend.store.methods() == []


def test_set_expiry(client: Driver, backend: Backend) -> None:
    from django.conf import settings

    client.get("/set?a=1")
    browser = client.get("/expiry?value=0")
    assert browser.cookie(COOKIE).max_age is None  # a browser-session cookie
    head = envelope_of(backend, client.cookie(COOKIE) or "")
    assert head is not None
    assert head.permanent is False

    before = time.time()
    short = client.get("/expiry?value=300")
    assert short.text == "300"
    assert short.cookie(COOKIE).max_age == 300
    session_id = get_options().ids.decode(client.cookie(COOKIE) or "")
    assert session_id is not None
    record = backend.inner.load(store_key(backend.key_prefix, session_id))
    assert record is not None
    assert before + 299 <= record.expires_at <= time.time() + 301  # the server enforces it

    default = client.get("/expiry?value=none")
    assert default.cookie(COOKIE).max_age == settings.SESSION_COOKIE_AGE

    fixed = client.get("/expiry?value=in:120")
    assert 118 <= (fixed.cookie(COOKIE).max_age or 0) <= 121
    record = backend.inner.load(store_key(backend.key_prefix, session_id))
    assert record is not None
    assert record.expires_at <= time.time() + 121


def test_expiry_in_the_past_ends_the_session(client: Driver, backend: Backend) -> None:
    client.get("/set?a=1")
    client.get("/expiry?value=in:-10")
    assert backend.records() == {}
    assert client.get("/get?k=a").text == "None"


def test_session_key_of_a_new_session(client: Driver, backend: Backend) -> None:
    # The "make sure the visitor has a key" pattern: save() a new session.
    reply = client.get("/save-key")
    assert reply.text
    assert reply.text == client.cookie(COOKIE)
    assert client.get("/key").text == reply.text
    assert len(backend.records()) == 1


def test_settings_shape_the_cookie(site: DjangoSite, mode: str) -> None:
    site.settings(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_AGE=1000,
    )
    client = make_driver(site, "webtest")
    cookie = client.get("/set?a=1").cookie("sid")
    assert cookie.has("HttpOnly")
    assert cookie.attrs.get("samesite", "").lower() == "strict"
    assert cookie.max_age == 1000
    assert not cookie.has("Secure")  # SESSION_COOKIE_SECURE is False in Django by default


# ================================================== ours: the core's rules


@pytest.mark.parametrize("kind", DRIVERS)
def test_ours_sends_exactly_one_cookie_with_no_store(
    site: DjangoSite, backend: Backend, kind: str
) -> None:
    site.middleware(OURS)
    client = make_driver(site, kind)
    for path in ["/set?a=1", "/cycle", "/flush"]:
        reply = client.get(path)
        assert len(reply.cookies(COOKIE)) == 1, path
        assert reply.header("Cache-Control") == "no-store", path
        assert "Cookie" in (reply.header("Vary") or "")


@pytest.mark.parametrize("kind", DRIVERS)
def test_ours_replaces_a_cookie_the_view_set_under_its_name(site: DjangoSite, kind: str) -> None:
    site.middleware(OURS)
    client = make_driver(site, kind)
    reply = client.get("/own-cookie?a=1")
    (cookie,) = reply.cookies(COOKIE)
    assert cookie.value != "set-by-the-view"
    assert client.get("/get?k=a").text == "'1'"


def test_ours_cookie_survives_pickling_and_copying_the_response(
    site: DjangoSite, backend: Backend
) -> None:
    """Django's cache middleware pickles responses, and code copies them: the
    session cookie must come out the same (its text is the core's)."""
    import copy
    import pickle

    from django.http import HttpResponse
    from django.test import RequestFactory

    from wsgi_kvsession.integrations.django import SessionMiddleware

    def view(request: object) -> HttpResponse:
        request.session["a"] = 1  # type: ignore[attr-defined]
        return HttpResponse("ok")

    response = SessionMiddleware(view)(RequestFactory().get("/"))
    morsel = response.cookies[COOKIE]
    header = morsel.OutputString()
    assert header.startswith(f"{COOKIE}=")
    # S301: these are bytes this test pickled itself.
    cached = pickle.loads(pickle.dumps(response))  # noqa: S301
    assert cached.cookies[COOKIE].OutputString() == header
    pickled = pickle.loads(pickle.dumps(morsel))  # noqa: S301
    for clone in (copy.copy(morsel), copy.deepcopy(morsel), pickled):
        assert clone.OutputString() == header
        assert clone.value == morsel.value
        assert clone["path"] == morsel["path"] == "/"
    assert copy.copy(response.cookies).output() == response.cookies.output()


def test_ours_reports_a_change_made_by_a_streaming_body(
    site: DjangoSite, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    site.middleware(OURS)
    client = make_driver(site, "webtest")
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        assert client.get("/stream").text == "streamed"
    assert "changed after the response headers were sent" in caplog.text
    assert client.get("/dump").text == "[('cart', ['before'])]"  # the late change is not saved


def test_ours_works_under_the_site_wide_cache_middleware(site: DjangoSite) -> None:
    """UpdateCacheMiddleware pickles the responses it caches, after our
    middleware handled them: they must pickle (they once held a closer bound
    to the session, and with it the store's lock)."""
    site.settings(
        MIDDLEWARE=[
            "django.middleware.cache.UpdateCacheMiddleware",
            OURS,
            "django.middleware.cache.FetchFromCacheMiddleware",
        ],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        CACHE_MIDDLEWARE_KEY_PREFIX=f"wsgi-kvsession-{site.backend.key_prefix}",
    )
    client = Client(raise_request_exception=False)
    first = client.get("/nothing")
    assert first.status_code == 200
    assert "max-age" in first["Cache-Control"]  # cached by the middleware
    again = client.get("/nothing")
    assert again.status_code == 200
    assert again.content == b"nothing"
    written = client.get("/set?a=1")  # a session response is never cached
    assert written.status_code == 200
    assert written["Cache-Control"] == "no-store"
    assert client.get("/get?k=a").content == b"'1'"


def test_ours_request_session_is_a_kvsession(site: DjangoSite, backend: Backend) -> None:
    from django.http import HttpResponse
    from django.test import RequestFactory

    from wsgi_kvsession.integrations.django import SessionMiddleware

    seen: list[object] = []

    def view(request: object) -> HttpResponse:
        seen.append(request.session)  # type: ignore[attr-defined]
        request.session["a"] = 1  # type: ignore[attr-defined]
        return HttpResponse("ok")

    response = SessionMiddleware(view)(RequestFactory().get("/"))
    (session,) = seen
    assert isinstance(session, KVSession)
    assert response.cookies[COOKIE].value == session.session_key
    assert len(backend.records()) == 1


def test_ours_signs_the_cookie_when_asked(site: DjangoSite, backend: Backend) -> None:
    site.middleware(OURS)
    site.options(secret_key="django-middleware-signing-0123456789")
    client = make_driver(site, "webtest")
    client.get("/set?a=1")
    value = client.cookie(COOKIE)
    assert value is not None
    assert "." in value
    assert client.get("/get?k=a").text == "'1'"
    # The engine reads the same cookie value as its session key.
    assert SessionStore(value)["a"] == "1"


# ============================================== Django's test client API


@pytest.mark.parametrize("middleware", [STOCK, OURS])
def test_client_login_and_client_session(
    site: DjangoSite, backend: Backend, django_user: tuple[str, str], middleware: str
) -> None:
    site.middleware(middleware)
    client = Client()
    assert client.login(username=USERNAME, password=PASSWORD)
    assert client.get("/whoami").content == USERNAME.encode()

    session = client.session
    session["planted"] = "by the test"
    session.save()
    assert client.get("/get?k=planted").content == b"'by the test'"

    client.logout()
    assert client.get("/whoami").content == b"anonymous"
    assert backend.records() == {}


# ======================================== KVSession over a core session


def core_session(backend: Backend, cookie: str | None = None) -> Session:
    environ = {} if cookie is None else {"HTTP_COOKIE": f"{COOKIE}={cookie}"}
    return Session(backend.store, get_options(), environ)


def commit(session: Session) -> str | None:
    set_cookie, _ = session._commit(200)
    return None if set_cookie is None else set_cookie.split(";")[0].partition("=")[2]


def test_kvsession_is_a_session_proxy_and_a_session_base(
    site: DjangoSite, backend: Backend
) -> None:
    from django.contrib.sessions.backends.base import SessionBase

    from wsgi_kvsession.integrations.base import SessionProxy

    core = core_session(backend)
    session = KVSession(core)
    assert isinstance(session, SessionProxy)
    assert isinstance(session, SessionBase)
    assert session.raw is core
    assert session.accessed is False
    session.set_test_cookie()
    assert session.test_cookie_worked()
    session.delete_test_cookie()
    session.update({"a": 1}, b=2)
    assert sorted(session.items()) == [("a", 1), ("b", 2)]
    assert session.has_key("a")
    assert session.copy() == {"a": 1, "b": 2}
    assert session.id is None  # not stored yet
    cookie = commit(core)
    assert cookie is not None
    assert KVSession(core_session(backend, cookie)).load() == {"a": 1, "b": 2}


def test_kvsession_costs_no_serializer_import_per_request(
    site: DjangoSite, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SessionBase.__init__ imports SESSION_SERIALIZER, which KVSession never
    uses for storage: it is imported only when asked for (encode/decode)."""
    from django.contrib.sessions.serializers import JSONSerializer
    from django.utils import module_loading

    imported: list[str] = []
    real = module_loading.cached_import  # what every import_string() call ends in

    def counting(module_path: str, name: str) -> object:
        imported.append(f"{module_path}.{name}")
        return real(module_path, name)

    monkeypatch.setattr(module_loading, "cached_import", counting)
    session = KVSession(core_session(backend))
    assert imported == []
    assert session.accessed is False
    assert session.modified is False
    assert session.session_key is None
    assert session._session_key is None
    assert session.serializer is JSONSerializer
    assert session.decode(session.encode({"a": 1})) == {"a": 1}
    assert imported == ["django.contrib.sessions.serializers.JSONSerializer"]  # on demand


def test_kvsession_async_api(site: DjangoSite, backend: Backend) -> None:
    import asyncio

    core = core_session(backend)
    session = KVSession(core)

    async def use() -> None:
        assert await session.aget("missing", "default") == "default"
        await session.aset("a", 1)
        await session.aupdate({"b": 2})
        assert await session.asetdefault("c", 3) == 3
        assert await session.apop("c") == 3
        assert await session.ahas_key("a")
        await session.aset_expiry(0)
        assert await session.aget_expire_at_browser_close()

    asyncio.run(use())
    session._prepare_commit()
    cookie = commit(core)
    assert cookie is not None
    reread = KVSession(core_session(backend, cookie))

    async def cycle_and_flush() -> None:
        assert await reread.aget("a") == 1
        old = reread.session_key
        await reread.acycle_key()
        assert reread.session_key not in (None, old)
        await reread.aflush()

    asyncio.run(cycle_and_flush())
    assert backend.records() == {}


def test_kvsession_behind_a_wsgi_middleware_keeps_the_sites_cookie_kind(
    site: DjangoSite, backend: Backend
) -> None:
    """``_prepare_commit(own=False)``: only set_expiry() (or removing the
    expiry it set) changes the cookie kind; Django's write does not."""
    import dataclasses

    options = dataclasses.replace(get_options(), permanent_by_default=False)  # the site's

    def request(cookie: str | None = None) -> tuple[Session, KVSession]:
        environ = {} if cookie is None else {"HTTP_COOKIE": f"{COOKIE}={cookie}"}
        core = Session(backend.store, options, environ)
        return core, KVSession(core)

    core, session = request()
    session["a"] = 1
    session._prepare_commit(own=False)
    assert core.permanent is False
    cookie = commit(core)
    core, session = request(cookie)
    session.set_expiry(300)
    session._prepare_commit(own=False)
    assert core.permanent is True
    commit(core)
    core, session = request(cookie)
    session["b"] = 2  # the expiry set before still holds
    session._prepare_commit(own=False)
    assert core.permanent is True
    commit(core)
    core, session = request(cookie)
    session.clear()  # removes the expiry too: the site's default again
    session["c"] = 3
    session._prepare_commit(own=False)
    assert core.permanent is False
    commit(core)
    core, session = request(cookie)
    core.permanent = True  # another framework's choice
    session["d"] = 4
    session.set_expiry(None)  # no expiry to remove: nothing to go back to
    session._prepare_commit(own=False)
    assert core.permanent is True
    # Without a WSGI middleware, Django's policy decides, as in Django.
    core, session = request()
    session["e"] = 5
    session._prepare_commit(own=True)
    assert core.permanent is True  # SESSION_EXPIRE_AT_BROWSER_CLOSE=False


def test_the_user_tie_follows_the_auth_key_only(site: DjangoSite, backend: Backend) -> None:
    core = core_session(backend)
    core.user_id = 42  # tied by another framework (Flask-Login, say)
    session = KVSession(core)
    session.pop("_auth_user_id", None)  # absent: the tie stays
    assert core.user_id == 42
    session.setdefault("other", 1)
    session["_auth_user_id"] = "7"
    assert core.user_id == "7"
    session.setdefault("_auth_user_id", "8")  # present: unchanged
    assert core.user_id == "7"
    del session["_auth_user_id"]
    assert core.user_id is None


def test_kvsession_save_gives_a_new_session_its_key_at_once(
    site: DjangoSite, backend: Backend
) -> None:
    from django.contrib.sessions.backends.base import CreateError

    core = core_session(backend)
    session = KVSession(core)
    session["a"] = 1
    assert session.session_key is None
    session.save()
    key = session.session_key
    assert key is not None
    assert backend.records() == {}  # stored at the commit point, not before
    assert commit(core) == key
    assert session.exists(key)
    with pytest.raises(CreateError):
        KVSession(core_session(backend, key)).save(must_create=True)
