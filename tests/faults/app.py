"""The app the fault tests serve with gunicorn (``tests.faults.app:make_app()``).

Each worker builds its store from the environment (the test passes it through
:class:`tests.http.harness.GunicornServer`, which writes it to gunicorn's
``raw_env``):

``FAULTS_STORE``
    ``redis``, ``memcached`` or ``postgresql``;
``FAULTS_STORE_URL``
    the server (for PostgreSQL without a password: the URL is in gunicorn's
    config file, mode 0600);
``FAULTS_TIMEOUT``
    the store's ``timeout`` in seconds;
``FAULTS_KEY_PREFIX``
    a random key prefix of the test's own;
``FAULTS_SQL_TABLE``
    for PostgreSQL, the fresh table the test created;
``FAULTS_ON_STORE_ERROR``
    the middleware's ``on_store_error`` (``raise`` or ``empty``);
``FAULTS_CATCH``
    ``1``: an outer handler turns an exception into a 500 whose JSON body
    names the worker and the error, as a framework's error page would (the
    test then knows which worker failed); otherwise the exception reaches
    gunicorn, which answers its own 500 and logs the traceback.

Routes, each answering JSON with the worker's PID:

``/pid``
    never touches the session (and pauses briefly, so that parallel calls
    spread over the workers);
``/set?k=K&v=V``
    ``session[K] = V``;
``/get``
    the session's data, and whether it is new.

Nothing here imports pytest: it runs inside gunicorn.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from werkzeug.wrappers import Request, Response

from wsgi_kvsession import KVSessionMiddleware, get_session
from wsgi_kvsession.stores import Store

#: How long ``/pid`` pauses.
PID_PAUSE = 0.05

log = logging.getLogger("tests.faults.app")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def build_store(kind: str, url: str, timeout: float, table: str | None = None) -> Store:
    """The store of ``kind`` at ``url`` with ``timeout`` (also used by the tests)."""
    if kind == "redis":
        from wsgi_kvsession.stores.redis import RedisStore

        return RedisStore(url, timeout=timeout)
    if kind == "memcached":
        from wsgi_kvsession.stores.memcache import MemcacheStore

        return MemcacheStore(url, timeout=timeout)
    if kind == "postgresql":
        from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore

        return SQLAlchemyStore(url, table=table or "kvsession", timeout=timeout, auto_create=False)
    raise ValueError(f"FAULTS_STORE={kind!r}: redis, memcached or postgresql")


def store_error_policy(text: str) -> Literal["raise", "empty"]:
    """``text`` as a value of the ``on_store_error`` option."""
    if text == "raise":
        return "raise"
    if text == "empty":
        return "empty"
    raise ValueError(f"on_store_error={text!r}: 'raise' or 'empty'")


def _routes(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    request = Request(environ)
    reply: dict[str, Any] = {"pid": os.getpid()}
    if request.path == "/pid":
        time.sleep(PID_PAUSE)
    elif request.path == "/set":
        get_session(environ)[request.args["k"]] = request.args["v"]
    elif request.path == "/get":
        session = get_session(environ)
        reply["data"] = dict(session)
        reply["new"] = session.new
    else:
        return Response("not found", status=404)(environ, start_response)
    return Response(json.dumps(reply), mimetype="application/json")(environ, start_response)


def _catching(app: WSGIApp) -> WSGIApp:
    """Turn an exception into a 500 naming the worker and the error (an error page)."""

    def wrapper(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            body = list(app(environ, start_response))
        except Exception as exc:
            log.exception("request failed")
            reply = {"pid": os.getpid(), "error": type(exc).__name__, "message": str(exc)}
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "application/json")],
                sys.exc_info(),
            )
            return [json.dumps(reply).encode()]
        return body

    return wrapper


def make_app() -> WSGIApp:
    """The app of one gunicorn worker (its log goes to gunicorn's, with the PID)."""
    logging.basicConfig(
        level=logging.WARNING, format="[%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    env = os.environ
    store = build_store(
        env["FAULTS_STORE"],
        env["FAULTS_STORE_URL"],
        float(env["FAULTS_TIMEOUT"]),
        env.get("FAULTS_SQL_TABLE"),
    )
    policy = store_error_policy(env.get("FAULTS_ON_STORE_ERROR", "raise"))
    app: WSGIApp = KVSessionMiddleware(
        _routes,
        store,
        key_prefix=env["FAULTS_KEY_PREFIX"],
        cookie_secure=False,
        on_store_error=policy,
    )
    if env.get("FAULTS_CATCH") == "1":
        app = _catching(app)
    return app
