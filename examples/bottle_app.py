"""wsgi_kvsession with Bottle: ``get_session(bottle.request.environ)``.

Bottle has no server-side sessions; wrap the Bottle app in the middleware and
read the session from the request's environ. Run it from the repository root::

    python examples/bottle_app.py       # http://127.0.0.1:8002/

Routes: ``/`` shows the visitor's name; ``POST /name`` sets it (``name`` form
field) and regenerates the session ID; ``POST /logout`` destroys the session.
"""

from __future__ import annotations

import html
import os

import bottle

from wsgi_kvsession import KVSessionMiddleware, Session, get_session
from wsgi_kvsession.stores import Store, store_from_url

app = bottle.Bottle()


def current_session() -> Session:
    return get_session(bottle.request.environ)


@app.get("/")
def index() -> str:
    name = current_session().get("name")
    greeting = f"Hello, {html.escape(name)}!" if name else "Hello, stranger."
    return (
        f"<!doctype html><title>Bottle</title><p>{greeting}</p>"
        '<form method="post" action="/name"><input name="name" maxlength="64">'
        "<button>That's me</button></form>"
        '<form method="post" action="/logout"><button>Log out</button></form>'
    )


@app.post("/name")
def set_name() -> None:
    session = current_session()
    session.regenerate()  # a change of identity gets a new session ID
    session["name"] = (bottle.request.forms.getunicode("name") or "").strip()[:64]
    bottle.redirect("/", 303)


@app.post("/logout")
def logout() -> None:
    current_session().destroy()
    bottle.redirect("/", 303)


def make_app(store: Store | None = None, **options: object) -> KVSessionMiddleware:
    """The Bottle app inside the session middleware."""
    if store is None:
        store = store_from_url(os.environ.get("KVSESSION_STORE_URL", "sqlite:///sessions.db"))
    return KVSessionMiddleware(app, store, **options)  # type: ignore[arg-type]


if __name__ == "__main__":
    # cookie_secure=False: the development server speaks plain http://.
    bottle.run(make_app(cookie_secure=False), host="127.0.0.1", port=8002)
