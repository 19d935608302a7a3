"""The app the soak test serves with gunicorn: a raw WSGI app under the middleware.

gunicorn imports this module in each worker (``tests.soak.app:make_app()``); the
test passes the store through the environment, under the same names as the
HTTP tests' app (:mod:`tests.http.app_under_test`, whose ``env_store`` (with its
``BrokenStore``) this reuses):

``KVSESSION_TEST_STORE_URL``
    the store URL; for Redis and PostgreSQL it names the connections
    (``client_name=``, ``application_name=``) so the test can count them;
``KVSESSION_TEST_KEY_PREFIX``
    the test's random key prefix (a shared Redis is never flushed);
``KVSESSION_TEST_SQL_TABLE``
    for a SQLAlchemy URL, the fresh table the test made;
``KVSESSION_TEST_BREAK`` (optional)
    ``blind-writes`` or ``upsert``: the store breaks a rule on purpose, so the
    self-checks can show that the soak catches lost writes and resurrections.

Every route answers JSON. The load client needs to know *when*, on the server,
things happened, to tell a lost write from one that raced a logout or a login
by design: so each response carries ``X-Soak-Committed``, the
``time.monotonic()`` (one clock for every process of the machine) taken after
the middleware has saved the session, and the lifecycle routes report when
they loaded the session and when they called ``regenerate()``/``destroy()``.

``/untouched``
    never touches the session.
``/read``
    the session's data.
``/write?k=K&v=V[&delay=S]``
    loads the session, waits ``S`` seconds (at most ``MAX_SLEEP``: a window
    for parallel requests of the session to collide in), sets ``K = V``.
``/del?k=K[&delay=S]``
    the same, but deletes ``K``.
``/regenerate?k=K&v=V[&delay=S]``
    a login: loads the session, "checks a password" for ``S`` seconds, calls
    ``regenerate()``, sets ``K = V``. Reports ``loaded_at`` and ``changed_at``.
``/destroy``
    a logout: ``destroy()``. Reports ``loaded_at`` and ``changed_at``.
``/pid``
    the worker's PID after a short pause (the harness's warm-up uses it).

Nothing here imports pytest: it runs inside gunicorn.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from wsgi_kvsession import KVSessionMiddleware, Session, get_session

from ..http.app_under_test import PID_PAUSE, env_store

#: The longest a ``delay`` parameter may make a request wait.
MAX_SLEEP = 1.0
#: The response header with the server's monotonic time after the session was saved.
COMMITTED_HEADER = "X-Soak-Committed"
PID_HEADER = "X-Soak-Pid"

logging.basicConfig(
    level=logging.WARNING, format="[%(process)d] %(levelname)s %(name)s: %(message)s"
)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class UnknownRoute(Exception):
    """No such route (a 404)."""


def _delay(args: dict[str, str]) -> None:
    seconds = min(max(float(args.get("delay") or 0), 0.0), MAX_SLEEP)
    if seconds:
        time.sleep(seconds)


def handle(path: str, args: dict[str, str], session: Session) -> dict[str, Any]:
    """One route on ``session``: the reply's JSON body."""
    reply: dict[str, Any] = {"pid": os.getpid()}
    if path == "/untouched":
        pass
    elif path == "/read":
        reply["data"] = dict(session)
    elif path == "/write":
        session.get(args["k"])  # load now; write after the delay
        _delay(args)
        session[args["k"]] = args["v"]
    elif path == "/del":
        session.get(args["k"])
        _delay(args)
        session.pop(args["k"], None)
    elif path in ("/regenerate", "/destroy"):
        reply["loaded_at"] = time.monotonic()
        session.get("anchor")  # the record this request works on is loaded now
        _delay(args)  # a login checks a password meanwhile
        reply["changed_at"] = time.monotonic()
        if path == "/regenerate":
            session.regenerate()
            session[args["k"]] = args["v"]
        else:
            session.destroy()
    elif path == "/pid":
        time.sleep(PID_PAUSE)
    else:
        raise UnknownRoute(path)
    return reply


def stamp_commit(app: WSGIApp) -> WSGIApp:
    """Wrap the middleware so each response says when the session had been saved.

    The middleware calls the server's ``start_response`` only after it has
    saved the session, so the time taken here is after the store write.
    """

    def wrapper(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def stamped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [
                *headers,
                (COMMITTED_HEADER, repr(time.monotonic())),
                (PID_HEADER, str(os.getpid())),
            ]
            return start_response(status, headers, exc_info)

        return app(environ, stamped)

    return wrapper


def make_app() -> WSGIApp:
    """The app gunicorn serves: the routes above under :class:`KVSessionMiddleware`."""
    store, key_prefix = env_store()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            body = handle(request.path, dict(request.args), get_session(environ))
        except UnknownRoute:
            response = Response("not found", status=404)
        else:
            response = Response(json.dumps(body), mimetype="application/json")
        return response(environ, start_response)

    return stamp_commit(KVSessionMiddleware(app, store, key_prefix=key_prefix, cookie_secure=False))
