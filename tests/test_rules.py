"""One or more tests per rule of DESIGN.md section 4, named after the rule."""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from markupsafe import Markup
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from wsgi_kvsession import KVSessionMiddleware, Session, StoreError, get_session
from wsgi_kvsession import ids as ids_module
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import FileStore, MemoryStore
from wsgi_kvsession.stores.base import Record, Store, Version

from .support import Clock, CountingStore, client_for, session_app, set_cookies


def _set(key: str, value: Any) -> Any:
    def handler(session: Session, request: Request) -> None:
        session[key] = value

    return handler


def _routes(session: Session, request: Request) -> Any:
    """A small app: /set?k=v, /get?k, /read (dict), /nothing, /clear, /destroy ..."""
    path = request.path
    if path == "/set":
        for k, v in request.args.items():
            session[k] = v
    elif path == "/get":
        return repr(session.get(request.args["k"]))
    elif path == "/read":
        return repr(dict(session))
    elif path == "/nothing":
        return "nothing"
    elif path == "/clear":
        session.clear()
    elif path == "/destroy":
        session.destroy()
    elif path == "/regenerate":
        session.regenerate()
    elif path == "/permanent":
        session.permanent = True
        session["p"] = 1
    elif path == "/cart":
        session.setdefault("cart", []).append(request.args.get("item", "x"))
    return None


def _cookie(client: Client) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


# -- IDs and cookies -------------------------------------------------------


def test_rule_01_ids_come_from_secrets_with_256_bits(counting: CountingStore) -> None:
    seen = set()
    for _ in range(50):
        client = client_for(_routes, counting)
        client.get("/set?a=1")
        value = _cookie(client)
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        assert len(raw) == 32  # 256 bits
        seen.add(value)
    assert len(seen) == 50
    assert not hasattr(ids_module, "random")


def test_rule_01_ids_are_drawn_from_secrets(
    counting: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[int] = []

    def token_urlsafe(nbytes: int) -> str:
        drawn.append(nbytes)
        return "A" * 22

    monkeypatch.setattr(ids_module.secrets, "token_urlsafe", token_urlsafe)
    client = client_for(_routes, counting, id_bits=128)
    client.get("/set?a=1")
    assert drawn == [16]
    assert _cookie(client) == "A" * 22


@pytest.mark.parametrize(
    "value",
    ["short", "../../etc/passwd", "a" * 300, "bad value with spaces", "ü" * 30, "x.y" * 10],
)
def test_rule_02_cookie_checked_before_any_store_call(
    counting: CountingStore, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_kvsession")
    app = KVSessionMiddleware(session_app(_routes), counting, cookie_secure=False)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/read",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "HTTP_COOKIE": f"session={value}",
    }
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    assert status == ["200 OK"]
    assert body == b"{}"
    assert counting.calls == []
    assert value not in caplog.text
    assert "malformed" in caplog.text


def test_rule_02_signed_cookie_checked_before_any_store_call(counting: CountingStore) -> None:
    client = client_for(_routes, counting, secret_key="s" * 32)
    client.get("/set?a=1")
    value = _cookie(client)
    session_id, _, signature = value.partition(".")
    assert signature
    counting.reset()
    tampered = Client(client.application)
    tampered.set_cookie("session", session_id + "." + "A" * len(signature))
    assert tampered.get("/read").text == "{}"
    unsigned = Client(client.application)
    unsigned.set_cookie("session", session_id)
    assert unsigned.get("/read").text == "{}"
    assert counting.calls == []
    assert client.get("/read").text == "{'a': '1'}"


def test_rule_02_secret_key_rotation_first_signs_all_verify(memory_store: MemoryStore) -> None:
    old = client_for(_routes, memory_store, secret_key="o" * 32)
    old.get("/set?a=1")
    rotated = client_for(_routes, memory_store, secret_key=["n" * 32, "o" * 32])
    rotated.set_cookie("session", _cookie(old))
    assert rotated.get("/read").text == "{'a': '1'}"
    rotated.get("/set?b=2")
    fresh = client_for(_routes, memory_store, secret_key=["n" * 32])
    fresh.get("/set?c=3")
    new_only = client_for(_routes, memory_store, secret_key="n" * 32)
    new_only.set_cookie("session", _cookie(old))
    assert new_only.get("/read").text == "{}"


def test_a_cookie_signed_with_a_fallback_key_is_signed_again_on_its_next_request(
    counting: CountingStore,
) -> None:
    # Rotation keeps active sessions only if their cookies move to the new key
    # before the old key is removed: a read-only request of a browser-session
    # (not permanent) session re-sends the cookie, newly signed, without a write.
    old = client_for(_routes, counting, secret_key="o" * 32)
    old.get("/set?a=1")
    rotated = client_for(_routes, counting, secret_key=["n" * 32, "o" * 32])
    rotated.set_cookie("session", _cookie(old))
    counting.reset()
    response = rotated.get("/read")
    assert counting.methods() == ["load"]
    (cookie,) = set_cookies(response)
    assert "Max-Age" not in cookie
    resigned = _cookie(rotated)
    assert resigned != _cookie(old)
    assert resigned.split(".")[0] == _cookie(old).split(".")[0]  # same ID
    # Once signed with the current key, the cookie is not sent again...
    assert set_cookies(rotated.get("/read")) == []
    # ...and it survives the old key's removal.
    new_only = client_for(_routes, counting, secret_key="n" * 32)
    new_only.set_cookie("session", resigned)
    assert new_only.get("/read").text == "{'a': '1'}"


@pytest.mark.parametrize("how", ["unknown", "expired", "destroyed"])
def test_rule_03_strict_mode_never_adopts_an_id(
    memory_store: MemoryStore, clock: Clock, how: str
) -> None:
    client = client_for(_routes, memory_store, idle_timeout=60)
    if how == "unknown":
        planted = "P" * 43
    else:
        client.get("/set?a=1")
        planted = _cookie(client)
        if how == "expired":
            clock.advance(61)
        else:
            client.get("/destroy")
    attacker = Client(client.application)
    attacker.set_cookie("session", planted)
    assert attacker.get("/read").text == "{}"
    response = attacker.get("/set?b=2")
    assert len(set_cookies(response)) == 1
    issued = _cookie(attacker)
    assert issued != planted
    assert memory_store.load(store_key("session:", planted)) is None
    assert memory_store.load(store_key("session:", issued)) is not None


def test_rule_04_store_key_is_prefix_plus_sha256_of_id(counting: CountingStore) -> None:
    client = client_for(_routes, counting, key_prefix="app1:")
    client.get("/set?a=1")
    session_id = _cookie(client)
    expected = "app1:" + hashlib.sha256(session_id.encode()).hexdigest()
    assert counting.calls == [("insert", expected)]
    dump = b"".join(k.encode() + r.value for k, r in counting.inner.iter_records())
    assert session_id.encode() not in dump


def test_rule_04_no_raw_id_in_file_names(tmp_path: Any) -> None:
    store = FileStore(tmp_path / "s")
    client = client_for(_routes, store)
    client.get("/set?a=1")
    session_id = _cookie(client)
    names = [p.name for p in (tmp_path / "s").iterdir()]
    assert names
    assert all(session_id not in name for name in names)
    assert all(
        session_id.encode() not in p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file()
    )


def test_rule_05_one_set_cookie_at_most(memory_store: MemoryStore) -> None:
    def handler(session: Session, request: Request) -> Response:
        session["a"] = 1
        response = Response("x")
        response.set_cookie("session", "from-the-app")
        response.set_cookie("other", "kept")
        return response

    response = client_for(handler, memory_store).get("/")
    assert len(set_cookies(response)) == 1
    assert "from-the-app" not in set_cookies(response)[0]
    assert len(set_cookies(response, "other")) == 1


@pytest.mark.parametrize(
    "access",
    [
        lambda s: "a" in s,
        lambda s: s.get("a"),
        lambda s: len(s),
        lambda s: list(s),
        lambda s: s.id,
        lambda s: s.permanent,
        lambda s: s.new,
        lambda s: dict(s.items()),
    ],
    ids=["in", "get", "len", "iter", "id", "permanent", "new", "items"],
)
def test_rule_05_vary_cookie_on_every_access_path(memory_store: MemoryStore, access: Any) -> None:
    client = client_for(_routes, memory_store)
    client.get("/set?a=1")

    def handler(session: Session, request: Request) -> None:
        access(session)

    reader = client_for(handler, memory_store)
    reader.set_cookie("session", _cookie(client))
    response = reader.get("/")
    assert response.headers["Vary"] == "Cookie"
    assert set_cookies(response) == []
    assert "Cache-Control" not in response.headers


def test_rule_05_vary_merges_with_the_apps_vary(memory_store: MemoryStore) -> None:
    def handler(session: Session, request: Request) -> Response:
        session.get("a")
        return Response("x", headers={"Vary": "Accept-Encoding"})

    response = client_for(handler, memory_store).get("/")
    assert response.headers.getlist("Vary") == ["Accept-Encoding, Cookie"]


@pytest.mark.parametrize("path", ["/set?a=1", "/clear"])
def test_rule_05_no_store_replaces_cache_control_when_cookie_set_or_cleared(
    memory_store: MemoryStore, path: str
) -> None:
    def handler(session: Session, request: Request) -> Response:
        _routes(session, request)
        return Response("x", headers={"Cache-Control": "public, max-age=3600"})

    client = client_for(handler, memory_store)
    client.get("/set?a=1")
    response = client.get(path) if path == "/clear" else client_for(handler, memory_store).get(path)
    assert len(set_cookies(response)) == 1
    assert response.headers.getlist("Cache-Control") == ["no-store"]


def test_rule_05_cookie_values_are_str(memory_store: MemoryStore) -> None:
    app = KVSessionMiddleware(session_app(_set("a", 1)), memory_store)
    captured: list[list[tuple[str, str]]] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "x",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
    }
    list(app(environ, lambda s, h, e=None: captured.append(h)))
    assert all(type(k) is str and type(v) is str for k, v in captured[0])


def test_rule_05_default_cookie_flags(memory_store: MemoryStore) -> None:
    app = KVSessionMiddleware(session_app(_set("a", 1)), memory_store)
    response = Client(app).get("/", base_url="https://localhost")
    cookie = set_cookies(response)[0]
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert "Domain" not in cookie
    assert "Max-Age" not in cookie
    assert "Expires" not in cookie


# -- write discipline --------------------------------------------------------


def test_rule_06_untouched_session_makes_no_store_call_and_no_header(
    counting: CountingStore,
) -> None:
    client = client_for(_routes, counting)
    client.get("/set?a=1")
    counting.reset()

    def bare(environ: dict[str, Any], start_response: Any) -> Any:
        return Response("nothing")(environ, start_response)

    response = client.get("/nothing")
    expected = Client(bare).get("/nothing")
    assert counting.calls == []
    assert response.headers.to_wsgi_list() == expected.headers.to_wsgi_list()
    assert response.data == expected.data


def test_rule_07_new_session_left_empty_has_no_record_and_no_cookie(
    counting: CountingStore,
) -> None:
    client = client_for(_routes, counting)
    response = client.get("/read")
    assert response.text == "{}"
    assert set_cookies(response) == []
    assert counting.calls == []  # no cookie: nothing to load
    assert response.headers["Vary"] == "Cookie"


def test_rule_07_emptied_session_is_deleted_and_cookie_expired(counting: CountingStore) -> None:
    client = client_for(_routes, counting)
    client.get("/set?a=1")
    counting.reset()
    response = client.get("/clear")
    assert counting.methods() == ["load", "delete"]
    (cookie,) = set_cookies(response)
    assert "Max-Age=0" in cookie
    assert "Expires=Thu, 01 Jan 1970" in cookie
    assert list(counting.inner.iter_records()) == []


def test_rule_07_permanent_cookie_has_max_age_and_expires(memory_store: MemoryStore) -> None:
    client = client_for(_routes, memory_store, idle_timeout=3600)
    (cookie,) = set_cookies(client.get("/permanent"))
    max_age = int(cookie.split("Max-Age=")[1].split(";")[0])
    assert 3590 <= max_age <= 3600
    assert "Expires=" in cookie
    (plain,) = set_cookies(client_for(_routes, memory_store).get("/set?a=1"))
    assert "Max-Age" not in plain
    assert "Expires" not in plain


def test_rule_07_permanent_cookie_max_age_is_capped_by_absolute_timeout(
    memory_store: MemoryStore,
) -> None:
    client = client_for(_routes, memory_store, idle_timeout=3600, absolute_timeout=600)
    (cookie,) = set_cookies(client.get("/permanent"))
    assert 590 <= int(cookie.split("Max-Age=")[1].split(";")[0]) <= 600


def test_rule_08_read_only_is_one_read_and_no_write(counting: CountingStore) -> None:
    client = client_for(_routes, counting)
    client.get("/set?a=1")
    counting.reset()
    response = client.get("/read")
    assert response.text == "{'a': '1'}"
    assert counting.methods() == ["load"]
    assert set_cookies(response) == []


def test_rule_08_touch_is_throttled(counting: CountingStore, clock: Clock) -> None:
    client = client_for(_routes, counting, idle_timeout=3600, touch_interval=60)
    client.get("/set?a=1")
    counting.reset()
    client.get("/read")
    clock.advance(30)
    client.get("/read")
    assert counting.methods() == ["load", "load"]
    clock.advance(31)
    client.get("/read")
    assert counting.methods()[-2:] == ["load", "touch"]
    counting.reset()
    client.get("/read")
    assert counting.methods() == ["load"]
    # The touch slid the deadline: 3600 s after the touch, not after the write.
    clock.advance(3600 - 10)
    assert client.get("/read").text == "{'a': '1'}"


def test_rule_08_touch_resends_a_permanent_cookie(counting: CountingStore, clock: Clock) -> None:
    client = client_for(_routes, counting, idle_timeout=3600, touch_interval=60)
    client.get("/permanent")
    clock.advance(120)
    counting.reset()
    response = client.get("/read")
    assert counting.methods() == ["load", "touch"]
    (cookie,) = set_cookies(response)
    assert "Max-Age=3600" in cookie or "Max-Age=3599" in cookie
    assert response.headers["Cache-Control"] == "no-store"


def test_rule_08_touch_of_a_browser_session_cookie_sends_no_cookie(
    counting: CountingStore, clock: Clock
) -> None:
    client = client_for(_routes, counting, idle_timeout=3600, touch_interval=60)
    client.get("/set?a=1")
    clock.advance(120)
    response = client.get("/read")
    assert counting.methods()[-1] == "touch"
    assert set_cookies(response) == []


def test_cookie_refresh_every_request_resends_a_permanent_cookie_without_a_write(
    counting: CountingStore, clock: Clock
) -> None:
    client = client_for(
        _routes, counting, idle_timeout=3600, touch_interval=60, cookie_refresh="every_request"
    )
    client.get("/permanent")
    clock.advance(10)  # within touch_interval: no touch, but the cookie comes again
    counting.reset()
    response = client.get("/read")
    assert counting.methods() == ["load"]
    (cookie,) = set_cookies(response)
    assert "Max-Age=3590" in cookie or "Max-Age=3589" in cookie  # the server's deadline
    assert response.headers["Cache-Control"] == "no-store"
    clock.advance(120)
    counting.reset()
    (cookie,) = set_cookies(client.get("/read"))
    assert counting.methods() == ["load", "touch"]
    assert "Max-Age=3600" in cookie or "Max-Age=3599" in cookie


def test_cookie_refresh_every_request_never_resends_a_browser_session_cookie(
    counting: CountingStore, clock: Clock
) -> None:
    client = client_for(_routes, counting, cookie_refresh="every_request")
    client.get("/set?a=1")
    assert set_cookies(client.get("/read")) == []


def test_cookie_refresh_on_change_slides_the_deadline_but_sends_no_cookie(
    counting: CountingStore, clock: Clock
) -> None:
    client = client_for(
        _routes, counting, idle_timeout=3600, touch_interval=60, cookie_refresh="on_change"
    )
    client.get("/permanent")
    clock.advance(120)
    counting.reset()
    response = client.get("/read")
    assert counting.methods() == ["load", "touch"]
    assert set_cookies(response) == []


def test_rule_09_change_is_one_read_and_one_write(counting: CountingStore) -> None:
    client = client_for(_routes, counting)
    client.get("/set?a=1")
    counting.reset()
    client.get("/set?b=2")
    assert counting.methods() == ["load", "update"]
    assert client.get("/read").text == "{'a': '1', 'b': '2'}"


def test_rule_09_nested_mutation_is_saved(counting: CountingStore) -> None:
    client = client_for(_routes, counting)
    client.get("/cart?item=apple")
    counting.reset()
    client.get("/cart?item=pear")
    assert counting.methods() == ["load", "update"]
    assert client.get("/read").text == "{'cart': ['apple', 'pear']}"


def test_rule_09_equal_assignment_or_revert_writes_nothing(counting: CountingStore) -> None:
    def handler(session: Session, request: Request) -> None:
        if request.path == "/init" or request.path == "/same":
            session["a"] = [1, 2]
        elif request.path == "/revert":
            session["a"].append(3)
            session["b"] = "temp"
            session["a"].pop()
            del session["b"]

    client = client_for(handler, counting)
    client.get("/init")
    counting.reset()
    client.get("/same")
    client.get("/revert")
    assert counting.methods() == ["load", "load"]


def test_rule_09_modified_true_forces_a_write(counting: CountingStore) -> None:
    def handler(session: Session, request: Request) -> None:
        if request.path == "/init":
            session["a"] = 1
        else:
            assert session.modified is False
            session.modified = True

    client = client_for(handler, counting)
    client.get("/init")
    counting.reset()
    client.get("/force")
    assert counting.methods() == ["load", "update"]


# -- concurrency (deterministic interleavings; threaded ones are in test_concurrency)


def _nested_client(store: Store, inner_path: str, then: Any) -> tuple[Client, Client]:
    """A client whose request runs another request of the same session in the
    middle of its own (after loading), then calls ``then(session)``."""
    other = client_for(_routes, store)

    def handler(session: Session, request: Request) -> Any:
        if request.path == "/race":
            session.get("a")  # load now
            other.set_cookie("session", request.cookies["session"])
            other.get(inner_path)
            then(session)
            return None
        return _routes(session, request)

    return client_for(handler, store), other


def test_rule_10_destroyed_session_is_never_brought_back(counting: CountingStore) -> None:
    client, _ = _nested_client(counting, "/destroy", lambda s: s.__setitem__("late", 1))
    client.get("/set?a=1")
    session_id = _cookie(client)
    response = client.get("/race")
    assert set_cookies(response) == []  # no cookie for a session that is gone
    assert counting.inner.load(store_key("session:", session_id)) is None
    assert list(counting.inner.iter_records()) == []


def test_rule_10_regenerated_session_old_id_stays_gone(memory_store: MemoryStore) -> None:
    client, other = _nested_client(memory_store, "/regenerate", lambda s: s.__setitem__("late", 1))
    client.get("/set?a=1")
    old_id = _cookie(client)
    client.get("/race")
    assert memory_store.load(store_key("session:", old_id)) is None
    new_id = _cookie(other)
    assert new_id != old_id
    assert memory_store.load(store_key("session:", new_id)) is not None


def test_rule_10_expired_session_is_never_brought_back(
    memory_store: MemoryStore, clock: Clock
) -> None:
    def slow_writer(session: Session, request: Request) -> None:
        session.get("a")
        clock.advance(120)
        session["late"] = 1

    client = client_for(_routes, memory_store, idle_timeout=60)
    client.get("/set?a=1")
    session_id = _cookie(client)
    writer = client_for(slow_writer, memory_store, idle_timeout=60)
    writer.set_cookie("session", session_id)
    writer.get("/")
    assert memory_store.load(store_key("session:", session_id)) is None


def test_rule_11_parallel_changes_to_different_keys_both_survive(
    counting: CountingStore,
) -> None:
    client, _ = _nested_client(counting, "/set?b=2", lambda s: s.__setitem__("c", "3"))
    client.get("/set?a=1")
    counting.reset()
    client.get("/race")
    # load, (inner request: load, update), failed update, re-load, merged update
    assert counting.methods() == ["load", "load", "update", "update", "load", "update"]
    assert client.get("/read").text == "{'a': '1', 'b': '2', 'c': '3'}"


def test_rule_11_deleted_key_stays_deleted_after_merge(memory_store: MemoryStore) -> None:
    client, _ = _nested_client(memory_store, "/set?b=2", lambda s: s.__delitem__("a"))
    client.get("/set?a=1&z=0")
    client.get("/race")
    assert client.get("/read").text == "{'z': '0', 'b': '2'}"


def test_rule_11_same_key_last_writer_wins(memory_store: MemoryStore) -> None:
    client, _ = _nested_client(memory_store, "/set?a=inner", lambda s: s.__setitem__("a", "outer"))
    client.get("/set?a=1")
    client.get("/race")
    assert client.get("/read").text == "{'a': 'outer'}"


# -- WSGI mechanics ------------------------------------------------------------


def _environ(path: str = "/", cookie: str | None = None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    if cookie:
        environ["HTTP_COOKIE"] = f"session={cookie}"
    return environ


class _Server:
    """A minimal WSGI server side: records start_response and write() calls."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        self.events.append(("start", status, headers, exc_info is not None))
        return lambda data: self.events.append(("write", data))

    def run(self, app: Any, environ: dict[str, Any]) -> bytes:
        result = app(environ, self.start_response)
        try:
            return b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()

    def headers(self) -> list[tuple[str, str]]:
        return next(e[2] for e in self.events if e[0] == "start")


def test_rule_12_exc_info_final_status_decides(counting: CountingStore) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        get_session(environ)["a"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error"]

    server = _Server()
    server.run(KVSessionMiddleware(app, counting, cookie_secure=False), _environ())
    starts = [e for e in server.events if e[0] == "start"]
    assert len(starts) == 1
    assert starts[0][1].startswith("500")
    assert counting.calls == []
    assert not any(k.lower() == "set-cookie" for k, _ in starts[0][2])


@pytest.mark.parametrize("save_on_server_error", [False, True])
def test_rule_12_no_save_on_5xx_unless_configured(
    counting: CountingStore, save_on_server_error: bool
) -> None:
    def handler(session: Session, request: Request) -> Response:
        session["a"] = 1
        return Response("x", status=503)

    client = client_for(handler, counting, save_on_server_error=save_on_server_error)
    response = client.get("/")
    assert (counting.methods() == ["insert"]) is save_on_server_error
    assert bool(set_cookies(response)) is save_on_server_error


def test_rule_12_exception_in_app_persists_nothing(counting: CountingStore) -> None:
    def handler(session: Session, request: Request) -> None:
        session["a"] = 1
        raise RuntimeError("app bug")

    with pytest.raises(RuntimeError, match="app bug"):
        client_for(handler, counting).get("/")
    assert counting.calls == []


def test_rule_12_change_after_start_response_before_body_is_saved(
    memory_store: MemoryStore,
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        get_session(environ)["late_but_in_time"] = 1
        yield b"body"

    server = _Server()
    server.run(KVSessionMiddleware(app, memory_store, cookie_secure=False), _environ())
    assert any(v.startswith("session=") for k, v in server.headers() if k == "Set-Cookie")
    assert len(list(memory_store.iter_records())) == 1


def test_rule_12_change_after_headers_left_is_logged(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        session = get_session(environ)
        session["cart"] = []
        start_response("200 OK", [])
        yield b"first chunk"
        session["cart"].append("too late")  # nested: no setter sees it
        yield b"second"

    server = _Server()
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        server.run(KVSessionMiddleware(app, memory_store, cookie_secure=False), _environ())
    assert "after the response headers were sent" in caplog.text
    ((_, record),) = list(memory_store.iter_records())
    assert b"too late" not in record.value


def test_rule_12_direct_change_after_headers_left_is_logged_once(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        yield b"first chunk"
        get_session(environ)["a"] = 1
        get_session(environ)["b"] = 2
        yield b"second"

    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        _Server().run(KVSessionMiddleware(app, memory_store, cookie_secure=False), _environ())
    assert caplog.text.count("after the response headers were sent") == 1
    assert list(memory_store.iter_records()) == []


def test_rule_12_write_callable_commits_before_first_write(memory_store: MemoryStore) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        get_session(environ)["a"] = 1
        write(b"written ")
        return [b"returned"]

    server = _Server()
    body = server.run(KVSessionMiddleware(app, memory_store, cookie_secure=False), _environ())
    assert [e[0] for e in server.events] == ["start", "write"]
    assert server.events[1] == ("write", b"written ")
    assert body == b"returned"
    assert any(k == "Set-Cookie" for k, _ in server.headers())


def test_rule_12_close_of_the_app_iterable_is_called(memory_store: MemoryStore) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Any:
            yield b"a"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        get_session(environ)["a"] = 1
        start_response("200 OK", [])
        return Body()

    _Server().run(KVSessionMiddleware(app, memory_store, cookie_secure=False), _environ())
    assert closed == [True]


def test_rule_12_empty_body_commits_at_end(memory_store: MemoryStore) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("204 No Content", [])
        get_session(environ)["a"] = 1
        return iter([])

    server = _Server()
    server.run(KVSessionMiddleware(app, memory_store, cookie_secure=False), _environ())
    assert any(k == "Set-Cookie" for k, _ in server.headers())


class _FlakyStore(Store):
    """A store that is down while ``down`` is True."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreError("FlakyStore: connection refused")

    def load(self, key: str) -> Record | None:
        self._check()
        return self.inner.load(key)

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:
        self._check()
        return self.inner.insert(key, value, expires_at)

    def update(
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
        self._check()
        return self.inner.update(key, value, expires_at, version)

    def delete(self, key: str, version: Version | None = None) -> bool:
        self._check()
        return self.inner.delete(key, version)

    def touch(self, key: str, expires_at: float) -> bool:
        self._check()
        return self.inner.touch(key, expires_at)


def test_rule_13_store_down_untouched_requests_unaffected_touched_ones_fail() -> None:
    store = _FlakyStore()
    client = client_for(_routes, store)
    client.get("/set?a=1")
    store.down = True
    assert client.get("/nothing").status_code == 200
    with pytest.raises(StoreError, match="connection refused"):
        client.get("/read")
    with pytest.raises(StoreError):
        client_for(_routes, store).get("/set?b=2")  # a new session: the insert fails
    store.down = False
    assert client.get("/read").text == "{'a': '1'}"


def test_rule_13_store_down_can_continue_with_an_empty_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _FlakyStore()
    client = client_for(_routes, store, on_store_error="empty")
    client.get("/set?a=1")
    store.down = True
    with caplog.at_level(logging.ERROR, logger="wsgi_kvsession"):
        response = client.get("/read")
        assert response.status_code == 200
        assert response.text == "{}"
        assert set_cookies(response) == []
        new = client_for(_routes, store, on_store_error="empty").get("/set?b=2")
        assert new.status_code == 200
        assert set_cookies(new) == []
    assert "session store failed" in caplog.text
    store.down = False
    assert client.get("/read").text == "{'a': '1'}"


# -- data ----------------------------------------------------------------------


def test_rule_14_tagged_types_round_trip_through_the_store(memory_store: MemoryStore) -> None:
    values = {
        "dt": datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc),
        "naive": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "date": datetime.date(2026, 1, 2),
        "time": datetime.time(3, 4, 5),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "bytes": b"\x00\xff",
        "tuple": (1, (2, "three")),
        "set": {1, 2},
        "decimal": Decimal("1.10"),
        "markup": Markup("<b>hi</b>"),
        "tag_lookalike": {" t": [1]},
        "nested": {"list": [(1,), {"x": b"y"}]},
    }
    seen: dict[str, Any] = {}

    def handler(session: Session, request: Request) -> None:
        if request.path == "/set":
            session.update(values)
        else:
            seen.update(session)

    client = client_for(handler, memory_store)
    client.get("/set")
    client.get("/get")
    assert seen == values
    assert {k: type(v) for k, v in seen.items()} == {k: type(v) for k, v in values.items()}


def test_rule_14_corrupt_or_foreign_bytes_mean_no_session(memory_store: MemoryStore) -> None:
    client = client_for(_routes, memory_store)
    client.get("/set?a=1")
    session_id = _cookie(client)
    key = store_key("session:", session_id)
    import pickle

    for garbage in [
        b"",
        b"\x80\x04garbage",
        pickle.dumps({"a": 1}),
        b"KVS\x01\x00\x00\x00\x05{bad",
        b"{}",
    ]:
        memory_store.delete(key)
        memory_store.insert(key, garbage, time.time() + 60)
        response = client.get("/read")
        assert response.status_code == 200
        assert response.text == "{}"


def test_rule_14_unserializable_value_is_a_clear_error(memory_store: MemoryStore) -> None:
    from wsgi_kvsession.serializers import SerializationError

    with pytest.raises(SerializationError, match="object"):
        client_for(_set("a", object()), memory_store).get("/")


def test_rule_15_absolute_timeout_enforced_from_the_envelope(
    memory_store: MemoryStore, clock: Clock
) -> None:
    client = client_for(_routes, memory_store, idle_timeout=100, absolute_timeout=250)
    client.get("/set?a=1")
    session_id = _cookie(client)
    for _ in range(3):  # stay active: the idle timeout never fires
        clock.advance(60)
        client.get("/set?n=" + str(_))
    # The store would keep it (its deadline is far), the envelope says it is too old.
    memory_store.touch(store_key("session:", session_id), time.time() + 10_000)
    clock.advance(80)
    assert client.get("/read").text == "{}"


def test_rule_15_idle_timeout_enforced_by_the_record_deadline(
    memory_store: MemoryStore, clock: Clock
) -> None:
    client = client_for(_routes, memory_store, idle_timeout=100, absolute_timeout=None)
    client.get("/set?a=1")
    clock.advance(99)
    assert client.get("/read").text == "{'a': '1'}"
    clock.advance(101)
    assert client.get("/read").text == "{}"


def test_rule_15_envelope_carries_created_written_and_permanent(memory_store: MemoryStore) -> None:
    from wsgi_kvsession import envelope

    before = time.time()
    client_for(_routes, memory_store).get("/permanent")
    ((_, record),) = list(memory_store.iter_records())
    stored = envelope.unpack(record.value)
    assert before <= stored.created <= stored.written <= time.time()
    assert stored.permanent is True
    assert stored.serializer == "json"
    assert record.expires_at > time.time()


def test_rule_05_partitioned_host_prefixed_cookie(memory_store: MemoryStore) -> None:
    app = KVSessionMiddleware(
        session_app(_set("a", 1)),
        memory_store,
        cookie_name="__Host-sid",
        cookie_partitioned=True,
        cookie_samesite="Strict",
    )
    response = Client(app).get("/", base_url="https://localhost")
    (cookie,) = set_cookies(response, "__Host-sid")
    for attribute in ("Secure", "HttpOnly", "Partitioned", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie


def test_rule_05_expired_cookie_keeps_the_attributes_it_was_set_with(
    memory_store: MemoryStore,
) -> None:
    options = {"cookie_domain": "example.com", "cookie_path": "/app", "cookie_secure": True}
    app = KVSessionMiddleware(session_app(_routes), memory_store, **options)
    client = Client(app)
    (set_cookie,) = set_cookies(client.get("/set?a=1", base_url="https://www.example.com"))
    value = set_cookie.split(";")[0].split("=", 1)[1]
    browser = Client(app, use_cookies=False)
    response = browser.get(
        "/destroy", base_url="https://www.example.com", headers={"Cookie": f"session={value}"}
    )
    (cleared,) = set_cookies(response)
    for attribute in ("Domain=example.com", "Path=/app", "Secure", "HttpOnly", "SameSite=Lax"):
        assert attribute in cleared
        assert attribute in set_cookie
    assert "Max-Age=0" in cleared
