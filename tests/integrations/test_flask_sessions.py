"""``flask.session`` served by wsgi_kvsession: Flask's documented session
behaviours, modelled on Flask's own tests (``tests/test_basic.py`` and
``tests/test_testing.py`` of pallets/flask), plus what a server-side store adds
(records, store calls, regenerate/destroy).

The core flows run through Flask's test client and WebTest (``drive``), and
through each way of wiring the sessions in (``init_app``, the two-liner, and
``KVSessionInterface(store)`` without a middleware).
"""

from __future__ import annotations

import datetime
import re
import uuid
from pathlib import Path
from typing import Any

import flask
import pytest
from flask import Response, flash, get_flashed_messages, render_template, session
from markupsafe import Markup

from wsgi_kvsession.integrations.flask import KVSession

from ..support import Clock
from .flask_support import (
    MODES,
    AppFactory,
    Backend,
    DriverFactory,
    SetCookie,
    reply,
)

LIFETIME = 3600

# ============================================================ core flows
# Both test clients, all three wirings, both stores.


@pytest.mark.parametrize("mode", MODES)
def test_session_set_and_get_across_requests(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    client = drive(make_app(mode=mode))

    first = client.get("/set?a=1&b=two")
    cookie = first.cookie()
    assert cookie.value
    assert cookie.value == client.cookie()
    assert first.header("Vary") == "Cookie"
    assert first.header("Cache-Control") == "no-store"
    assert backend.store.methods() == ["insert"]  # a new session: no load at all
    assert len(backend.records()) == 1

    backend.store.reset()
    assert client.get("/get?k=a").text == "'1'"
    assert client.get("/dump").text == "[('a', '1'), ('b', 'two')]"
    assert backend.store.methods() == ["load", "load"]


@pytest.mark.parametrize("mode", MODES)
def test_store_calls_untouched_read_only_and_changed(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    client = drive(make_app(mode=mode))
    client.get("/set?a=1")
    backend.store.reset()

    untouched = client.get("/nothing")
    assert backend.store.methods() == []
    assert untouched.cookies() == []
    assert untouched.header("Vary") is None

    read = client.get("/get?k=a")
    assert backend.store.methods() == ["load"]
    assert read.cookies() == []  # issue #27 of Flask-KVSession: the cookie stays
    assert read.header("Vary") == "Cookie"

    backend.store.reset()
    changed = client.get("/set?a=2")
    assert backend.store.methods() == ["load", "update"]
    assert changed.cookies() == []  # same ID, browser-session cookie: nothing to resend

    backend.store.reset()
    same = client.get("/set?a=2")  # an equal value is not a change
    assert backend.store.methods() == ["load"]
    assert same.cookies() == []
    assert client.get("/get?k=a").text == "'2'"


@pytest.mark.parametrize("mode", MODES)
def test_clear_logs_out(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    client = drive(make_app(mode=mode))
    client.get("/set?user=alice")
    assert len(backend.records()) == 1
    backend.store.reset()

    out = client.get("/clear")
    assert backend.store.methods() == ["load", "delete"]
    assert out.cookie().deletes
    assert backend.records() == {}
    assert client.cookie() is None
    assert client.get("/dump").text == "[]"


@pytest.mark.parametrize("mode", MODES)
def test_regenerate_gives_a_new_id_and_keeps_the_data(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    client = drive(make_app(mode=mode))
    client.get("/set?a=1")
    old_cookie = client.cookie()
    assert old_cookie is not None
    (old_key,) = backend.records()

    renewed = client.get("/regenerate")
    new_cookie = renewed.cookie().value
    assert new_cookie
    assert new_cookie != old_cookie
    assert client.cookie() == new_cookie
    (new_key,) = backend.records()
    assert new_key != old_key  # the old record is gone, one record remains
    assert client.get("/get?k=a").text == "'1'"

    client.set_cookie("session", old_cookie)  # someone who kept the old ID
    assert client.get("/dump").text == "[]"


@pytest.mark.parametrize("mode", MODES)
def test_destroy_deletes_the_record_and_expires_the_cookie(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    client = drive(make_app(mode=mode))
    client.get("/set?a=1")
    old_cookie = client.cookie()
    assert old_cookie is not None

    gone = client.get("/destroy")
    assert gone.cookie().deletes
    assert backend.records() == {}
    assert client.cookie() is None

    client.set_cookie("session", old_cookie)
    assert client.get("/dump").text == "[]"


@pytest.mark.parametrize("mode", MODES)
def test_unhandled_exception_500_saves_nothing(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    app = make_app(mode=mode)
    app.testing = False  # Flask answers 500 instead of re-raising
    client = drive(app)

    failed = client.get("/boom", status=500)  # a new session: nothing stored
    assert failed.cookies() == []
    assert backend.store.methods() == []
    assert backend.records() == {}

    client.get("/set?a=1")
    backend.store.reset()
    failed = client.get("/boom", status=500)
    assert failed.cookies() == []
    assert backend.store.methods() == ["load"]  # read, never written
    assert client.get("/dump").text == "[('a', '1')]"


@pytest.mark.parametrize("mode", MODES)
def test_propagated_exception_saves_nothing(
    make_app: AppFactory, backend: Backend, mode: str
) -> None:
    app = make_app(mode=mode)
    app.testing = True  # the exception reaches the test client
    client = app.test_client()
    client.get("/set?a=1")
    backend.store.reset()
    with pytest.raises(RuntimeError, match="boom"):
        client.get("/boom")
    assert "update" not in backend.store.methods()
    assert client.get("/dump").text == "[('a', '1')]"


@pytest.mark.parametrize("mode", MODES)
def test_nested_mutation_is_saved_without_setting_modified(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    client = drive(make_app(mode=mode))
    client.get("/cart")
    backend.store.reset()

    assert client.get("/append?item=apple").text == "True"  # session.modified in the view
    assert backend.store.methods() == ["load", "update"]
    client.get("/append?item=pear")
    assert client.get("/get?k=cart").text == "['apple', 'pear']"


@pytest.mark.parametrize("mode", MODES)
def test_modified_true_forces_a_write(
    make_app: AppFactory, drive: DriverFactory, backend: Backend, mode: str
) -> None:
    client = drive(make_app(mode=mode))
    client.get("/set?a=1")
    backend.store.reset()
    client.get("/force")
    assert backend.store.methods() == ["load", "update"]
    assert client.get("/get?k=a").text == "'1'"


# ======================================================== cookie attributes


@pytest.mark.usefixtures("backend")
def test_default_cookie_attributes_follow_flask_defaults(make_app: AppFactory) -> None:
    cookie = reply(make_app().test_client().get("/set?a=1")).cookie()
    # Flask's defaults: HttpOnly on, Secure off, no SameSite, no Domain, path "/".
    assert cookie.has("httponly")
    assert not cookie.has("secure")
    assert not cookie.has("samesite")
    assert not cookie.has("partitioned")
    assert not cookie.has("domain")
    assert cookie.attrs["path"] == "/"
    assert cookie.max_age is None
    assert cookie.expires is None


@pytest.mark.usefixtures("backend")
def test_cookie_path_follows_application_root(make_app: AppFactory) -> None:
    app = make_app({"APPLICATION_ROOT": "/foo"})
    client = app.test_client()
    cookie = reply(client.get("/set?a=1", base_url="http://localhost/foo")).cookie()
    assert cookie.attrs["path"] == "/foo"
    assert client.get("/get?k=a", base_url="http://localhost/foo").text == "'1'"
    # Outside /foo the browser does not send it.
    assert client.get("/get?k=a", base_url="http://localhost/").text == "None"


@pytest.mark.usefixtures("backend")
def test_session_cookie_path_wins_over_application_root(make_app: AppFactory) -> None:
    app = make_app({"APPLICATION_ROOT": "/foo", "SESSION_COOKIE_PATH": "/foo/app"})
    cookie = reply(app.test_client().get("/set?a=1", base_url="http://localhost/foo")).cookie()
    assert cookie.attrs["path"] == "/foo/app"


@pytest.mark.usefixtures("backend")
def test_session_cookie_path_applies_to_clearing_too(make_app: AppFactory) -> None:
    app = make_app({"SESSION_COOKIE_PATH": "/sub"})

    @app.route("/sub/set")
    def sub_set() -> str:
        session["a"] = "1"
        return "set"

    @app.route("/sub/clear")
    def sub_clear() -> str:
        session.clear()
        return "cleared"

    client = app.test_client()
    assert reply(client.get("/sub/set")).cookie().attrs["path"] == "/sub"
    cleared = reply(client.get("/sub/clear")).cookie()
    assert cleared.deletes
    assert cleared.attrs["path"] == "/sub"


@pytest.mark.usefixtures("backend")
def test_session_cookie_domain(make_app: AppFactory) -> None:
    app = make_app({"SESSION_COOKIE_DOMAIN": ".example.com"})
    client = app.test_client()
    cookie = reply(client.get("/set?a=1", base_url="http://www.example.com")).cookie()
    assert cookie.attrs["domain"] == "example.com"  # Werkzeug drops the leading dot
    # Sent to every host of the domain, not to others.
    assert client.get("/get?k=a", base_url="http://api.example.com").text == "'1'"
    assert client.get("/get?k=a", base_url="http://example.org").text == "None"


@pytest.mark.usefixtures("backend")
def test_session_using_session_settings(make_app: AppFactory) -> None:
    # Flask's test_session_using_session_settings, with a server-side store.
    app = make_app(
        {
            "SERVER_NAME": "www.example.com:8080",
            "APPLICATION_ROOT": "/test",
            "SESSION_COOKIE_DOMAIN": ".example.com",
            "SESSION_COOKIE_HTTPONLY": False,
            "SESSION_COOKIE_SECURE": True,
            "SESSION_COOKIE_PARTITIONED": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_PATH": "/",
        }
    )
    client = app.test_client()
    base = "https://www.example.com:8080/test/"

    def check(cookie: SetCookie) -> None:
        assert cookie.attrs["domain"] == "example.com"
        assert cookie.attrs["path"] == "/"
        assert cookie.has("secure")
        assert not cookie.has("httponly")
        assert cookie.attrs["samesite"] == "Lax"
        assert cookie.has("partitioned")

    check(reply(client.get("/set?testing=42", base_url=base)).cookie())
    assert client.get("/get?k=testing", base_url=base).text == "'42'"
    # Removing the cookie takes the same attributes, else the browser keeps it:
    # by emptying the session, and by destroy().
    for route in ["/clear", "/destroy"]:
        client.get("/set?testing=42", base_url=base)
        removed = reply(client.get(route, base_url=base)).cookie()
        assert removed.deletes
        check(removed)
        assert client.get("/dump", base_url=base).text == "[]"


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(
    ("samesite", "expected"),
    [(None, None), ("Strict", "Strict"), ("Lax", "Lax"), ("lax", "Lax")],
)
def test_samesite_attribute(make_app: AppFactory, samesite: str | None, expected: str) -> None:
    app = make_app({"SESSION_COOKIE_SAMESITE": samesite})
    cookie = reply(app.test_client().get("/set?a=1")).cookie()
    assert cookie.attrs.get("samesite") == expected


@pytest.mark.usefixtures("backend")
def test_samesite_none_needs_secure(make_app: AppFactory) -> None:
    app = make_app({"SESSION_COOKIE_SAMESITE": "None", "SESSION_COOKIE_SECURE": True})
    cookie = reply(app.test_client().get("/set?a=1", base_url="https://localhost")).cookie()
    assert cookie.attrs["samesite"] == "None"
    assert cookie.has("secure")


@pytest.mark.usefixtures("backend")
def test_invalid_samesite_is_a_clear_error(make_app: AppFactory) -> None:
    # Set before init_app: refused there.
    with pytest.raises(ValueError, match=r"samesite='invalid'.*'Lax', 'Strict', 'None'"):
        make_app({"SESSION_COOKIE_SAMESITE": "invalid"})
    # Set after init_app: refused at the first request, before any store call.
    app = make_app()
    app.config["SESSION_COOKIE_SAMESITE"] = "invalid"
    with pytest.raises(ValueError, match=r"samesite='invalid'"):
        app.test_client().get("/set?a=1")


# =========================================================== expiration


def _check_expires(cookie: SetCookie, before: datetime.datetime, after: datetime.datetime) -> None:
    """Expires says the same as Max-Age: it lies between request start + Max-Age
    and request end + Max-Age (give or take the header's whole seconds)."""
    expires, max_age = cookie.expires, cookie.max_age
    assert expires is not None
    assert max_age is not None
    low = before + datetime.timedelta(seconds=max_age - 1)
    high = after + datetime.timedelta(seconds=max_age)
    assert low <= expires <= high, (before, expires, after)


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(
    "lifetime", [LIFETIME, datetime.timedelta(hours=5)], ids=["int", "timedelta"]
)
def test_permanent_cookie_has_max_age_and_expires(
    make_app: AppFactory, lifetime: int | datetime.timedelta
) -> None:
    seconds = lifetime if isinstance(lifetime, int) else int(lifetime.total_seconds())
    app = make_app({"PERMANENT_SESSION_LIFETIME": lifetime})
    client = app.test_client()
    before = datetime.datetime.now(datetime.timezone.utc)
    cookie = reply(client.get("/permanent")).cookie()
    after = datetime.datetime.now(datetime.timezone.utc)
    assert cookie.max_age == seconds
    _check_expires(cookie, before, after)
    assert client.get("/get?k=p").text == "'1'"


@pytest.mark.usefixtures("backend")
def test_permanent_cookie_with_flasks_default_lifetime(make_app: AppFactory) -> None:
    # 31 days: longer than the core's default absolute timeout of 30 days,
    # which must not cut it short.
    client = make_app().test_client()
    before = datetime.datetime.now(datetime.timezone.utc)
    cookie = reply(client.get("/permanent")).cookie()
    after = datetime.datetime.now(datetime.timezone.utc)
    days31 = 31 * 24 * 3600
    assert cookie.max_age is not None
    assert days31 - 1 <= cookie.max_age <= days31
    _check_expires(cookie, before, after)


@pytest.mark.usefixtures("backend")
def test_session_expiration_permanent_then_not(make_app: AppFactory) -> None:
    # Flask's test_session_expiration: permanent has Expires; turning it back
    # into a browser-session cookie re-sends it without Expires.
    client = make_app({"PERMANENT_SESSION_LIFETIME": LIFETIME}).test_client()
    assert reply(client.get("/permanent")).cookie().has("expires")
    transient = reply(client.get("/transient")).cookie()
    assert not transient.has("expires")
    assert transient.max_age is None
    assert client.get("/get?k=p").text == "'1'"


@pytest.mark.usefixtures("backend")
def test_non_permanent_cookie_has_neither_max_age_nor_expires(make_app: AppFactory) -> None:
    client = make_app({"PERMANENT_SESSION_LIFETIME": LIFETIME}).test_client()
    cookie = reply(client.get("/set?a=1")).cookie()
    assert not cookie.has("max-age")
    assert not cookie.has("expires")


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("route", ["/permanent", "/set?a=1"], ids=["permanent", "transient"])
def test_server_ends_the_session_after_the_lifetime(
    make_app: AppFactory, clock: Clock, route: str
) -> None:
    client = make_app({"PERMANENT_SESSION_LIFETIME": LIFETIME}).test_client()
    client.get(route)
    clock.advance(LIFETIME - 10)
    assert client.get("/dump").text != "[]"  # still there, and the read slid the deadline
    clock.advance(LIFETIME - 10)
    assert client.get("/dump").text != "[]"
    clock.advance(LIFETIME + 1)
    assert client.get("/dump").text == "[]"


# ========================================================== refreshing


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(
    ("refresh", "permanent", "expect_cookie"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_session_refresh_each_request(
    make_app: AppFactory, refresh: bool, permanent: bool, expect_cookie: bool
) -> None:
    # Flask's test_session_cookie_setting.
    app = make_app(
        {"SESSION_REFRESH_EACH_REQUEST": refresh, "PERMANENT_SESSION_LIFETIME": LIFETIME}
    )
    client = app.test_client()
    first = reply(client.get("/permanent" if permanent else "/set?p=1"))
    assert len(first.cookies()) == 1
    read = reply(client.get("/get?k=p"))
    assert read.text == "'1'"
    assert (len(read.cookies()) == 1) == expect_cookie
    if expect_cookie:
        cookie = read.cookie()
        assert cookie.value == client.get_cookie("session").value  # type: ignore[union-attr]
        assert cookie.max_age is not None
        assert 0 < cookie.max_age <= LIFETIME


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("refresh", [True, False])
def test_a_changed_permanent_session_always_sends_its_cookie(
    make_app: AppFactory, refresh: bool
) -> None:
    client = make_app({"SESSION_REFRESH_EACH_REQUEST": refresh}).test_client()
    client.get("/permanent")
    assert len(reply(client.get("/permanent?p=2")).cookies()) == 1


def test_refresh_never_costs_an_untouched_request(make_app: AppFactory, backend: Backend) -> None:
    # Unlike Flask's cookie sessions, a request that never uses the session
    # does not load it to refresh the cookie: no store call, no cookie, no Vary.
    client = make_app({"SESSION_REFRESH_EACH_REQUEST": True}).test_client()
    client.get("/permanent")
    backend.store.reset()
    untouched = reply(client.get("/nothing"))
    assert backend.store.methods() == []
    assert untouched.cookies() == []
    assert untouched.header("Vary") is None


# ============================================================ Vary: Cookie


@pytest.mark.usefixtures("backend")
def test_session_vary_cookie(make_app: AppFactory) -> None:
    # Flask's test_session_vary_cookie, plus every other way of reading.
    app = make_app()

    @app.route("/setdefault")
    def setdefault() -> str:
        return str(session.setdefault("test", "default"))

    @app.route("/getitem")
    def getitem() -> str:
        return str(session["test"])

    @app.route("/len")
    def length() -> str:
        return str(len(session))

    @app.route("/iter")
    def iterate() -> str:
        return repr(list(session))

    @app.route("/in")
    def contains() -> str:
        return repr("test" in session)

    @app.route("/bool")
    def truth() -> str:
        return repr(bool(session))

    @app.route("/flashes")
    def flashes() -> str:
        return repr(get_flashed_messages())

    @app.route("/vary-cookie-header-set")
    def vary_cookie_header_set() -> Response:
        response = Response()
        response.vary.add("Cookie")
        session["test"] = "test"
        return response

    @app.route("/vary-header-set")
    def vary_header_set() -> Response:
        response = Response()
        response.vary.update(("Accept-Encoding", "Accept-Language"))
        session["test"] = "test"
        return response

    client = app.test_client()

    def expect(path: str, header_value: str | None = "Cookie") -> None:
        response = reply(client.get(path))
        assert response.status == 200, response.text
        assert response.header("Vary") == header_value, path

    expect("/setdefault")
    for path in ["/getitem", "/get?k=test", "/len", "/iter", "/in", "/bool", "/dump"]:
        expect(path)
    expect("/flashes")
    expect("/clear")
    expect("/vary-cookie-header-set")
    expect("/vary-header-set", "Accept-Encoding, Accept-Language, Cookie")
    expect("/nothing", None)


def test_touching_the_proxy_without_reading_costs_nothing(
    make_app: AppFactory, backend: Backend
) -> None:
    # Flask marks session.accessed whenever the proxy is resolved; only a
    # real read counts here.
    app = make_app()

    @app.route("/proxy")
    def proxy() -> str:
        current = session._get_current_object()  # type: ignore[attr-defined]
        return type(current).__name__

    client = app.test_client()
    client.get("/set?a=1")
    backend.store.reset()
    touched = reply(client.get("/proxy"))
    assert touched.text == "KVSession"
    assert backend.store.methods() == []
    assert touched.header("Vary") is None
    assert touched.cookies() == []


def test_render_template_that_does_not_read_the_session_costs_nothing(
    make_app: AppFactory, backend: Backend, tmp_path: Path
) -> None:
    (tmp_path / "plain.html").write_text("<p>{{ greeting }}</p>")
    (tmp_path / "reads.html").write_text("<p>{{ session.get('a') }}</p>")
    (tmp_path / "flashes.html").write_text("<p>{{ get_flashed_messages() }}</p>")
    app = make_app()
    app.add_url_rule("/plain", "plain", lambda: render_template("plain.html", greeting="hi"))
    app.add_url_rule("/reads", "reads", lambda: render_template("reads.html"))
    app.add_url_rule("/flashes", "flashes", lambda: render_template("flashes.html"))
    client = app.test_client()
    client.get("/set?a=1")
    backend.store.reset()

    plain = reply(client.get("/plain"))
    assert plain.text == "<p>hi</p>"
    assert backend.store.methods() == []
    assert plain.header("Vary") is None
    assert plain.cookies() == []

    reads = reply(client.get("/reads"))
    assert reads.text == "<p>1</p>"
    assert backend.store.methods() == ["load"]
    assert reads.header("Vary") == "Cookie"

    backend.store.reset()
    assert reply(client.get("/flashes")).text == "<p>[]</p>"
    assert backend.store.methods() == ["load"]


# ============================================================== flashing


def test_flash_and_get_flashed_messages_in_one_request(
    make_app: AppFactory, backend: Backend
) -> None:
    # Flask's test_flashes, in a request context of its own (no middleware).
    app = make_app()
    with app.test_request_context():
        assert not session.modified
        flash("Zap")
        session.modified = False
        flash("Zip")
        assert session.modified
        assert list(get_flashed_messages()) == ["Zap", "Zip"]
    assert backend.store.methods() == []  # nothing saved a session that was never committed


def _kinds(messages: Any) -> list[Any]:
    return [tuple(map(type, m)) if isinstance(m, tuple) else type(m) for m in messages]


def test_extended_flashing(make_app: AppFactory, backend: Backend) -> None:
    # Flask's test_extended_flashing: Markup, categories and filters, each
    # read in the request after the one that flashed.
    app = make_app()

    @app.route("/flash")
    def flash_them() -> str:
        flash("Hello World")
        flash("Hello World", "error")
        flash(Markup("<em>Testing</em>"), "warning")
        return ""

    results: dict[str, Any] = {}

    @app.route("/read/<name>")
    def read(name: str) -> str:
        if name == "plain":
            results[name] = get_flashed_messages()
        elif name == "with_categories":
            results[name] = get_flashed_messages(with_categories=True)
        elif name == "filter":
            results[name] = get_flashed_messages(category_filter=["message"], with_categories=True)
        elif name == "filters":
            results[name] = get_flashed_messages(
                category_filter=["message", "warning"], with_categories=True
            )
        elif name == "filters_without_categories":
            results[name] = get_flashed_messages(category_filter=["message", "warning"])
        return ""

    em = Markup("<em>Testing</em>")
    expected = {
        "plain": ["Hello World", "Hello World", em],
        "with_categories": [("message", "Hello World"), ("error", "Hello World"), ("warning", em)],
        "filter": [("message", "Hello World")],
        "filters": [("message", "Hello World"), ("warning", em)],
        "filters_without_categories": ["Hello World", em],
    }
    for name, messages in expected.items():
        client = app.test_client()  # a new client each time: flashes are read once
        client.get("/flash")
        client.get(f"/read/{name}")
        assert list(results[name]) == messages, name
        assert _kinds(results[name]) == _kinds(messages), name  # Markup stays Markup
        # Read once: the session is empty again, so its record is gone.
        client.get(f"/read/{name}")
        assert list(results[name]) == []
        assert backend.records() == {}


# ========================================================== special types


@pytest.mark.usefixtures("backend")
def test_session_special_types_round_trip(make_app: AppFactory) -> None:
    # Flask's test_session_special_types, but read back in the next request,
    # so the values really went through the store.
    app = make_app()
    aware = datetime.datetime(2024, 5, 17, 13, 2, 3, 456789, tzinfo=datetime.timezone.utc)
    offset = datetime.datetime(
        2024, 5, 17, 15, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    naive = datetime.datetime(2011, 8, 10, 15, 46, 0)
    the_uuid = uuid.uuid4()
    values: dict[str, Any] = {
        "t": (1, 2, 3),
        "b": b"\xff",
        "m": Markup("<html>"),
        "u": the_uuid,
        "aware": aware,
        "offset": offset,
        "naive": naive,
        "date": datetime.date(2020, 2, 29),
        "t_tag": {" t": "not-a-tuple"},
        "di_t_tag": {" t__": "not-a-tuple"},
        "di_tag": {" di": "not-a-dict"},
        "nested": {"n": 1, "f": 1.5, "none": None, "list": [(1, 2), b"x"], "in": {"when": aware}},
    }

    @app.route("/store-types")
    def store_types() -> str:
        for key, value in values.items():
            session[key] = value
        return ""

    client = app.test_client()
    client.get("/store-types")
    with client:
        client.get("/dump")
        loaded = dict(flask.session)
    assert loaded == values
    assert type(loaded["t"]) is tuple
    assert type(loaded["b"]) is bytes
    assert type(loaded["m"]) is Markup
    assert type(loaded["u"]) is uuid.UUID
    assert loaded["aware"].tzinfo is not None
    assert loaded["aware"].utcoffset() == datetime.timedelta(0)
    assert loaded["offset"].utcoffset() == datetime.timedelta(hours=2)
    assert loaded["naive"].tzinfo is None
    assert type(loaded["date"]) is datetime.date
    assert type(loaded["nested"]["list"][0]) is tuple
    assert type(loaded["nested"]["in"]["when"]) is datetime.datetime
    assert str(loaded["naive"]) == "2011-08-10 15:46:00"


# ================================================== new / modified / accessed


@pytest.mark.parametrize("mode", MODES)
def test_new_modified_accessed(make_app: AppFactory, backend: Backend, mode: str) -> None:
    app = make_app(mode=mode)
    seen: list[dict[str, bool]] = []

    @app.route("/probe")
    def probe() -> str:
        state = {"accessed_at_start": session.accessed}
        state["new"] = session.new
        state["accessed_after_read"] = session.accessed
        state["modified_after_read"] = session.modified
        session["x"] = flask.request.args.get("x", "1")
        state["modified_after_set"] = session.modified
        seen.append(state)
        return ""

    client = app.test_client()
    client.get("/probe")
    client.get("/probe")  # same value: not modified
    client.get("/probe?x=2")
    assert seen == [
        {
            "accessed_at_start": False,
            "new": True,
            "accessed_after_read": True,
            "modified_after_read": False,
            "modified_after_set": True,
        },
        {
            "accessed_at_start": False,
            "new": False,
            "accessed_after_read": True,
            "modified_after_read": False,
            "modified_after_set": False,
        },
        {
            "accessed_at_start": False,
            "new": False,
            "accessed_after_read": True,
            "modified_after_read": False,
            "modified_after_set": True,
        },
    ]
    assert backend.store.methods() == ["insert", "load", "load", "update"]


def test_session_works_like_a_dict(make_app: AppFactory, backend: Backend) -> None:
    # "works pretty much like an ordinary dict" (Flask's docs): what apps call.
    app = make_app()

    @app.route("/dict-ops")
    def dict_ops() -> str:
        session.update({"a": 1, "b": 2}, c=3)
        assert session.setdefault("d", [4]) == [4]
        assert session.pop("b") == 2
        assert session.pop("missing", "default") == "default"
        del session["c"]
        copied = session.copy()
        assert type(copied) is dict
        copied["not"] = "saved"
        assert "not" not in session
        assert sorted(session.keys()) == ["a", "d"]
        assert sorted(map(repr, session.values())) == ["1", "[4]"]
        assert dict(session.items()) == {"a": 1, "d": [4]}
        assert session == {"a": 1, "d": [4]}
        return repr(len(session))

    client = app.test_client()
    assert client.get("/dict-ops").text == "2"
    assert client.get("/dump").text == "[('a', 1), ('d', [4])]"
    assert len(backend.records()) == 1


@pytest.mark.usefixtures("backend")
def test_session_object_is_a_kvsession(make_app: AppFactory) -> None:
    app = make_app()

    @app.route("/kind")
    def kind() -> str:
        current = session._get_current_object()  # type: ignore[attr-defined]
        assert isinstance(current, KVSession)
        return f"{current.id is None} {current.sid_s is None}"

    client = app.test_client()
    assert client.get("/kind").text == "True True"  # new and empty: no ID yet
    client.get("/set?a=1")
    assert client.get("/kind").text == "False False"


@pytest.mark.usefixtures("backend")
def test_session_stored_last(make_app: AppFactory) -> None:
    # Flask's test_session_stored_last: a change in after_request is saved.
    app = make_app()

    @app.after_request
    def modify_session(response: Response) -> Response:
        session["foo"] = 42
        return response

    client = app.test_client()
    assert client.get("/get?k=foo").text == "None"
    assert client.get("/get?k=foo").text == "42"


# ======================================================= testing helpers


@pytest.mark.parametrize("mode", MODES)
def test_session_transaction_before_any_request(
    make_app: AppFactory, backend: Backend, mode: str
) -> None:
    # Flask's test_session_transactions.
    client = make_app(mode=mode).test_client()
    with client:
        with client.session_transaction() as sess:
            assert len(sess) == 0
            assert sess.new
            sess["foo"] = [42]
            assert len(sess) == 1
        assert backend.store.methods() == ["insert"]
        assert client.get("/get?k=foo").text == "[42]"
        with client.session_transaction() as sess:
            assert len(sess) == 1
            assert sess["foo"] == [42]
            assert isinstance(sess, KVSession)


@pytest.mark.parametrize("mode", MODES)
def test_session_transaction_reads_and_writes_the_apps_session(
    make_app: AppFactory, backend: Backend, mode: str
) -> None:
    client = make_app(mode=mode).test_client()
    client.get("/set?a=1")
    cookie = client.get_cookie("session")
    assert cookie is not None
    backend.store.reset()

    with client.session_transaction() as sess:
        assert sess["a"] == "1"
        assert not sess.new
    assert backend.store.methods() == ["load"]  # read only: nothing written

    with client.session_transaction() as sess:
        sess["b"] = "2"
    assert backend.store.methods()[-1] == "update"
    after = client.get_cookie("session")
    assert after is not None
    assert after.value == cookie.value
    assert len(backend.records()) == 1
    assert client.get("/dump").text == "[('a', '1'), ('b', '2')]"

    with client.session_transaction() as sess:
        sess.clear()
    assert backend.records() == {}
    assert client.get_cookie("session") is None
    assert client.get("/dump").text == "[]"


@pytest.mark.usefixtures("backend")
def test_session_transaction_keeps_the_context(make_app: AppFactory) -> None:
    # Flask's test_session_transactions_keep_context.
    client = make_app().test_client()
    with client:
        client.get("/nothing")
        req = flask.request._get_current_object()  # type: ignore[attr-defined]
        assert req is not None
        with client.session_transaction():
            assert req is flask.request._get_current_object()  # type: ignore[attr-defined]


@pytest.mark.usefixtures("backend")
def test_session_transaction_needs_cookies(make_app: AppFactory) -> None:
    client = make_app().test_client(use_cookies=False)
    with pytest.raises(TypeError, match="Cookies are disabled"):
        with client.session_transaction():
            pass


@pytest.mark.parametrize("mode", MODES)
def test_test_request_context_loads_the_session_by_cookie(
    make_app: AppFactory, backend: Backend, mode: str
) -> None:
    app = make_app(mode=mode)
    client = app.test_client()
    client.get("/set?a=1")
    cookie = client.get_cookie("session")
    assert cookie is not None
    backend.store.reset()

    with app.test_request_context("/", headers={"Cookie": f"session={cookie.value}"}):
        assert session["a"] == "1"
        assert not session.new
        assert isinstance(session._get_current_object(), KVSession)  # type: ignore[attr-defined]
    assert backend.store.methods() == ["load"]

    with app.test_request_context("/"):
        assert session.new
        assert dict(session) == {}
    with app.test_request_context("/", headers={"Cookie": "session=" + "A" * 43}):
        assert dict(session) == {}  # unknown ID: an empty session


@pytest.mark.usefixtures("backend")
def test_streamed_response_commits_before_the_body(make_app: AppFactory) -> None:
    app = make_app()

    @app.route("/stream")
    def stream() -> Response:
        session["streamed"] = "yes"

        def body() -> Any:
            yield "a"
            yield "b"

        return Response(body())

    client = app.test_client()
    streamed = reply(client.get("/stream"))
    assert streamed.text == "ab"
    assert len(streamed.cookies()) == 1
    assert client.get("/get?k=streamed").text == "'yes'"


def test_cookie_values_never_contain_the_store_key(make_app: AppFactory, backend: Backend) -> None:
    client = make_app().test_client()
    value = reply(client.get("/set?a=1")).cookie().value
    (key,) = backend.records()
    session_id = value.partition(".")[0]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id)
    assert session_id not in key
    assert key.startswith(backend.key_prefix)
