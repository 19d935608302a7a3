"""wsgi_kvsession with WebOb: the session is ``get_session(request.environ)``.

WebOb has no sessions of its own; any WebOb-based app (and frameworks built on
it) reads the middleware's session from the request's environ. Run it from the
repository root::

    python examples/webob_app.py        # http://127.0.0.1:8001/

Routes: ``/`` shows the notes kept in the session; ``POST /notes`` adds one
(``text`` form field); ``POST /logout`` destroys the session.
"""

from __future__ import annotations

import html
import os
from wsgiref.simple_server import make_server

from webob import Request, Response
from webob.dec import wsgify
from webob.exc import HTTPNotFound, HTTPSeeOther

from wsgi_kvsession import KVSessionMiddleware, Session, get_session
from wsgi_kvsession.stores import Store, store_from_url

#: Notes are session data, and session data should stay small.
MAX_NOTES = 20


@wsgify
def notes_app(request: Request) -> Response:
    session: Session = get_session(request.environ)
    if request.path_info == "/" and request.method == "GET":
        items = "".join(f"<li>{html.escape(note)}</li>" for note in session.get("notes", []))
        return Response(
            "<!doctype html><title>Notes</title>"
            f"<ul>{items}</ul>"
            '<form method="post" action="/notes"><input name="text" maxlength="200">'
            "<button>Add</button></form>"
            '<form method="post" action="/logout"><button>Forget me</button></form>'
        )
    if request.path_info == "/notes" and request.method == "POST":
        text = request.POST.get("text", "").strip()[:200]
        if text:
            notes = session.setdefault("notes", [])
            notes.append(text)  # a nested change: saved without any flag
            del notes[:-MAX_NOTES]
        return HTTPSeeOther(location="/")
    if request.path_info == "/logout" and request.method == "POST":
        session.destroy()
        return HTTPSeeOther(location="/")
    return HTTPNotFound()  # never touches the session: no store call, no cookie


def make_app(store: Store | None = None, **options: object) -> KVSessionMiddleware:
    """The WebOb app inside the session middleware."""
    if store is None:
        store = store_from_url(os.environ.get("KVSESSION_STORE_URL", "sqlite:///sessions.db"))
    return KVSessionMiddleware(notes_app, store, **options)  # type: ignore[arg-type]


if __name__ == "__main__":
    # cookie_secure=False: the development server speaks plain http://.
    with make_server("127.0.0.1", 8001, make_app(cookie_secure=False)) as server:
        print("Serving on http://127.0.0.1:8001/; Ctrl-C to stop")
        server.serve_forever()
