"""Test helpers shared by the test modules: a call-counting store and a tiny app."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request, Response

from wsgi_kvsession import KVSessionMiddleware, Session, get_session
from wsgi_kvsession.stores.base import Record, Store, Version


class Clock:
    """Moves ``time.time`` forward for everything that reads it (the ``clock`` fixture)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class CountingStore(Store):
    """Wraps a store and records every call as ``(method, key)``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.supports_versioning = inner.supports_versioning

    def __repr__(self) -> str:
        return f"CountingStore({self.inner!r})"

    def _note(self, method: str, key: str) -> None:
        with self._lock:
            self.calls.append((method, key))

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    def load(self, key: str) -> Record | None:
        self._note("load", key)
        return self.inner.load(key)

    def insert(self, key: str, value: bytes, expires_at: float, **kw) -> bool:
        self._note("insert", key)
        return self.inner.insert(key, value, expires_at, **kw)

    def update(
        self, key: str, value: bytes, expires_at: float, version: Version | None = None, **kw
    ) -> bool:
        self._note("update", key)
        return self.inner.update(key, value, expires_at, version, **kw)

    def delete(self, key: str, version: Version | None = None) -> bool:
        self._note("delete", key)
        return self.inner.delete(key, version)

    def touch(self, key: str, expires_at: float) -> bool:
        self._note("touch", key)
        return self.inner.touch(key, expires_at)

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        return self.inner.iter_records(prefix)

    def cleanup(self) -> int:
        return self.inner.cleanup()


def assert_instances_share_records(one: Store, two: Store, key: str) -> None:
    """Two store objects on one location (as two worker processes would have)
    see each other's writes and honour each other's insert-if-absent and
    compare-and-set."""
    expires_at = time.time() + 3600
    assert one.insert(key, b"from one", expires_at) is True
    assert two.insert(key, b"from two", expires_at) is False
    record = two.load(key)
    assert record is not None
    assert record.value == b"from one"
    assert two.update(key, b"from two", expires_at, version=record.version) is True
    assert one.update(key, b"stale", expires_at, version=record.version) is False
    again = one.load(key)
    assert again is not None
    assert again.value == b"from two"
    one.delete(key)
    assert two.load(key) is None


Handler = Callable[[Session, Request], Any]


def session_app(handler: Handler) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """A WSGI app that calls ``handler(session, request)`` and returns its
    result (``None`` → ``"ok"``) as text, or a Response as is."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        result = handler(get_session(environ), request)
        if isinstance(result, Response):
            return result(environ, start_response)
        return Response("ok" if result is None else str(result))(environ, start_response)

    return app


def client_for(handler: Handler, store: Store, **options: Any) -> Client:
    """A Werkzeug test client for ``session_app(handler)`` behind the middleware.

    ``cookie_secure`` defaults to False here because the test client talks
    plain http:// and would not send a Secure cookie back.
    """
    options.setdefault("cookie_secure", False)
    return Client(KVSessionMiddleware(session_app(handler), store, **options))


def set_cookies(response: TestResponse, name: str = "session") -> list[str]:
    """The Set-Cookie headers of ``response`` for cookie ``name``."""
    return [v for v in response.headers.getlist("Set-Cookie") if v.startswith(name + "=")]


def write_in_forked_child(store: Store, key: str, child_key: str, expires_at: float) -> None:
    """Fork; in the child, read ``key`` (which must hold ``b"parent"``), update it
    to ``b"child"`` under its version and insert ``child_key``; assert the child
    did all three. For the stores' fork-safety tests: the child must not use the
    parent's connections."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reports by exit code
        code = 1
        try:
            record = store.load(key)
            if record is None or record.value != b"parent":
                code = 2
            elif not store.update(key, b"child", expires_at, version=record.version):
                code = 3
            elif not store.insert(child_key, b"from the child", expires_at):
                code = 4
            else:
                code = 0
        except BaseException:
            code = 5
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    codes = {2: "no parent record", 3: "update refused", 4: "insert refused", 5: "raised"}
    assert os.WEXITSTATUS(status) == 0, codes.get(os.WEXITSTATUS(status), "child failed")
