"""A small raw-WSGI app on wsgi_kvsession: counts visits per session.

Run it from the repository root::

    python examples/wsgi_counter.py                 # http://127.0.0.1:8000/
    python examples/wsgi_counter.py --port 8080 --store memory://

Routes:

``/``
    shows and increments ``session["visits"]``.
``/login?user=NAME``
    sets ``session["user"]`` and calls ``session.regenerate()`` (a new session ID on a
    privilege change), then redirects to ``/``.
``/logout``
    calls ``session.destroy()`` and redirects to ``/``.

Any other path answers 404 without touching the session, so it costs no store call and
sets no cookie.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server

from wsgi_kvsession import KVSessionMiddleware, get_session
from wsgi_kvsession.stores import store_from_url

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>wsgi_kvsession counter</title></head>
<body>
<h1>wsgi_kvsession counter</h1>
<p>{greeting}</p>
<p>You have visited this page <strong>{visits}</strong> time(s) in this session.</p>
<form action="/login" method="get">
  <label>User name <input name="user" required maxlength="64"></label>
  <button>Log in</button>
</form>
<p><a href="/">Reload</a> &middot; <a href="/logout">Log out (destroy the session)</a></p>
</body>
</html>
"""


def _respond(
    start_response: StartResponse,
    status: str,
    body: str,
    extra_headers: list[tuple[str, str]] | None = None,
) -> Iterable[bytes]:
    data = body.encode("utf-8")
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(data))),
        *(extra_headers or []),
    ]
    start_response(status, headers)
    return [data]


def _redirect_home(start_response: StartResponse) -> Iterable[bytes]:
    return _respond(start_response, "303 See Other", "", [("Location", "/")])


def counter_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The plain WSGI app; KVSessionMiddleware puts the session into ``environ``."""
    path = environ.get("PATH_INFO", "/") or "/"

    if path == "/":
        session = get_session(environ)
        visits = int(session.get("visits", 0)) + 1
        session["visits"] = visits
        user = session.get("user")
        greeting = f"Hello, {html.escape(str(user))}!" if user else "You are not logged in."
        return _respond(start_response, "200 OK", PAGE.format(greeting=greeting, visits=visits))

    if path == "/login":
        # A state change on GET keeps the example short; a real app would use POST + CSRF.
        query = parse_qs(environ.get("QUERY_STRING", ""))
        user = query.get("user", [""])[0].strip()
        if not user:
            return _respond(
                start_response, "400 Bad Request", "<p>Missing <code>?user=NAME</code>.</p>"
            )
        session = get_session(environ)
        session["user"] = user[:64]
        session.regenerate()  # new ID on login: defeats session fixation
        return _redirect_home(start_response)

    if path == "/logout":
        get_session(environ).destroy()  # record deleted, cookie expired
        return _redirect_home(start_response)

    return _respond(start_response, "404 Not Found", f"<p>Not found: {html.escape(path)}</p>")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="wsgi_kvsession visit counter (dev server)")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (8000)")
    parser.add_argument(
        "--store",
        default="sqlite:///sessions.db",
        help="store URL (default: sqlite:///sessions.db in the working directory)",
    )
    args = parser.parse_args(argv)

    store = store_from_url(args.store)
    # cookie_secure=False only because this dev server speaks plain http://127.0.0.1:
    # browsers drop Secure cookies on http:// except for localhost. Development only;
    # keep the default (cookie_secure=True) behind HTTPS in production.
    app = KVSessionMiddleware(counter_app, store, cookie_secure=False)

    with make_server("127.0.0.1", args.port, app) as server:
        print(f"Serving on http://127.0.0.1:{args.port}/ (store: {args.store}); Ctrl-C to stop")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("\nStopped.")
        finally:
            store.close()


if __name__ == "__main__":
    main()
