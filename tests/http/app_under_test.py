"""The app the HTTP tests serve with gunicorn: a raw WSGI variant and a Flask one.

gunicorn imports this module in each worker (``tests.http.app_under_test:make_wsgi_app()``
or ``...:make_flask_app()``); the test passes the store through the environment:

``KVSESSION_TEST_STORE_URL``
    the store URL (:func:`~wsgi_kvsession.stores.store_from_url`);
``KVSESSION_TEST_KEY_PREFIX``
    a random key prefix of the test's own, so a shared Redis is never flushed;
``KVSESSION_TEST_SQL_TABLE``
    for a SQLAlchemy URL, the fresh table the test made (store URLs cannot name
    one, so :class:`~wsgi_kvsession.stores.sqlalchemy.SQLAlchemyStore` is built
    with ``table=``);
``KVSESSION_TEST_SIGNAL_DIR``
    where ``/slow-set`` meets the test (see below);
``KVSESSION_TEST_BREAK`` (optional)
    wraps the store in :class:`BrokenStore` so the tests can show that they
    catch what they look for: ``blind-writes`` (updates ignore the version, as
    a plain ``SET`` does) or ``upsert`` (an update of a missing record creates it).

Both variants have the same routes, each answering JSON with the worker's PID:

``/set?k=K&v=V[&delay=S]``
    ``session[K] = V``; with ``delay`` the session is loaded first and the
    write comes ``S`` seconds later, to widen the window in which parallel
    requests all hold the same version.
``/get``
    the session's data.
``/logout``
    destroys the session.
``/slow-set?k=K&v=V&token=T`` (or ``&sleep=S``)
    loads the session, then creates ``loaded-T`` in the signal directory and
    waits (at most ``SIGNAL_TIMEOUT``) for the test to create ``go-T``, then sets
    the key: so a logout can run exactly between this request's read and its write.
``/pid``
    the worker's PID, after a short pause (so parallel calls spread over the workers).

Nothing here imports pytest: it runs inside gunicorn.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response

from wsgi_kvsession import KVSessionMiddleware, get_session
from wsgi_kvsession.stores import Store, store_from_url
from wsgi_kvsession.stores.base import Record, Version

#: The longest ``/slow-set`` waits for the test's go signal.
SIGNAL_TIMEOUT = 20.0
#: Upper bound of the ``delay`` and ``sleep`` parameters (a typo cannot hang a worker).
MAX_SLEEP = 5.0
#: How long ``/pid`` pauses.
PID_PAUSE = 0.1

# The package logs merge retries and dropped writes at WARNING; the test puts the
# server's log into its failure message, so show them with the worker's PID.
logging.basicConfig(
    level=logging.WARNING, format="[%(process)d] %(levelname)s %(name)s: %(message)s"
)

SessionLike = Any  # wsgi_kvsession.Session or Flask's KVSession: the same mapping API


def build_store(url: str, table: str | None = None) -> Store:
    """The store at ``url``; for a SQLAlchemy URL, in ``table`` when given."""
    if table:
        from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore

        return SQLAlchemyStore(url, table=table)
    return store_from_url(url)


class BrokenStore(Store):
    """A store that breaks one rule on purpose (the tests' self-check).

    ``blind-writes``: an update ignores the version it is given, so a request
    overwrites whatever was saved since it loaded, as Flask-Session's ``SET``
    does (rule 11 broken). ``upsert``: an update of a missing record inserts it,
    so a request in flight writes back a destroyed session (rule 10 broken).
    """

    MODES = ("blind-writes", "upsert")

    def __init__(self, inner: Store, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"KVSESSION_TEST_BREAK={mode!r}: one of {self.MODES}")
        self.inner = inner
        self.mode = mode

    def __repr__(self) -> str:
        return f"BrokenStore({self.inner!r}, {self.mode!r})"

    def load(self, key: str) -> Record | None:
        return self.inner.load(key)

    # Keyword options of the protocol (e.g. ``user=`` for the per-user index)
    # are passed through as they come.
    def insert(self, key: str, value: bytes, expires_at: float, **options: Any) -> bool:
        return self.inner.insert(key, value, expires_at, **options)

    def update(
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        **options: Any,
    ) -> bool:
        if self.mode == "blind-writes":
            return self.inner.update(key, value, expires_at, **options)
        return self.inner.update(key, value, expires_at, version, **options) or (
            self.inner.insert(key, value, expires_at, **options)
        )

    def delete(self, key: str, version: Version | None = None) -> bool:
        return self.inner.delete(key, version)

    def touch(self, key: str, expires_at: float) -> bool:
        return self.inner.touch(key, expires_at)

    def close(self) -> None:
        self.inner.close()


class UnknownRoute(Exception):
    """No such route (a 404; a missing query parameter stays a 500)."""


def env_store() -> tuple[Store, str]:
    """The store and key prefix the parent test put in the environment (also the soak's)."""
    store = build_store(
        os.environ["KVSESSION_TEST_STORE_URL"], os.environ.get("KVSESSION_TEST_SQL_TABLE")
    )
    broken = os.environ.get("KVSESSION_TEST_BREAK")
    if broken:
        store = BrokenStore(store, broken)
    return store, os.environ["KVSESSION_TEST_KEY_PREFIX"]


def _seconds(raw: str | None) -> float:
    return min(max(float(raw or 0), 0.0), MAX_SLEEP)


def _wait_for_go(token: str) -> None:
    """Say this request has loaded its session; wait for the test to let it go on."""
    if not token.isalnum():
        raise ValueError(f"token {token!r}: letters and digits only")
    signal_dir = Path(os.environ["KVSESSION_TEST_SIGNAL_DIR"])
    (signal_dir / f"loaded-{token}").touch()
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while not (signal_dir / f"go-{token}").exists():
        if time.monotonic() > deadline:
            # A 500 persists nothing: the test sees the status and fails, rather
            # than passing because the racing write never happened.
            raise RuntimeError(f"/slow-set: no go signal for {token} in {SIGNAL_TIMEOUT}s")
        time.sleep(0.01)


def handle(path: str, args: dict[str, str], session: SessionLike) -> dict[str, Any]:
    """One route, on ``session`` (the same code for both variants)."""
    reply: dict[str, Any] = {"pid": os.getpid()}
    if path == "/set":
        delay = _seconds(args.get("delay"))
        if delay:
            session.get(args["k"])  # load now, write after the delay
            time.sleep(delay)
        session[args["k"]] = args["v"]
    elif path == "/get":
        reply["data"] = dict(session)
    elif path == "/logout":
        session.destroy()
    elif path == "/slow-set":
        session.get(args["k"])  # the record's version is now this request's
        if "token" in args:
            _wait_for_go(args["token"])
        else:
            time.sleep(_seconds(args.get("sleep")))
        session[args["k"]] = args["v"]
    elif path == "/pid":
        time.sleep(PID_PAUSE)
    else:
        raise UnknownRoute(path)
    return reply


def make_wsgi_app() -> KVSessionMiddleware:
    """The raw WSGI variant: a Werkzeug handler under :class:`KVSessionMiddleware`."""
    store, key_prefix = env_store()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            body = handle(request.path, dict(request.args), get_session(environ))
        except UnknownRoute:
            response = Response("not found", status=404)
        else:
            response = Response(json.dumps(body), mimetype="application/json")
        return response(environ, start_response)

    return KVSessionMiddleware(app, store, key_prefix=key_prefix, cookie_secure=False)


def make_flask_app() -> Any:
    """The Flask variant: the same routes, ``flask.session`` through ``init_app``."""
    from flask import Flask, abort, request, session

    from wsgi_kvsession.integrations.flask import init_app

    store, key_prefix = env_store()
    app = Flask(__name__)

    @app.route("/<name>")
    def route(name: str) -> dict[str, Any]:
        try:
            return handle(f"/{name}", dict(request.args), session)
        except UnknownRoute:
            abort(404)

    init_app(app, store, key_prefix=key_prefix, cookie_secure=False)
    return app
