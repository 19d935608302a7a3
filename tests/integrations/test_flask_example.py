"""The Flask example (examples/flask_app.py) driven end to end.

The flows a real app needs: a refused login, a login that regenerates the
session (the pre-login record is gone), a cart kept in the session, an admin
page behind a role check, and a logout that deletes the record and expires the
cookie. Each runs on a MemoryStore and on the shared Redis (random key prefix,
never flushed; skipped locally without Redis, failed under CI=true), through
WebTest and through Flask's test client.
"""

from __future__ import annotations

import importlib.util
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import webtest
from flask import Flask
from flask.testing import FlaskClient

from wsgi_kvsession import envelope
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import MemoryStore, Store
from wsgi_kvsession.stores.base import Record

from ..stores.backend_redis import REDIS_URL, redis_store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app.py"
ADMIN = ("alice", "alice-demo-password")
CUSTOMER = ("bob", "bob-demo-password")


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """examples/flask_app.py, imported from its path (examples/ is no package)."""
    name = "wsgi_kvsession_flask_example"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else redis_store(REDIS_URL)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def key_prefix() -> str:
    # The Redis is shared: this test's records live under a prefix of their own.
    return f"test-flask-example-{secrets.token_hex(6)}:"


@pytest.fixture
def app(example: ModuleType, store: Store, key_prefix: str) -> Iterator[Flask]:
    flask_app: Flask = example.create_app(store, {"TESTING": True}, key_prefix=key_prefix)
    try:
        yield flask_app
    finally:
        for key, _record in list(store.iter_records(key_prefix)):
            store.delete(key)


@pytest.fixture
def web(app: Flask) -> webtest.TestApp:
    return webtest.TestApp(app.wsgi_app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# -- helpers -----------------------------------------------------------------------


def record_of(app: Flask, store: Store, cookie_value: str) -> Record | None:
    """The stored record a session cookie points at (None: no live record)."""
    options = app.session_interface.options(app)  # type: ignore[attr-defined]
    session_id = options.ids.decode(cookie_value)
    assert session_id is not None, "the cookie is not one this app issued"
    return store.load(store_key(options.key_prefix, session_id))


def user_id_of(record: Record | None) -> str | int | None:
    assert record is not None
    return envelope.unpack(record.value).user_id


def set_cookie_headers(response: Any) -> list[str]:
    return [h for h in response.headers.getall("Set-Cookie") if h.startswith("session=")]


def web_login(
    web: webtest.TestApp, user: tuple[str, str], *, remember: bool = False, path: str = "/login"
) -> webtest.TestResponse:
    """Fill in and send the login form; returns the (unfollowed) response."""
    form = web.get(path).forms[0]
    form["username"], form["password"] = user
    if remember:
        form["remember"] = True
    return form.submit(expect_errors=True)


def cart_lines(page: webtest.TestResponse) -> list[str]:
    return re.findall(r"<li>(\d+ &times; \w+)", page.text)


def form_with_action(page: webtest.TestResponse, action: str, product: str = "") -> webtest.Form:
    for form in page.forms.values():
        if form.action == action and (not product or form.get("product").value == product):
            return form
    raise AssertionError(f"no form for {action} {product} on the page")


def is_anonymous(page: webtest.TestResponse) -> bool:
    signed_in = "signed in as" in page.text
    assert signed_in != ('href="/login"' in page.text)  # the nav shows one or the other
    return not signed_in


# -- through WebTest ---------------------------------------------------------------


def test_a_wrong_password_is_refused(app: Flask, store: Store, web: webtest.TestApp) -> None:
    response = web_login(web, (CUSTOMER[0], "not-bobs-password"))
    assert response.status_int == 401
    assert '<p class="flash error">Wrong user name or password.</p>' in response.text
    assert set_cookie_headers(response) == []  # no login, so no new session ID
    assert user_id_of(record_of(app, store, web.cookies["session"])) is None
    assert is_anonymous(web.get("/"))

    # An unknown user name gets the same answer.
    response = web_login(web, ("mallory", CUSTOMER[1]))
    assert response.status_int == 401
    assert "Wrong user name or password." in response.text
    assert web.get("/admin").status_int == 302


def test_login_regenerates_the_session_and_keeps_its_data(
    app: Flask, store: Store, web: webtest.TestApp
) -> None:
    shop = web.get("/")
    form_with_action(shop, "/cart/add", "bread").submit().follow()
    before = web.cookies["session"]
    assert record_of(app, store, before) is not None  # the anonymous session is stored

    response = web_login(web, CUSTOMER)
    assert response.status_int == 303
    assert response.location.endswith("/")
    after = web.cookies["session"]
    assert after != before, "login must give the session a new ID"
    assert record_of(app, store, before) is None, "the pre-login record must be gone"
    assert user_id_of(record_of(app, store, after)) == 2

    page = response.follow()
    assert '<p class="flash success">Welcome, bob!</p>' in page.text
    assert not is_anonymous(page)
    assert cart_lines(page) == ["1 &times; Bread"]  # the data moved to the new ID


def test_the_pre_login_cookie_is_useless_after_login(
    app: Flask, store: Store, web: webtest.TestApp
) -> None:
    web.get("/login")
    planted = web.cookies["session"]  # e.g. set in the victim's browser by an attacker
    web_login(web, CUSTOMER)

    attacker = webtest.TestApp(app.wsgi_app)
    attacker.set_cookie("session", planted)
    assert is_anonymous(attacker.get("/"))
    assert attacker.get("/admin").status_int == 302


def test_remember_me_makes_the_session_permanent(web: webtest.TestApp) -> None:
    (header,) = set_cookie_headers(web_login(web, CUSTOMER, remember=True))
    assert "Max-Age=604800" in header  # PERMANENT_SESSION_LIFETIME: 7 days
    web.reset()
    (header,) = set_cookie_headers(web_login(web, CUSTOMER))
    assert "Max-Age" not in header
    assert "Expires" not in header  # a browser-session cookie


def test_the_cart_persists_across_requests(app: Flask, store: Store, web: webtest.TestApp) -> None:
    web_login(web, CUSTOMER)
    for product in ("apple", "apple", "cheese"):
        added = form_with_action(web.get("/"), "/cart/add", product).submit()
        assert added.status_int == 303
        assert "Added" in added.follow().text
    page = web.get("/")
    assert cart_lines(page) == ["2 &times; Apple", "1 &times; Cheese"]

    removed = form_with_action(page, "/cart/remove", "apple").submit().follow()
    assert '<p class="flash success">Removed one Apple from your cart.</p>' in removed.text
    assert cart_lines(web.get("/")) == ["1 &times; Apple", "1 &times; Cheese"]

    # It is in the store, not in the cookie: a second browser with the same cookie
    # sees the same cart.
    other = webtest.TestApp(app.wsgi_app)
    other.set_cookie("session", web.cookies["session"])
    assert cart_lines(other.get("/")) == ["1 &times; Apple", "1 &times; Cheese"]


def test_unknown_products_are_refused(web: webtest.TestApp) -> None:
    form = form_with_action(web.get("/"), "/cart/add", "apple")
    form["product"].force_value("caviar")
    page = form.submit().follow()
    assert '<p class="flash error">There is no such product.</p>' in page.text
    assert cart_lines(page) == []


def test_the_admin_page(web: webtest.TestApp) -> None:
    anonymous = web.get("/admin")
    assert anonymous.status_int == 302
    assert anonymous.location.endswith("/login?next=%2Fadmin")
    assert "Please log in to access this page." in anonymous.follow().text

    web_login(web, CUSTOMER)
    assert web.get("/admin", expect_errors=True).status_int == 403

    web.reset()
    response = web_login(web, ADMIN, path="/login?next=%2Fadmin")
    assert response.location.endswith("/admin")
    page = response.follow()
    assert page.status_int == 200
    assert "Only admins see this page." in page.text
    assert "session tied to user id: 1" in page.text


def test_login_never_redirects_off_site(web: webtest.TestApp) -> None:
    response = web_login(web, CUSTOMER, path="/login?next=//evil.example/")
    assert response.status_int == 303
    assert response.location in ("/", "http://localhost/")


def test_logout_deletes_the_session_and_expires_the_cookie(
    app: Flask, store: Store, web: webtest.TestApp
) -> None:
    web_login(web, CUSTOMER)
    page = form_with_action(web.get("/"), "/cart/add", "apple").submit().follow()
    old = web.cookies["session"]
    assert record_of(app, store, old) is not None

    response = form_with_action(page, "/logout").submit()
    assert response.status_int == 303
    (header,) = set_cookie_headers(response)
    assert header.startswith("session=;")
    assert "Max-Age=0" in header
    assert response.headers["Cache-Control"] == "no-store"
    assert record_of(app, store, old) is None
    assert "session" not in web.cookies
    assert "You have been logged out." in response.follow().text

    # Replaying the old cookie gets an anonymous, empty session under a new ID.
    replay = webtest.TestApp(app.wsgi_app)
    replay.set_cookie("session", old)
    page = replay.get("/")
    assert is_anonymous(page)
    assert cart_lines(page) == []
    assert replay.get("/admin").status_int == 302
    assert replay.cookies["session"] != old
    assert record_of(app, store, old) is None


def test_state_changes_need_post_and_the_csrf_token(
    app: Flask, store: Store, web: webtest.TestApp
) -> None:
    web_login(web, CUSTOMER)
    cookie = web.cookies["session"]
    for path in ("/logout", "/cart/add", "/cart/remove"):
        assert web.get(path, expect_errors=True).status_int == 405
    assert web.post("/logout", expect_errors=True).status_int == 400
    assert web.post("/cart/add", {"product": "apple"}, expect_errors=True).status_int == 400
    forged = {"product": "apple", "csrf_token": "x" * 43}
    assert web.post("/cart/add", forged, expect_errors=True).status_int == 400
    assert web.post("/login", {"csrf_token": "é"}, expect_errors=True).status_int == 400
    # Nothing happened: still logged in, same session, empty cart.
    assert web.cookies["session"] == cookie
    assert user_id_of(record_of(app, store, cookie)) == 2
    assert cart_lines(web.get("/")) == []


# -- through Flask's test client ------------------------------------------------------


def csrf_token(client: FlaskClient) -> str:
    """The session's CSRF token, read with session_transaction()."""
    client.get("/login")
    with client.session_transaction() as sess:
        token = sess["csrf_token"]
    assert isinstance(token, str)
    return token


def client_login(client: FlaskClient, user: tuple[str, str]) -> Any:
    name, password = user
    data = {"csrf_token": csrf_token(client), "username": name, "password": password}
    return client.post("/login", data=data)


def session_cookie(client: FlaskClient) -> str | None:
    cookie = client.get_cookie("session")
    return cookie.value if cookie is not None else None


def test_client_login(app: Flask, store: Store, client: FlaskClient) -> None:
    refused = client_login(client, (CUSTOMER[0], "wrong"))
    assert refused.status_code == 401
    before = session_cookie(client)
    assert before is not None

    response = client_login(client, CUSTOMER)
    assert response.status_code == 303
    after = session_cookie(client)
    assert after is not None
    assert after != before
    assert record_of(app, store, before) is None
    with client.session_transaction() as sess:
        assert sess["_user_id"] == "2"  # Flask-Login's key
        assert sess.user_id == 2  # type: ignore[attr-defined]
        assert not sess.permanent


def test_client_cart_and_session_transaction(app: Flask, client: FlaskClient) -> None:
    client_login(client, CUSTOMER)
    token = csrf_token(client)
    for product in ("bread", "apple", "bread"):
        response = client.post("/cart/add", data={"csrf_token": token, "product": product})
        assert response.status_code == 303
    with client.session_transaction() as sess:
        assert sess["cart"] == ["bread", "apple", "bread"]

    # A change made in session_transaction() is stored and seen by the app.
    with client.session_transaction() as sess:
        sess["cart"].append("cheese")
    page = client.get("/").get_data(as_text=True)
    assert re.findall(r"<li>(\d+ &times; \w+)", page) == [
        "2 &times; Bread",
        "1 &times; Apple",
        "1 &times; Cheese",
    ]


def test_client_admin_and_logout(app: Flask, store: Store, client: FlaskClient) -> None:
    anonymous = client.get("/admin")
    assert anonymous.status_code == 302
    assert anonymous.location.startswith("/login?next=")

    client_login(client, CUSTOMER)
    assert client.get("/admin").status_code == 403
    client.post("/logout", data={"csrf_token": csrf_token(client)})

    client_login(client, ADMIN)
    assert client.get("/admin").status_code == 200
    old = session_cookie(client)
    assert old is not None

    response = client.post("/logout", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303
    assert session_cookie(client) is None  # the test client dropped the expired cookie
    assert record_of(app, store, old) is None

    client.set_cookie("session", old)
    assert client.get("/admin").status_code == 302
    with client.session_transaction() as sess:
        assert sess.get("_user_id") is None
        assert sess.user_id is None  # type: ignore[attr-defined]
