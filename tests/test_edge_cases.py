"""Edge cases found in review, each pinned by a test (rule numbers from DESIGN.md)."""

from __future__ import annotations

import io
import logging
import random
import string
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.handlers import SimpleHandler

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from wsgi_kvsession import KVSessionMiddleware, Session, envelope, get_session
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.serializers import TaggedJSONSerializer
from wsgi_kvsession.stores import MemoryStore
from wsgi_kvsession.stores.base import Record

from .support import CountingStore, client_for

SID = "A" * 43
KEY = store_key("session:", SID)


def _record(data: bytes, user_id: str | int | None = None) -> bytes:
    now = time.time()
    return envelope.pack(envelope.Envelope(now, now, False, user_id, "json", data))


def _call(app: Any, path: str, cookie: str | None = None) -> tuple[str | None, bytes]:
    """Run one request; return (the session Set-Cookie or None, body)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    headers: list[tuple[str, str]] = []

    def start_response(status: str, h: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers.extend(h)
        return lambda data: None

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return dict(headers).get("Set-Cookie"), data


def _cookie_pair(set_cookie: str | None) -> str:
    assert set_cookie is not None
    return set_cookie.split(";")[0]


def test_empty_first_chunk_works_under_wsgiref() -> None:
    """PEP 3333: a server may write b"" once start_response was called."""

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        yield b"hello"

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "x",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    out = io.BytesIO()
    handler = SimpleHandler(io.BytesIO(), out, io.StringIO(), environ)
    handler.run(KVSessionMiddleware(app, MemoryStore()))
    assert out.getvalue().split(b"\r\n")[0].endswith(b" 200 OK")
    assert out.getvalue().endswith(b"hello")


def _set_with_unstable_order() -> set[str]:
    """A set that iterates differently from an equal set built in another order."""
    rnd = random.Random(0)
    for _ in range(10_000):
        value = {"".join(rnd.choices(string.ascii_lowercase, k=5)) for _ in range(8)}
        if list(value) != list(set(sorted(value, reverse=True))):
            return value
    raise AssertionError("no set with an unstable iteration order found")


def test_rule_09_a_set_encodes_the_same_whatever_its_order() -> None:
    serializer = TaggedJSONSerializer()
    members = _set_with_unstable_order()
    rebuilt = set(sorted(members, reverse=True))
    assert list(members) != list(rebuilt)
    assert serializer.dumps({"s": members}) == serializer.dumps({"s": rebuilt})


def test_rule_08_read_only_session_holding_a_set_writes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tags = _set_with_unstable_order()
    counting = CountingStore(MemoryStore())

    def handler(session: Session, request: Request) -> str:
        if request.path == "/set":
            session["tags"] = tags
        return str(sorted(session.get("tags", ())))

    client = client_for(handler, counting)
    client.get("/set")
    counting.reset()
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        client.get("/read")
    assert counting.methods() == ["load"]
    assert "after the response headers" not in caplog.text


def test_rule_11_emptying_does_not_lose_a_parallel_change() -> None:
    store = MemoryStore()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        session = get_session(environ)
        path = environ["PATH_INFO"]
        if path == "/create":
            session["a"] = 1
        elif path == "/add-b":
            session["b"] = 2
        elif path == "/del-a":
            session.get("a")  # this request has loaded {"a": 1}
            _call(middleware, "/add-b", environ["HTTP_COOKIE"])  # another one adds "b"
            del session["a"]  # this one empties what it saw
        start_response("200 OK", [])
        return [b"ok"]

    middleware = KVSessionMiddleware(app, store, cookie_secure=False)
    cookie = _cookie_pair(_call(middleware, "/create")[0])
    set_cookie, _ = _call(middleware, "/del-a", cookie)
    assert set_cookie is None  # not expired: the session lives on with "b"
    record = store.load(store_key("session:", cookie.split("=")[1]))
    assert record is not None
    assert TaggedJSONSerializer().loads(envelope.unpack(record.value).data) == {"b": 2}


class _HookStore(MemoryStore):
    """Runs ``hook`` once, right after the next load (another request's write)."""

    hook: Callable[[], object] | None = None

    def load(self, key: str) -> Record | None:
        record = super().load(key)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return record


def test_rule_11_merge_keeps_the_newest_user_id_it_did_not_change() -> None:
    store = _HookStore()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        session = get_session(environ)
        path, cookie = environ["PATH_INFO"], environ.get("HTTP_COOKIE")
        if path == "/create":
            session["n"] = 0
            session.user_id = 7
        elif path == "/logout-user":
            session.user_id = None
        elif path == "/login-8":
            session.user_id = 8
        elif path == "/count":  # touches data only
            session["n"] += 1
            _call(middleware, "/logout-user", cookie)  # commits while this one runs
            # ...and another commits while this one merges:
            store.hook = lambda: _call(middleware, "/login-8", cookie)
        start_response("200 OK", [])
        return [b"ok"]

    middleware = KVSessionMiddleware(app, store, cookie_secure=False)
    cookie = _cookie_pair(_call(middleware, "/create")[0])
    _call(middleware, "/count", cookie)
    record = store.load(store_key("session:", cookie.split("=")[1]))
    assert record is not None
    stored = envelope.unpack(record.value)
    assert stored.user_id == 8
    assert TaggedJSONSerializer().loads(stored.data) == {"n": 1}


def test_rule_14_record_damaged_during_the_request_is_dropped_not_fatal() -> None:
    store = MemoryStore()
    store.insert(KEY, _record(b'{"n":1}'), time.time() + 100)

    def handler(session: Session, request: Request) -> None:
        session["n"] += 1
        store.update(KEY, _record(b"[1,2,3]"), time.time() + 100)

    client = client_for(handler, store)
    client.set_cookie("session", SID)
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("data", [b'{"a":1e400}', b'{"a":[-1e999]}'])
def test_rule_14_overflowing_float_means_no_session(data: bytes) -> None:
    store = MemoryStore()
    store.insert(KEY, _record(data), time.time() + 100)

    def handler(session: Session, request: Request) -> None:
        session["visits"] = session.get("visits", 0) + 1

    client = client_for(handler, store)
    client.set_cookie("session", SID)
    response = client.get("/")
    assert response.status_code == 200
    assert store.load(KEY) is not None  # the damaged record was not adopted
    assert client.get_cookie("session") is not None
    assert client.get_cookie("session").value != SID  # type: ignore[union-attr]


def test_rule_12_nested_change_after_write_is_logged_for_a_list_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        session = get_session(environ)
        write = start_response("200 OK", [])
        if environ["PATH_INFO"] == "/create":
            session["cart"] = []
        write(b"headers left here\n")
        if environ["PATH_INFO"] == "/add":
            session["cart"].append("item")  # too late, and no setter sees it
        return []

    middleware = KVSessionMiddleware(app, MemoryStore(), cookie_secure=False)
    cookie = _cookie_pair(_call(middleware, "/create")[0])
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        _call(middleware, "/add", cookie)
    assert "after the response headers were sent" in caplog.text


def test_destroy_with_a_stale_cookie_expires_it() -> None:
    def handler(session: Session, request: Request) -> None:
        session.destroy()

    client = client_for(handler, MemoryStore())
    client.set_cookie("session", SID)  # well-formed, but its record is gone
    response = client.get("/logout")
    assert any(v.startswith("session=;") for v in response.headers.getlist("Set-Cookie"))


def test_rule_12_a_5xx_response_is_not_encoded() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        get_session(environ)["obj"] = object()  # not storable, but nothing is saved
        start_response("500 Internal Server Error", [("Content-Type", "text/html")])
        return [b"<h1>Sorry</h1>"]

    response = Client(KVSessionMiddleware(app, MemoryStore(), cookie_secure=False)).get("/")
    assert response.status_code == 500
    assert response.get_data() == b"<h1>Sorry</h1>"


def test_a_caught_store_error_does_not_replace_the_session() -> None:
    class DownStore(MemoryStore):
        down = False

        def load(self, key: str) -> Record | None:
            if self.down:
                from wsgi_kvsession import StoreError

                raise StoreError("DownStore: down")
            return super().load(key)

    store = DownStore()

    def handler(session: Session, request: Request) -> None:
        try:
            session.get("a")
        except Exception:
            session["b"] = 1

    client = client_for(handler, store)
    store.insert(KEY, _record(b'{"a":1}'), time.time() + 100)
    client.set_cookie("session", SID)
    store.down = True
    response = client.get("/")
    assert response.headers.getlist("Set-Cookie") == []
    assert len(list(store.iter_records())) == 1


def test_user_id_alone_keeps_a_session_and_clear_drops_it() -> None:
    counting = CountingStore(MemoryStore())

    def handler(session: Session, request: Request) -> str:
        if request.path == "/login":
            session.user_id = "alice"
        elif request.path == "/logout":
            session.clear()
        return repr(session.user_id)

    client = client_for(handler, counting)
    client.get("/login")
    assert counting.methods() == ["insert"]
    assert client.get("/").text == "'alice'"
    response = client.get("/logout")
    assert any(v.startswith("session=;") for v in response.headers.getlist("Set-Cookie"))
    assert list(counting.inner.iter_records()) == []


def test_modified_agrees_with_what_is_written() -> None:
    counting = CountingStore(MemoryStore())
    states: list[bool] = []

    def handler(session: Session, request: Request) -> None:
        session.permanent = True  # on a new, empty session: nothing to store
        states.append(session.modified)
        session["a"] = 1
        states.append(session.modified)

    client_for(handler, counting).get("/")
    assert states == [False, True]
    assert counting.methods() == ["insert"]


def test_the_servers_file_wrapper_is_handed_back_untouched(memory_store: MemoryStore) -> None:
    # A server recognises its wsgi.file_wrapper by type to send the file with
    # sendfile(); the session is committed before it is handed back.
    from werkzeug.test import EnvironBuilder
    from werkzeug.wsgi import FileWrapper

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        get_session(environ)["downloaded"] = True
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"data"))

    environ = EnvironBuilder("/").get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    sent: list[list[tuple[str, str]]] = []
    body = KVSessionMiddleware(app, memory_store, cookie_secure=False)(
        environ, lambda status, headers, exc_info=None: sent.append(headers)
    )
    assert type(body) is FileWrapper
    assert b"".join(body) == b"data"
    assert any(name == "Set-Cookie" for name, _ in sent[0])
    assert len(list(memory_store.iter_records(""))) == 1


def test_permanent_by_default_makes_new_sessions_permanent_unless_the_app_says_no(
    memory_store: MemoryStore,
) -> None:
    def handler(session: Session, request: Request) -> str:
        session["a"] = 1
        if request.args.get("transient"):
            session.permanent = False
        return "ok"

    client = client_for(handler, memory_store, permanent_by_default=True)
    assert "Max-Age" in client.get("/").headers["Set-Cookie"]
    other = client_for(handler, memory_store, permanent_by_default=True)
    assert "Max-Age" not in other.get("/?transient=1").headers["Set-Cookie"]


def test_an_empty_session_cookie_is_no_cookie_and_logs_nothing(
    counting: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    # What a browser may send back after a logout expired the cookie.
    def handler(session: Session, request: Request) -> str:
        return repr(dict(session))

    client = client_for(handler, counting)
    client.set_cookie("session", "")
    with caplog.at_level(logging.INFO, logger="wsgi_kvsession"):
        response = client.get("/")
    assert response.text == "{}"
    assert counting.methods() == []
    assert "Set-Cookie" not in response.headers  # nothing to expire either
    assert caplog.records == []
