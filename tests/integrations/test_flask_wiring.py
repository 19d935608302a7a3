"""The Flask integration where it meets the rest of a deployment: other WSGI
middleware, other apps, Flask's error handling, Flask-Login and the server's
file wrapper. (Found in review; each test failed before its fix.)"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import (
    Flask,
    Response,
    got_request_exception,
    request,
    send_file,
    session,
    stream_with_context,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wsgi import FileWrapper

from wsgi_kvsession import KVSessionMiddleware, envelope, get_session
from wsgi_kvsession.integrations.flask import KVSessionInterface, init_app
from wsgi_kvsession.options import Options
from wsgi_kvsession.stores import MemoryStore
from wsgi_kvsession.stores.base import StoreError

from .flask_support import add_routes

SECRET = "wiring-secret-0123456789abcdef"


def _set_cookies(response: Any, name: str = "session") -> list[str]:
    return [v for v in response.headers.getlist("Set-Cookie") if v.startswith(name + "=")]


def _app(name: str = __name__, config: dict[str, Any] | None = None) -> Flask:
    app = Flask(name)
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    app.config.update(config or {})
    add_routes(app)
    return app


def _user_ids(store: MemoryStore) -> list[Any]:
    return [envelope.unpack(record.value).user_id for _, record in store.iter_records("")]


# -- saving happens where Flask saves its own sessions ----------------------


class _FailingInsertStore(MemoryStore):
    def insert(self, key: str, value: bytes, expires_at: float) -> bool:
        raise StoreError("MemoryStore(): connection lost (simulated)")


@pytest.mark.parametrize("mode", ["init_app", "interface_only"])
@pytest.mark.parametrize(
    ("path", "store_class"),
    [("/unstorable", MemoryStore), ("/set?a=1", _FailingInsertStore)],
    ids=["unstorable-value", "store-down"],
)
def test_a_failed_save_goes_through_flasks_error_handling(
    mode: str, path: str, store_class: type[MemoryStore]
) -> None:
    app = _app(config={"TESTING": False})
    reported: list[BaseException] = []

    @got_request_exception.connect_via(app)
    def report(sender: Flask, exception: BaseException, **extra: object) -> None:
        reported.append(exception)

    @app.errorhandler(500)
    def server_error(error: Exception) -> tuple[str, int]:
        return "our own 500 page", 500

    @app.get("/unstorable")
    def unstorable() -> str:
        session["obj"] = object()
        return "ok"

    store = store_class()
    if mode == "init_app":
        init_app(app, store)
    else:
        app.session_interface = KVSessionInterface(store)
    response = app.test_client().get(path)
    assert (response.status_code, response.text) == (500, "our own 500 page")
    assert len(reported) == 1
    assert _set_cookies(response) == []
    assert list(store.iter_records("")) == []


def test_a_change_in_a_streamed_body_is_not_saved_as_with_flasks_own_sessions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    app = _app()

    @app.get("/stream")
    def stream() -> Response:
        session["before"] = "1"

        def body() -> Iterator[str]:
            yield "x"
            session.pop("not-there", None)  # removes nothing: not a change
            session["late"] = "1"

        return Response(stream_with_context(body()))

    init_app(app, store)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        assert client.get("/stream").text == "x"
    assert client.get("/get?k=before").text == "'1'"
    assert client.get("/get?k=late").text == "None"
    late = [r for r in caplog.records if "after the response headers" in r.getMessage()]
    assert len(late) == 1  # the real late change, once; not the pop of nothing


def test_file_wrapper_reaches_the_server_untouched() -> None:
    app = _app()

    @app.get("/file")
    def file() -> Response:
        return send_file(io.BytesIO(b"data"), mimetype="text/plain")

    init_app(app, MemoryStore())
    environ = EnvironBuilder("/file").get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    result = app(environ, lambda status, headers, exc_info=None: None)
    try:
        assert type(result) is FileWrapper  # so a server can use sendfile()
    finally:
        getattr(result, "close", lambda: None)()


# -- a middleware around the app, other middleware, other apps ----------------


class _AuditMiddleware:
    """Reads the session before Flask does."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[Any] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.seen.append(get_session(environ).get("who"))
        return self.app(environ, start_response)


def test_wsgi_middleware_inside_init_app_reads_with_the_apps_options() -> None:
    app = _app()
    audit = _AuditMiddleware(app.wsgi_app)
    app.wsgi_app = audit  # type: ignore[method-assign]
    init_app(app, MemoryStore())  # the session middleware goes around the audit
    client = app.test_client()
    client.get("/set?who=alice")
    assert client.get("/get?k=who").text == "'alice'"
    assert audit.seen == [None, "alice"]  # read with the signing key of app.config


def _plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = get_session(environ)
    if environ["PATH_INFO"] == "/set":
        session["who"] = "plain"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [repr(session.get("who")).encode()]


def test_middleware_around_a_site_governs_the_flask_part_too() -> None:
    store = MemoryStore()
    flask_app = _app()
    flask_app.session_interface = KVSessionInterface()
    site = KVSessionMiddleware(
        DispatcherMiddleware(_plain, {"/flask": flask_app}),
        store,
        key_prefix="site:",
        secret_key="site-secret-0123456789abcdef",
    )
    client = Client(site)
    made = client.get("/flask/set?who=flask", base_url="https://localhost/")
    (cookie,) = _set_cookies(made)
    assert "Secure" in cookie  # the middleware's options, not Flask's defaults
    assert "SameSite=Lax" in cookie
    assert client.get("/get", base_url="https://localhost/").text == "'flask'"
    client.get("/set", base_url="https://localhost/")
    assert client.get("/flask/get?k=who", base_url="https://localhost/").text == "'plain'"
    assert [key.startswith("site:") for key, _ in store.iter_records("")] == [True]


def test_a_store_given_to_the_interface_must_be_the_outer_middlewares() -> None:
    flask_app = _app()
    flask_app.session_interface = KVSessionInterface(MemoryStore())
    site = KVSessionMiddleware(DispatcherMiddleware(_plain, {"/flask": flask_app}), MemoryStore())
    with pytest.raises(RuntimeError, match="give both the same store"):
        Client(site).get("/flask/set?who=x", base_url="https://localhost/")


def test_init_app_does_not_take_over_another_apps_middleware() -> None:
    store_a, store_b = MemoryStore(), MemoryStore()
    app_a, app_b = _app("a"), _app("b")
    init_app(app_a, store_a)
    app_b.wsgi_app = DispatcherMiddleware(app_a, {"/b": app_b.wsgi_app})  # type: ignore[method-assign]
    init_app(app_b, store_b)
    app_a.test_client().get("/set?a=1")
    assert len(list(store_a.iter_records(""))) == 1
    assert list(store_b.iter_records("")) == []


def test_options_are_built_once_per_configuration_for_several_apps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[int] = []
    original = Options.from_kwargs.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Options], **options: Any) -> Options:
        built.append(1)
        return original(cls, **options)  # type: ignore[no-any-return]

    monkeypatch.setattr(Options, "from_kwargs", classmethod(counting))
    interface = KVSessionInterface(MemoryStore())
    built.clear()  # the constructor's own check
    one, two = _app("one"), _app("two", {"SECRET_KEY": "other-secret-0123456789abcdef"})
    one.session_interface = two.session_interface = interface
    for _ in range(10):
        one.test_client().get("/set?a=1")
        two.test_client().get("/set?a=1")
    assert len(built) == 2


# -- Flask-compatible details -------------------------------------------------


def test_get_cookie_partitioned_override_is_honoured() -> None:
    class PartitionedInterface(KVSessionInterface):
        def get_cookie_partitioned(self, app: Flask) -> bool:
            return True

    app = _app(config={"SESSION_COOKIE_SECURE": True})
    app.wsgi_app = KVSessionMiddleware(app.wsgi_app, MemoryStore())  # type: ignore[method-assign]
    app.session_interface = PartitionedInterface()
    (cookie,) = _set_cookies(app.test_client().get("/set?a=1", base_url="https://localhost/"))
    assert "Partitioned" in cookie


def test_pop_takes_default_as_a_keyword() -> None:
    app = _app()

    @app.get("/pop")
    def pop() -> str:
        return repr(session.pop("missing", default="fallback"))

    init_app(app, MemoryStore())
    assert app.test_client().get("/pop").text == "'fallback'"


def test_session_permanent_is_a_default_the_app_can_override() -> None:
    app = _app(config={"SESSION_PERMANENT": True})

    @app.post("/login")
    def login() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        session["_user_id"] = "1"
        session.permanent = request.form.get("remember") == "1"
        return "in"

    init_app(app, MemoryStore())
    client = app.test_client()
    (cookie,) = _set_cookies(client.get("/set?csrf=t"))
    assert "Max-Age" in cookie  # new sessions start permanent
    (cookie,) = _set_cookies(client.post("/login", data={}))
    assert "Max-Age" not in cookie  # the app said otherwise
    (cookie,) = _set_cookies(client.post("/login", data={"remember": "1"}))
    assert "Max-Age" in cookie


# -- Flask-Login ----------------------------------------------------------------


class _User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def _login_app(
    store: MemoryStore, *, destroy_first: bool = False, protection: str = "basic"
) -> Flask:
    app = _app()
    manager = LoginManager(app)
    manager.session_protection = protection

    @manager.user_loader
    def load(user_id: str) -> _User:
        return _User(user_id)

    @app.post("/login")
    def login() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        login_user(_User("42"), remember=True)
        return "in"

    @app.post("/logout")
    def logout() -> str:
        if destroy_first:
            session.destroy()  # type: ignore[attr-defined]
            logout_user()
        else:
            logout_user()
            session.destroy()  # type: ignore[attr-defined]
        return "out"

    @app.get("/me")
    def me() -> str:
        return str(current_user.get_id())

    init_app(app, store)
    return app


@pytest.mark.parametrize(
    "destroy_first", [False, True], ids=["logout-then-destroy", "destroy-first"]
)
def test_logout_clears_the_remember_me_cookie_in_either_order(destroy_first: bool) -> None:
    store = MemoryStore()
    client = _login_app(store, destroy_first=destroy_first).test_client()
    client.post("/login")
    assert client.get_cookie("remember_token") is not None
    assert _user_ids(store) == ["42"]  # login_user() tied the session to the user
    client.post("/logout")
    assert client.get_cookie("remember_token") is None
    assert client.get("/me").text == "None"
    assert list(store.iter_records("")) == []


def test_strong_protection_unties_the_session_from_the_user() -> None:
    store = MemoryStore()
    client = _login_app(store, protection="strong").test_client()
    client.post("/login", headers={"User-Agent": "browser-A"})
    client.delete_cookie("remember_token")
    assert client.get("/me", headers={"User-Agent": "thief-B"}).text == "None"
    assert "42" not in _user_ids(store)


def test_a_session_restored_from_the_remember_cookie_is_tied_to_the_user() -> None:
    store = MemoryStore()
    client = _login_app(store).test_client()
    client.post("/login")
    client.delete_cookie("session")  # browser restarted; only remember_token left
    assert client.get("/me").text == "42"
    assert _user_ids(store).count("42") == 2
