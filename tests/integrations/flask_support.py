"""Helpers of the Flask integration tests: the stores, a standard app, and one
interface over Flask's test client and WebTest.

Fixtures built on these are in ``conftest.py`` next to this module.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import webtest  # type: ignore[import-untyped]
from flask import Flask, request, session
from werkzeug.http import parse_date

from wsgi_kvsession import KVSessionMiddleware
from wsgi_kvsession.integrations.flask import KVSessionInterface, init_app
from wsgi_kvsession.stores import Store
from wsgi_kvsession.stores.base import Record

from ..support import CountingStore

#: A signing key long enough to be used (16 characters or more).
SECRET = "integration-test-secret-0123456789"


# -------------------------------------------------------------- the stores


@dataclass
class Backend:
    """One store under test (counted), the prefix of its session keys, its name."""

    name: str
    store: CountingStore
    key_prefix: str

    @property
    def inner(self) -> Store:
        return self.store.inner

    def records(self) -> dict[str, Record]:
        """The live session records of this test (its key prefix only)."""
        return dict(self.inner.iter_records(self.key_prefix))

    def options(self, **extra: Any) -> dict[str, Any]:
        """Explicit session options for this backend (its key prefix)."""
        return {"key_prefix": self.key_prefix, **extra}


# ---------------------------------------------------------------- the app


def add_routes(app: Flask) -> None:
    """The routes most tests use.

    ``/set?k=v&...`` sets keys, ``/get?k=key`` returns ``repr`` of one value,
    ``/dump`` the ``repr`` of the whole session, ``/nothing`` never touches
    it, ``/permanent`` makes it permanent (and stores ``p``), ``/transient``
    makes it not permanent, ``/clear``, ``/destroy`` and ``/regenerate`` do
    what they say, ``/append?item=x`` appends to the list ``cart`` in place
    (no setter runs), ``/force`` sets ``modified = True`` without changing
    anything, ``/boom`` changes the session and raises.
    """

    @app.get("/set")
    def set_values() -> str:
        for key, value in request.args.items():
            session[key] = value
        return "set"

    @app.get("/get")
    def get_value() -> str:
        return repr(session.get(request.args["k"]))

    @app.get("/dump")
    def dump() -> str:
        return repr(sorted(session.items()))

    @app.get("/nothing")
    def nothing() -> str:
        return "nothing"

    @app.get("/permanent")
    def make_permanent() -> str:
        session.permanent = True
        session["p"] = request.args.get("p", "1")
        return "permanent"

    @app.get("/transient")
    def make_transient() -> str:
        session.permanent = False
        return "transient"

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "cleared"

    @app.get("/destroy")
    def destroy() -> str:
        session.destroy()  # type: ignore[attr-defined]
        return "destroyed"

    @app.get("/regenerate")
    def regenerate() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        return "regenerated"

    @app.get("/cart")
    def new_cart() -> str:
        session["cart"] = []
        return "cart"

    @app.get("/append")
    def append() -> str:
        session["cart"].append(request.args.get("item", "x"))
        return repr(session.modified)

    @app.get("/force")
    def force() -> str:
        session.modified = True
        return "forced"

    @app.get("/boom")
    def boom() -> str:
        session["boom"] = "should not be saved"
        raise RuntimeError("boom")


#: How the app gets its sessions: ``init_app``, the two-liner (middleware +
#: ``KVSessionInterface()``), or ``KVSessionInterface(store)`` with no middleware.
MODES = ["init_app", "two_liner", "interface_only"]


def setup_sessions(app: Flask, backend: Backend, mode: str, **options: Any) -> None:
    """Give ``app`` its sessions from ``backend`` in one of the :data:`MODES`."""
    options = backend.options(**options)
    if mode == "init_app":
        init_app(app, backend.store, **options)
    elif mode == "two_liner":
        app.wsgi_app = KVSessionMiddleware(app.wsgi_app, backend.store, **options)  # type: ignore[method-assign]
        app.session_interface = KVSessionInterface()
    elif mode == "interface_only":
        app.session_interface = KVSessionInterface(backend.store, **options)
    else:  # pragma: no cover - a typo in a test
        raise AssertionError(mode)


class AppFactory(Protocol):
    """The ``make_app`` fixture: a Flask app with the standard routes (unless
    ``routes=False``) and sessions from the test's backend; ``config`` is set
    before the sessions are, ``options`` are explicit session options."""

    def __call__(
        self,
        config: Mapping[str, Any] | None = ...,
        *,
        mode: str = ...,
        routes: bool = ...,
        **options: Any,
    ) -> Flask: ...


# ---------------------------------------------------- cookies and replies


@dataclass(frozen=True)
class SetCookie:
    """One parsed ``Set-Cookie`` header: attribute names are lower-case, flags
    (Secure, HttpOnly, Partitioned) map to ``""``."""

    name: str
    value: str
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def max_age(self) -> int | None:
        value = self.attrs.get("max-age")
        return None if value is None else int(value)

    @property
    def expires(self) -> datetime.datetime | None:
        value = self.attrs.get("expires")
        return None if value is None else parse_date(value)

    def has(self, attribute: str) -> bool:
        return attribute.lower() in self.attrs

    @property
    def deletes(self) -> bool:
        """True when this header removes the cookie."""
        expires = self.expires
        return (
            self.value == ""
            and self.max_age == 0
            and expires is not None
            and expires.timestamp() <= 0
        )


def parse_set_cookie(header: str) -> SetCookie:
    first, *rest = header.split(";")
    name, _, value = first.partition("=")
    attrs: dict[str, str] = {}
    for part in rest:
        key, _, attr_value = part.strip().partition("=")
        attrs[key.lower()] = attr_value
    return SetCookie(name.strip(), value.strip(), attrs)


@dataclass
class Reply:
    """What a request through either test client returned."""

    status: int
    text: str
    headers: list[tuple[str, str]]

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times: {values}"
        return values[0] if values else None

    def cookies(self, name: str = "session") -> list[SetCookie]:
        """The Set-Cookie headers for cookie ``name``."""
        return [c for c in map(parse_set_cookie, self.all("Set-Cookie")) if c.name == name]

    def cookie(self, name: str = "session") -> SetCookie:
        """The one Set-Cookie header for ``name`` (fails unless exactly one)."""
        found = self.cookies(name)
        assert len(found) == 1, f"expected one Set-Cookie for {name!r}, got {found}"
        return found[0]


def reply(response: Any) -> Reply:
    """A Flask test-client response as a :class:`Reply`."""
    return Reply(response.status_code, response.get_data(as_text=True), list(response.headers))


# ---------------------------------------------------------------- drivers


class Driver(Protocol):
    """A browser-like client of the app: keeps cookies between requests."""

    name: str

    def get(self, path: str, *, status: int = 200) -> Reply: ...

    def cookie(self, name: str = "session") -> str | None: ...

    def set_cookie(self, name: str, value: str) -> None: ...


class FlaskDriver:
    """Flask's test client."""

    name = "flask"

    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()

    def get(self, path: str, *, status: int = 200) -> Reply:
        result = reply(self.client.get(path))
        assert result.status == status, result.text
        return result

    def cookie(self, name: str = "session") -> str | None:
        cookie = self.client.get_cookie(name)
        return None if cookie is None else cookie.value

    def set_cookie(self, name: str, value: str) -> None:
        self.client.set_cookie(name, value)


class WebTestDriver:
    """WebTest's ``TestApp``, which also lints the WSGI traffic."""

    name = "webtest"

    def __init__(self, app: Flask) -> None:
        self.app = webtest.TestApp(app)

    def get(self, path: str, *, status: int = 200) -> Reply:
        response = self.app.get(path, status=status, expect_errors=status >= 400)
        return Reply(response.status_int, response.text, list(response.headerlist))

    def cookie(self, name: str = "session") -> str | None:
        value = self.app.cookies.get(name)
        return None if value is None else str(value)

    def set_cookie(self, name: str, value: str) -> None:
        # Replace, not add: WebTest files its own cookie under another domain.
        for cookie in list(self.app.cookiejar):
            if cookie.name == name:
                self.app.cookiejar.clear(cookie.domain, cookie.path, cookie.name)
        self.app.set_cookie(name, value)


DriverFactory = Callable[[Flask], Driver]
