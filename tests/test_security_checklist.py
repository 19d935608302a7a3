"""The OWASP/ASVS session checklist (S01 to S39) and the bug classes of other
session libraries (B1 to B14), for the items no other module proves.

docs/security.rst maps every item to its proving test; the rows that point
here are the ones that had none. The recipes the page shows for the
application's share (brute-force blocking, re-authentication, client binding)
are the code below, included into the page from this file, so what the page
shows is what these tests run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request, Response

from wsgi_kvsession import KVSessionMiddleware, Session, StoreError, envelope
from wsgi_kvsession import cookies as cookies_module
from wsgi_kvsession import options as options_module
from wsgi_kvsession.cookies import MAX_ATTRIBUTE_BYTES, MAX_SET_COOKIE_BYTES
from wsgi_kvsession.events import SessionEvent, SessionEventInfo
from wsgi_kvsession.ids import IdCodec, store_key
from wsgi_kvsession.options import Options
from wsgi_kvsession.serializers import MsgpackSerializer, TaggedJSONSerializer
from wsgi_kvsession.session import MAX_INSERT_ATTEMPTS
from wsgi_kvsession.stores import MemoryStore

from .support import Clock, CountingStore, client_for, session_app, set_cookies

SECRET = "security-checklist-secret-0123456789"
PREFIX = "session:"

WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


def _routes(session: Session, request: Request) -> Any:
    """/set?k=v sets keys; /login, /logout; anything else shows the data."""
    if request.path == "/set":
        for key, value in request.args.items():
            session[key] = value
    elif request.path == "/login":
        session.regenerate()
        session.user_id = "alice"
        session["user"] = "alice"
    elif request.path == "/logout":
        session.destroy()
    elif request.path == "/regenerate":
        session.regenerate()
    else:
        return repr(dict(session))
    return None


def _cookie_value(client: Client, name: str = "session") -> str:
    cookie = client.get_cookie(name)
    assert cookie is not None, f"no {name} cookie"
    return cookie.value


def _keys(store: MemoryStore) -> list[str]:
    return [key for key, _ in store.iter_records()]


# ---------------------------------------------------------------- S04 unique IDs


class _PlannedIds:
    """Stands in for :meth:`IdCodec.new_id`: hands out ``planned`` IDs first."""

    def __init__(self, planned: list[str]) -> None:
        self.planned = planned
        self.drawn: list[str] = []

    def __call__(self) -> str:  # set on the class, but not a method: no self of IdCodec
        session_id = self.planned.pop(0) if self.planned else secrets.token_urlsafe(32)
        self.drawn.append(session_id)
        return session_id


@pytest.mark.parametrize("how", ["new", "regenerate"])
def test_s04_an_id_collision_draws_another_id_and_never_shares_the_record(
    counting: CountingStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    taken = "V" * 43
    victim = client_for(_routes, counting)
    monkeypatch.setattr(IdCodec, "new_id", _PlannedIds([taken]))
    victim.get("/set?owner=victim")
    assert _cookie_value(victim) == taken
    victims_record = counting.inner.load(store_key(PREFIX, taken))
    assert victims_record is not None

    other = client_for(_routes, counting)
    if how == "regenerate":
        other.get("/set?owner=other")
    # The next two IDs drawn are the victim's: the store refuses both inserts.
    fresh = "N" * 43
    monkeypatch.setattr(IdCodec, "new_id", _PlannedIds([taken, taken, fresh]))
    counting.reset()
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        other.get("/regenerate" if how == "regenerate" else "/set?owner=other")

    inserts = [key for method, key in counting.calls if method == "insert"]
    assert inserts == [store_key(PREFIX, taken)] * 2 + [store_key(PREFIX, fresh)]
    assert _cookie_value(other) == fresh
    assert caplog.text.count("collision") == 2
    assert taken not in caplog.text
    # The victim's record is untouched, and each client sees only its own data.
    after = counting.inner.load(store_key(PREFIX, taken))
    assert after is not None
    assert (after.value, after.expires_at) == (victims_record.value, victims_record.expires_at)
    assert victim.get("/read").text == "{'owner': 'victim'}"
    assert other.get("/read").text == "{'owner': 'other'}"


def test_s04_a_store_that_keeps_reporting_collisions_is_a_clear_store_error(
    counting: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = "V" * 43
    victim = client_for(_routes, counting)
    monkeypatch.setattr(IdCodec, "new_id", _PlannedIds([taken]))
    victim.get("/set?owner=victim")
    before = counting.inner.load(store_key(PREFIX, taken))

    monkeypatch.setattr(IdCodec, "new_id", _PlannedIds([taken] * (MAX_INSERT_ATTEMPTS + 5)))
    counting.reset()
    with pytest.raises(StoreError, match=f"no free session ID after {MAX_INSERT_ATTEMPTS}"):
        client_for(_routes, counting).get("/set?owner=other")
    assert counting.methods() == ["insert"] * MAX_INSERT_ATTEMPTS
    assert counting.inner.load(store_key(PREFIX, taken)) == before
    assert _keys(counting.inner) == [store_key(PREFIX, taken)]


# ---------------------------------------------------------------- S06 the cookie only


def _echo(session: Session, request: Request) -> str:
    return repr(dict(session))


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize(
    "carrier",
    [
        "query",
        "query-id",
        "form",
        "path-parameter",
        "x-session-header",
        "authorization-header",
        "cookie-other-name",
        "cookie-name-other-case",
        "cookie-inside-another-cookie",
    ],
)
def test_s06_a_live_id_is_accepted_from_the_session_cookie_only(
    counting: CountingStore, signed: bool, carrier: str
) -> None:
    options: dict[str, Any] = {"secret_key": SECRET} if signed else {}
    owner = client_for(_routes, counting, **options)
    owner.get("/set?user=alice")
    value = _cookie_value(owner)
    session_id = value.partition(".")[0]
    live_key = store_key(PREFIX, session_id)

    stranger = Client(owner.application, use_cookies=False)
    counting.reset()
    response: TestResponse
    if carrier == "query":
        response = stranger.get("/read", query_string={"session": value})
    elif carrier == "query-id":
        response = stranger.get("/read", query_string={"session_id": session_id, "sid": value})
    elif carrier == "form":
        response = stranger.post("/read", data={"session": value, "session_id": session_id})
    elif carrier == "path-parameter":
        response = stranger.get(f"/read;session={value}")
    elif carrier == "x-session-header":
        response = stranger.get("/read", headers={"X-Session": value, "X-Session-Id": session_id})
    elif carrier == "authorization-header":
        response = stranger.get("/read", headers={"Authorization": f"Bearer {value}"})
    elif carrier == "cookie-other-name":
        response = stranger.get("/read", headers={"Cookie": f"sessionid={value}; sid={value}"})
    elif carrier == "cookie-name-other-case":
        response = stranger.get("/read", headers={"Cookie": f"Session={value}; SESSION={value}"})
    else:
        response = stranger.get("/read", headers={"Cookie": f"other=session={value}"})

    assert response.text == "{}"
    assert set_cookies(response) == []
    assert live_key not in [key for _, key in counting.calls]
    # The same value in the session cookie is the session: the carrier was the difference.
    stranger_with_cookie = stranger.get("/read", headers={"Cookie": f"session={value}"})
    assert stranger_with_cookie.text == "{'user': 'alice'}"


# ---------------------------------------------------------------- S09 Set-Cookie only


@dataclass
class _Exchange:
    path: str
    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _Recorder:
    """The outermost WSGI layer: keeps every response as it leaves for the server."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.exchanges: list[_Exchange] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        exchange = _Exchange(environ.get("PATH_INFO", ""))
        self.exchanges.append(exchange)

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            exchange.status, exchange.headers = status, list(headers)
            write = start_response(status, headers, exc_info)

            def recording_write(data: bytes) -> None:
                exchange.body += data
                write(data)

            return recording_write

        body = self.app(environ, recording_start_response)
        try:
            for chunk in body:
                exchange.body += chunk
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


def _issued_cookie_values(exchanges: list[_Exchange], name: str = "session") -> set[str]:
    values = set()
    for exchange in exchanges:
        for key, header in exchange.headers:
            if key.lower() == "set-cookie" and header.startswith(name + "="):
                value = header.split(";", 1)[0].split("=", 1)[1]
                if value:
                    values.add(value)
    return values


def _assert_ids_only_in_set_cookie(
    exchanges: list[_Exchange],
    records: list[logging.LogRecord],
    secrets_by_id: dict[str, set[str]],
    cookie_name: str = "session",
) -> None:
    """No session ID, cookie value or store key in any body, any header but
    the session's own Set-Cookie value, or any log record (message, arguments
    and extra fields alike)."""
    assert secrets_by_id, "the flow issued no session"
    log_text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in records)
    assert "session_hash" in log_text, "the flow logged no session event to look at"
    for session_id, forbidden in secrets_by_id.items():
        for secret in forbidden:
            assert secret not in log_text, f"a log record holds a secret of {session_id[:6]}…"
            for exchange in exchanges:
                where = f"{exchange.path} ({exchange.status})"
                assert secret.encode() not in exchange.body, f"the body of {where}"
                for key, value in exchange.headers:
                    if key.lower() == "set-cookie" and value.startswith(cookie_name + "="):
                        value = value.split(";", 1)[1]  # the attributes only
                    assert secret not in value, f"the {key} header of {where}"


def _secrets_of(codec: IdCodec, key_prefix: str, cookie_values: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for value in cookie_values:
        session_id = codec.decode(value)
        assert session_id is not None, "a cookie the app issued does not verify"
        key = store_key(key_prefix, session_id)
        sha256 = key[len(key_prefix) :]
        found.setdefault(session_id, set()).update({session_id, value, key, sha256})
    return found


def test_s09_a_raw_wsgi_flow_shows_the_id_only_in_set_cookie(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(session: Session, request: Request) -> Any:
        if request.path == "/go":  # a redirect after a change: Location is no place for it
            session["went"] = True
            return Response("", status=302, headers={"Location": "/read"})
        if request.path == "/cart":
            session.setdefault("cart", []).append("apple")
        return _routes(session, request)

    recorder = _Recorder(KVSessionMiddleware(session_app(handler), memory_store, secret_key=SECRET))
    client = Client(recorder)
    https = {"base_url": "https://localhost"}
    client.get("/set?visit=1", **https)
    client.get("/read", **https)
    client.get("/login", **https)
    client.get("/cart", **https)
    client.get("/go", **https)
    client.get("/read", **https)
    issued = _issued_cookie_values(recorder.exchanges)
    client.get("/logout", **https)
    # A stale cookie, a guessed well-formed one and garbage are logged too.
    codec = IdCodec(secret_key=SECRET)
    guessed = codec.encode(codec.new_id())
    garbage = "garbage-" + secrets.token_urlsafe(30)
    replay = Client(recorder, use_cookies=False)
    for value in (*sorted(issued), guessed, garbage):
        replay.get("/read", headers={"Cookie": f"session={value}"}, **https)

    found = _secrets_of(codec, PREFIX, issued | {guessed})
    assert len(issued) >= 2  # before and after login
    _assert_ids_only_in_set_cookie(recorder.exchanges, caplog.records, {**found, "": {garbage}})


def _example_app() -> Any:
    """examples/flask_app.py, imported from its path (examples/ is no package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "flask_app.py"
    name = "wsgi_kvsession_security_example"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_s09_the_flask_example_shows_the_id_only_in_set_cookie(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("flask_login")
    webtest = pytest.importorskip("webtest")

    caplog.set_level(logging.DEBUG)
    store = MemoryStore()
    app = _example_app().create_app(store, {"TESTING": True})
    recorder = _Recorder(app.wsgi_app)
    web = webtest.TestApp(recorder)

    def form(page: Any, action: str) -> Any:
        return next(f for f in page.forms.values() if f.action.startswith(action))

    login = form(web.get("/login"), "/login")
    login["username"], login["password"] = "alice", "alice-demo-password"
    shop = login.submit().follow()
    form(shop, "/cart/add").submit().follow()
    assert "Only admins see this page." in web.get("/admin").text  # shows session details
    form(web.get("/"), "/logout").submit().follow()
    issued = _issued_cookie_values(recorder.exchanges)
    for value in sorted(issued):  # replayed after the logout: unknown now
        webtest.TestApp(recorder).get("/", headers={"Cookie": f"session={value}"})

    options = app.session_interface.options(app)  # type: ignore[attr-defined]
    found = _secrets_of(options.ids, options.key_prefix, issued)
    assert len(found) >= 2  # before and after login
    _assert_ids_only_in_set_cookie(recorder.exchanges, caplog.records, found)


# ---------------------------------------------------------------- S16 4096 bytes

#: 16 labels of 63 characters: 1023 bytes, under the 1024 of an attribute.
LONG_DOMAIN = ".".join(["d" * 63] * 16)
LONG_PATH = "/" + "p" * (MAX_ATTRIBUTE_BYTES - 1)
#: Every attribute and the longest value: a signed 768-bit ID, a permanent cookie.
WIDEST = {
    "cookie_domain": LONG_DOMAIN,
    "cookie_path": LONG_PATH,
    "cookie_samesite": "None",
    "cookie_partitioned": True,
    "secret_key": SECRET,
    "id_bits": 768,
    "idle_timeout": 400 * 86400,
    "absolute_timeout": None,
}


def _accepted(**options: Any) -> bool:
    try:
        Options.from_kwargs(**options)
    except ValueError:
        return False
    return True


def _longest_accepted_name(**options: Any) -> int:
    """The longest ``cookie_name`` the other ``options`` leave room for."""
    low, high = 1, MAX_SET_COOKIE_BYTES
    assert _accepted(cookie_name="n" * low, **options)
    assert not _accepted(cookie_name="n" * high, **options)
    while high - low > 1:  # about 12 steps
        middle = (low + high) // 2
        if _accepted(cookie_name="n" * middle, **options):
            low = middle
        else:
            high = middle
    return low


def test_s16_the_largest_set_cookie_the_options_allow_fits_in_4096_bytes(
    memory_store: MemoryStore,
) -> None:
    length = _longest_accepted_name(**WIDEST)
    name = "n" * length
    with pytest.raises(ValueError, match=r"over the 4096 .*shorten cookie_name") as refused:
        Options.from_kwargs(cookie_name=name + "n", **WIDEST)
    assert "cookie_domain (1023 bytes)" in str(refused.value)

    def handler(session: Session, request: Request) -> None:
        if request.path == "/logout":
            session.destroy()
        else:
            session.permanent = True
            session["a"] = 1

    app = KVSessionMiddleware(session_app(handler), memory_store, cookie_name=name, **WIDEST)
    browser = Client(app, use_cookies=False)
    (issued,) = set_cookies(browser.get("/", base_url="https://localhost"), name)
    value = issued.split(";", 1)[0].split("=", 1)[1]
    assert len(value) == 128 + 1 + 27  # the longest ID, ".", the signature
    for attribute in ("Max-Age=", "Expires=", "Domain=", "Path=", "Secure", "Partitioned"):
        assert attribute in issued
    # The real header is the one the check measured (Max-Age may be a digit shorter).
    assert MAX_SET_COOKIE_BYTES - 2 <= len(issued.encode("latin-1")) <= MAX_SET_COOKIE_BYTES
    cookie = {"Cookie": issued.split(";", 1)[0]}
    logout = browser.get("/logout", base_url="https://localhost", headers=cookie)
    (expired,) = set_cookies(logout, name)
    assert "Max-Age=0" in expired
    assert len(expired.encode("latin-1")) <= MAX_SET_COOKIE_BYTES


def test_s16_the_default_cookie_is_far_below_the_limit() -> None:
    options = Options.from_kwargs(secret_key=SECRET)
    assert len(cookies_module.largest_set_cookie(options, 30 * 86400)) < 300


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cookie_path": LONG_PATH + "p"}, "cookie_path: 1025 bytes"),
        # Counted as written: each "é" is percent-encoded into 6 bytes.
        ({"cookie_path": "/" + "é" * 200}, "cookie_path: 1201 bytes"),
        ({"cookie_domain": LONG_DOMAIN + ".x"}, "cookie_domain: 1025 bytes"),
        ({"cookie_domain": "d" * 64 + ".example.com"}, "not a domain name"),
        ({"cookie_domain": "example.com; SameSite=None"}, "not a domain name"),
        ({"cookie_domain": "example.com\r\nX-Injected: 1"}, "not a domain name"),
        ({"cookie_name": "n" * 4000}, "shorten cookie_name (4000 bytes)"),
        (
            {"cookie_name": "n" * 3000, "cookie_domain": LONG_DOMAIN},
            "shorten cookie_name (3000 bytes), cookie_domain (1023 bytes)",
        ),
        ({"idle_timeout": 10**12, "absolute_timeout": None}, "idle_timeout=1000000000000.0"),
        ({"idle_timeout": None, "absolute_timeout": 10**12}, "shorter absolute_timeout"),
        ({"idle_timeout": float("inf"), "absolute_timeout": None}, "finite"),
    ],
)
def test_s16_options_that_would_make_a_cookie_browsers_drop_are_refused(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        KVSessionMiddleware(session_app(_echo), MemoryStore(), **options)


@pytest.mark.parametrize(
    "options",
    [
        {"cookie_path": LONG_PATH},  # exactly 1024 bytes
        {"cookie_domain": LONG_DOMAIN},
        {"cookie_domain": ".Example.COM:8443"},  # Werkzeug drops the dot and the port
        {"cookie_domain": "bücher.example"},  # written as IDNA
        {"cookie_domain": "127.0.0.1"},
        # The longest timeout is not the one that counts: the session ends earlier.
        {"idle_timeout": 10**12, "absolute_timeout": 86400},
        {"idle_timeout": float("inf")},
    ],
)
def test_s16_long_but_valid_options_are_accepted(options: dict[str, Any]) -> None:
    Options.from_kwargs(**options)


def test_s16_the_size_is_checked_at_construction_only(
    memory_store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[int] = []
    real = options_module.largest_set_cookie

    def counting(options: Options, max_age: int) -> str:
        measured.append(max_age)
        return real(options, max_age)

    monkeypatch.setattr(options_module, "largest_set_cookie", counting)
    client = client_for(_routes, memory_store)
    assert len(measured) == 1
    for path in ("/set?permanent=1", "/read", "/logout"):
        client.get(path)
    assert len(measured) == 1


# ---------------------------------------------------------------- S27 re-authentication

# -- recipe: re-authentication --------------------------------------------------------


def mark_authenticated(session: Any) -> None:
    """Call after checking the user's password, at login and at every
    re-authentication: a new session ID (the privilege changed), and the time
    of the check."""
    session.regenerate()
    session["authenticated_at"] = time.time()


def authenticated_within(session: Any, seconds: float) -> bool:
    """Whether the user proved who they are in the last ``seconds``: ask before
    a password or e-mail change, a payment, a look at the active sessions..."""
    at = session.get("authenticated_at")
    return isinstance(at, (int, float)) and 0 <= time.time() - at <= seconds


# -- end of recipe ----------------------------------------------------------------------

REAUTH_WINDOW = 300.0


def _reauth_routes(session: Session, request: Request) -> Any:
    if request.path in ("/login", "/reauth"):  # the password was checked here
        mark_authenticated(session)
        session.user_id = "alice"
        return None
    if request.path == "/change-email":
        if not authenticated_within(session, REAUTH_WINDOW):
            return Response("confirm your password first", status=403)
        session["email"] = request.args["to"]
        return None
    return repr(dict(session))


def test_s27_sensitive_actions_need_a_recent_authentication(
    memory_store: MemoryStore, clock: Clock
) -> None:
    client = client_for(_reauth_routes, memory_store)
    assert client.get("/change-email?to=a@example.com").status_code == 403  # never logged in

    client.get("/login")
    logged_in = _cookie_value(client)
    created = memory_store.load(store_key(PREFIX, logged_in))
    assert created is not None
    assert client.get("/change-email?to=a@example.com").status_code == 200

    clock.advance(REAUTH_WINDOW + 1)
    refused = client.get("/change-email?to=b@example.com")
    assert refused.status_code == 403
    assert "'email': 'a@example.com'" in client.get("/read").text  # still logged in

    client.get("/reauth")
    reauthenticated = _cookie_value(client)
    assert reauthenticated != logged_in  # a new ID, the old one is gone
    assert memory_store.load(store_key(PREFIX, logged_in)) is None
    assert client.get("/change-email?to=b@example.com").status_code == 200
    # Re-authenticating does not extend the absolute timeout.
    record = memory_store.load(store_key(PREFIX, reauthenticated))
    assert record is not None
    assert envelope.unpack(record.value).created == envelope.unpack(created.value).created


def test_s27_a_missing_odd_or_future_login_time_does_not_pass() -> None:
    assert not authenticated_within({}, REAUTH_WINDOW)
    assert not authenticated_within({"authenticated_at": "now"}, REAUTH_WINDOW)
    assert not authenticated_within({"authenticated_at": time.time() + 60}, REAUTH_WINDOW)
    assert authenticated_within({"authenticated_at": time.time() - 10}, REAUTH_WINDOW)


# ---------------------------------------------------------------- S35 Clear-Site-Data

CLEAR_SITE_DATA = '"cache", "cookies", "storage"'


def test_s35_clear_site_data_passes_through_a_logout_that_expires_the_cookie(
    counting: CountingStore,
) -> None:
    def handler(session: Session, request: Request) -> Any:
        if request.path == "/logout":
            session.destroy()
            return Response("bye", headers={"Clear-Site-Data": CLEAR_SITE_DATA})
        return _routes(session, request)

    client = client_for(handler, counting)
    client.get("/login")
    session_id = _cookie_value(client)
    response = client.get("/logout")
    assert response.headers.getlist("Clear-Site-Data") == [CLEAR_SITE_DATA]
    (expired,) = set_cookies(response)
    assert expired.startswith("session=;")
    assert "Max-Age=0" in expired
    assert response.headers.getlist("Cache-Control") == ["no-store"]
    assert counting.inner.load(store_key(PREFIX, session_id)) is None


def test_s35_clear_site_data_passes_through_a_flask_logout() -> None:
    pytest.importorskip("flask")
    from flask import Flask, make_response
    from flask import session as flask_session

    from wsgi_kvsession.integrations.flask import init_app

    store = MemoryStore()
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    init_app(app, store)

    @app.get("/login")
    def login() -> str:
        flask_session["user"] = "alice"
        return "hello"

    @app.post("/logout")
    def logout() -> Any:
        flask_session.destroy()  # type: ignore[attr-defined]
        response = make_response("bye")
        response.headers["Clear-Site-Data"] = CLEAR_SITE_DATA
        return response

    client = app.test_client()
    client.get("/login")
    assert _keys(store)
    response = client.post("/logout")
    assert response.headers.getlist("Clear-Site-Data") == [CLEAR_SITE_DATA]
    (expired,) = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("session=")]
    assert "Max-Age=0" in expired
    assert response.headers.getlist("Cache-Control") == ["no-store"]
    assert _keys(store) == []


# ---------------------------------------------------------------- S36 brute force

# -- recipe: guessing guard ------------------------------------------------------------


class GuessingGuard:
    """Blocks a client address that sent ``limit`` different unknown session
    IDs within ``window`` seconds (OWASP: session ID guessing detection).

    Wire it around the middleware, whose ``on_event`` feeds it::

        guard = GuessingGuard(limit=20, window=600)
        app = guard.wrap(KVSessionMiddleware(app, store, on_event=guard.on_event))

    Only ``unknown`` events count, each distinct ID once: a browser that holds
    a stale cookie sends that one ID again and again, and a ``rejected``
    cookie (malformed, or not signed with your key) could never have named a
    session, so it is no guess. The counts live in this process: several
    workers each count their share.
    """

    def __init__(
        self,
        limit: int = 20,
        window: float = 600.0,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.max_clients, self.clock = limit, window, max_clients, clock
        #: The application behind the guard (see wrap()).
        self.app: WSGIApp | None = None
        #: Per address: the hashes of the unknown IDs it sent, with when.
        self._seen: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def on_event(self, info: SessionEventInfo) -> None:
        if info.event is not SessionEvent.UNKNOWN or info.remote_addr is None:
            return
        now = self.clock()
        with self._lock:
            seen = self._recent(info.remote_addr, now)
            seen[info.session_hash or ""] = now
            self._seen[info.remote_addr] = seen
            self._seen.move_to_end(info.remote_addr)
            while len(self._seen) > self.max_clients:
                self._seen.popitem(last=False)  # forget the longest quiet address
        if len(seen) == self.limit:
            logging.getLogger("myapp.security").warning(
                "blocking %s: %d unknown session IDs", info.remote_addr, len(seen)
            )

    def blocked(self, remote_addr: str | None) -> bool:
        if remote_addr is None:
            return False
        with self._lock:
            return len(self._recent(remote_addr, self.clock())) >= self.limit

    def _recent(self, remote_addr: str, now: float) -> dict[str, float]:
        seen = self._seen.get(remote_addr, {})
        return {h: at for h, at in seen.items() if now - at < self.window}

    def wrap(self, app: WSGIApp) -> GuessingGuard:
        """Put the guard in front of ``app`` (which has the session middleware
        inside). Kept as ``.app``, as Werkzeug's ProxyFix does, so that Flask's
        integration finds the middleware behind it."""
        self.app = app
        return self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if self.app is None:
            raise RuntimeError("GuessingGuard: call wrap(app) first")
        if self.blocked(environ.get("REMOTE_ADDR")):
            headers = [("Content-Type", "text/plain"), ("Retry-After", str(int(self.window)))]
            start_response("429 Too Many Requests", headers)
            return [b"Too many unknown sessions from your address.\n"]
        return self.app(environ, start_response)


# -- end of recipe ----------------------------------------------------------------------


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _guarded_client(store: MemoryStore, guard: GuessingGuard, **options: Any) -> Client:
    options.setdefault("cookie_secure", False)
    middleware = KVSessionMiddleware(session_app(_echo), store, on_event=guard.on_event, **options)
    return Client(guard.wrap(middleware), use_cookies=False)


def _get(client: Client, address: str, cookie: str | None = None) -> TestResponse:
    headers = {"Cookie": f"session={cookie}"} if cookie is not None else {}
    return client.get("/", headers=headers, environ_base={"REMOTE_ADDR": address})


def test_s36_a_client_guessing_ids_is_blocked_and_others_are_not(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = _FakeClock()
    guard = GuessingGuard(limit=5, window=600, clock=clock)
    client = _guarded_client(memory_store, guard)
    owner = client_for(_routes, memory_store)
    owner.get("/set?user=alice")
    live = _cookie_value(owner)
    attacker, stale, noisy, user = "203.0.113.9", "198.51.100.20", "198.51.100.30", "192.0.2.1"

    with caplog.at_level(logging.WARNING, logger="myapp.security"):
        for _ in range(5):
            assert _get(client, attacker, secrets.token_urlsafe(32)).status_code == 200
    assert "blocking 203.0.113.9: 5 unknown session IDs" in caplog.text
    blocked = _get(client, attacker, live)  # even a real cookie: the address is blocked
    assert blocked.status_code == 429
    assert blocked.headers["Retry-After"] == "600"
    assert _get(client, attacker).status_code == 429

    # One stale cookie sent again and again, or garbage, is no guessing.
    stale_id = secrets.token_urlsafe(32)
    for _ in range(20):
        assert _get(client, stale, stale_id).status_code == 200
        assert _get(client, noisy, "not-a-session-id").status_code == 200
    assert _get(client, user, live).text == "{'user': 'alice'}"

    clock.now += 601  # the window passed
    assert _get(client, attacker, live).text == "{'user': 'alice'}"


def test_s36_the_guard_counts_signed_unknown_ids_and_ignores_events_without_an_address(
    memory_store: MemoryStore,
) -> None:
    guard = GuessingGuard(limit=3, clock=_FakeClock())
    client = _guarded_client(memory_store, guard, secret_key=SECRET)
    codec = IdCodec(secret_key=SECRET)
    for _ in range(3):  # validly signed but unknown (a leaked key, or a revoked session)
        _get(client, "203.0.113.9", codec.encode(codec.new_id()))
    assert guard.blocked("203.0.113.9")
    for _ in range(5):  # no address (Django's engine-level events): nothing to count
        guard.on_event(SessionEventInfo(SessionEvent.UNKNOWN, secrets.token_hex(8)))
    assert list(guard._seen) == ["203.0.113.9"]


def test_s36_the_guard_wired_into_flask_as_documented_blocks_a_guessing_client() -> None:
    pytest.importorskip("flask")
    from flask import Flask
    from flask import session as flask_session

    from wsgi_kvsession.integrations.flask import init_app

    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    guard = GuessingGuard(limit=3, clock=_FakeClock())
    init_app(app, MemoryStore(), on_event=guard.on_event)
    app.wsgi_app = guard.wrap(app.wsgi_app)  # type: ignore[method-assign]

    @app.get("/")
    def page() -> str:
        return repr(dict(flask_session))

    client = app.test_client(use_cookies=False)
    codec = app.session_interface.options(app).ids  # type: ignore[attr-defined]

    def get(address: str, cookie: str) -> int:
        headers = {"Cookie": f"session={cookie}"}
        return client.get("/", headers=headers, environ_base={"REMOTE_ADDR": address}).status_code

    assert [get("203.0.113.9", codec.encode(codec.new_id())) for _ in range(4)] == [200] * 3 + [429]
    assert get("192.0.2.1", codec.encode(codec.new_id())) == 200


def test_s36_the_guard_forgets_the_quietest_address_beyond_its_bound() -> None:
    guard = GuessingGuard(limit=2, max_clients=2, clock=_FakeClock())
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3"):
        guard.on_event(SessionEventInfo(SessionEvent.UNKNOWN, secrets.token_hex(8), "", address))
    assert guard.blocked("192.0.2.1")
    assert set(guard._seen) == {"192.0.2.1", "192.0.2.3"}


# ---------------------------------------------------------------- S37 client binding

# -- recipe: client binding -------------------------------------------------------------


def client_fingerprint(environ: MutableMapping[str, Any]) -> str:
    """A short hash of what the browser says it is (the session need not keep
    the whole User-Agent string)."""
    agent = str(environ.get("HTTP_USER_AGENT", ""))
    return hashlib.sha256(agent.encode("utf-8", "replace")).hexdigest()[:16]


def bind_to_client(session: Any, environ: MutableMapping[str, Any]) -> None:
    """Call at login, after ``session.regenerate()``."""
    session["client"] = client_fingerprint(environ)


def same_client(session: Any, environ: MutableMapping[str, Any]) -> bool:
    """False when the session was bound at login to another client: log it and
    ask for the password again before anything sensitive. A browser update
    changes the User-Agent too, so this is a signal, never a login check."""
    bound = session.get("client")
    if bound is None or hmac.compare_digest(bound, client_fingerprint(environ)):
        return True
    logging.getLogger("myapp.security").warning(
        "session of user %s used from another client", session.get("user")
    )
    session.pop("authenticated_at", None)  # see the re-authentication recipe
    return False


# -- end of recipe ----------------------------------------------------------------------


def test_s37_a_session_used_from_another_client_is_detected_not_ended(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[bool] = []

    def handler(session: Session, request: Request) -> Any:
        if request.path == "/login":
            mark_authenticated(session)
            session["user"] = "alice"
            bind_to_client(session, request.environ)
            return None
        changes.append(not same_client(session, request.environ))
        return _reauth_routes(session, request)

    client = client_for(handler, memory_store)
    firefox = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0"}
    client.get("/login", headers=firefox)
    assert client.get("/change-email?to=a@example.com", headers=firefox).status_code == 200
    assert changes == [False]

    with caplog.at_level(logging.WARNING, logger="myapp.security"):
        other = client.get("/read", headers={"User-Agent": "curl/8.5.0"})
    assert changes == [False, True]
    assert "session of user alice used from another client" in caplog.text
    assert "'user': 'alice'" in other.text  # detection only: the session goes on
    # ... but the next sensitive action asks for the password again.
    assert client.get("/change-email?to=b@example.com", headers=firefox).status_code == 403


# ---------------------------------------------------------------- S38 TLS


def test_s38_a_secure_cookie_stays_secure_on_a_plain_http_request(
    memory_store: MemoryStore,
) -> None:
    app = KVSessionMiddleware(session_app(_routes), memory_store)
    response = Client(app).get("/set?a=1", base_url="http://localhost")
    assert response.request.environ["wsgi.url_scheme"] == "http"
    (cookie,) = set_cookies(response)
    assert "; Secure" in cookie


# ---------------------------------------------------------------- bug classes


def test_b4_the_signature_is_compared_in_constant_time(
    counting: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(_routes, counting, secret_key=SECRET)
    client.get("/set?a=1")
    value = _cookie_value(client)
    session_id, _, signature = value.partition(".")
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/read").text == "{'a': '1'}"
    assert compared, "a valid signature was accepted without compare_digest"
    compared.clear()
    forged = "A" * len(signature) if signature[0] != "A" else "B" * len(signature)
    counting.reset()
    browser = Client(client.application, use_cookies=False)
    reply = browser.get("/read", headers={"Cookie": f"session={session_id}.{forged}"})
    assert reply.text == "{}"
    assert compared, "a forged signature was refused without compare_digest"
    assert counting.calls == []  # refused before the store is asked


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_b5_anonymous_traffic_creates_no_record(counting: CountingStore, signed: bool) -> None:
    """Bots reading pages, clients with unknown or garbage cookies, and logouts
    of clients that have no session cost no record (CVE-2015-5143, -5963)."""

    def handler(session: Session, request: Request) -> Any:
        if request.path == "/logout":
            session.clear()
            session.destroy()
            return None
        if request.path == "/check":
            return str("user" in session)
        return repr(dict(session))

    options: dict[str, Any] = {"secret_key": SECRET} if signed else {}
    client = Client(
        KVSessionMiddleware(session_app(handler), counting, cookie_secure=False, **options),
        use_cookies=False,
    )
    codec = IdCodec(secret_key=SECRET if signed else None)
    for round_number in range(20):
        for path in ("/", "/check", "/logout"):
            for cookie in (None, codec.encode(codec.new_id()), f"junk{round_number}"):
                headers = {"Cookie": f"session={cookie}"} if cookie else {}
                response = client.get(path, headers=headers)
                assert response.status_code == 200
                cleared = set_cookies(response)
                # At most the expiry of a cookie the client sent to /logout.
                assert cleared == [] or (path == "/logout" and "Max-Age=0" in cleared[0])
    assert set(counting.methods()) <= {"load"}
    assert _keys(counting.inner) == []


@pytest.mark.parametrize("refresh", ["on_touch", "every_request"])
def test_b7_a_refreshed_permanent_cookie_is_never_cacheable(
    memory_store: MemoryStore, clock: Clock, refresh: str
) -> None:
    """CVE-2023-30861: Flask sent a refreshed permanent cookie without
    ``Vary: Cookie``, so a shared cache could hand it to other users."""

    def handler(session: Session, request: Request) -> Any:
        if request.path == "/permanent":
            session.permanent = True
            session["a"] = 1
            return None
        return "page" if session.permanent else "not permanent"

    client = client_for(
        handler, memory_store, cookie_refresh=refresh, idle_timeout=3600, touch_interval=60
    )
    client.get("/permanent")
    clock.advance(120)  # far enough for a touch
    response = client.get("/page")
    assert response.text == "page"
    (cookie,) = set_cookies(response)
    assert "Max-Age=" in cookie
    assert response.headers.getlist("Vary") == ["Cookie"]
    assert response.headers.getlist("Cache-Control") == ["no-store"]


@pytest.mark.parametrize(
    ("writer", "reader"),
    [(TaggedJSONSerializer, MsgpackSerializer), (MsgpackSerializer, TaggedJSONSerializer)],
    ids=["json-read-as-msgpack", "msgpack-read-as-json"],
)
def test_b10_a_record_of_another_serializer_is_no_session_not_a_fallback(
    memory_store: MemoryStore, writer: type, reader: type
) -> None:
    """No decoder fallback (CVE-2026-39324): the configured serializer reads,
    or the record is no session; it is never decoded by another one."""
    seen: list[SessionEventInfo] = []
    client = client_for(_routes, memory_store, serializer=writer())
    client.get("/set?a=1")
    value = _cookie_value(client)
    other = client_for(_routes, memory_store, serializer=reader(), on_event=seen.append)
    other.set_cookie("session", value)
    assert other.get("/read").text == "{}"
    assert [e.event for e in seen] == [SessionEvent.UNREADABLE]
    assert f"written by the {writer().name!r} serializer" in seen[0].detail


@pytest.mark.parametrize(
    "secret_key",
    ["k" * 15, ["k" * 32, "short"], b"k" * 15, ""],
    ids=["15-characters", "a-short-key-in-the-rotation", "15-bytes", "empty"],
)
def test_b11_short_signing_keys_are_refused_in_the_whole_rotation(secret_key: Any) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        Options.from_kwargs(secret_key=secret_key)


def test_b11_keys_of_16_characters_or_more_are_accepted() -> None:
    assert Options.from_kwargs(secret_key="k" * 16).ids.signing
    assert Options.from_kwargs(secret_key=[secrets.token_hex(32), "k" * 16]).ids.signing
