"""One session for Flask, Pyramid, Django and plain WSGI apps on one domain.

A single :class:`~wsgi_kvsession.KVSessionMiddleware` wraps a Werkzeug
``DispatcherMiddleware`` that mounts a Flask app at ``/flask``, a Pyramid app at
``/pyramid``, a Django app at ``/django`` and a plain WSGI page at ``/``. Each
framework's integration reads the session the middleware put in the environ,
so a user who logs in on the Flask part is logged in on all of them, a cart
filled in Pyramid is seen by Django, and logging out anywhere logs out
everywhere. The middleware owns the one session cookie.

Run it from the repository root::

    python examples/mixed_app.py       # http://127.0.0.1:8003/

Each part has ``/whoami``, ``/cart`` and ``/add?item=NAME``; the Flask part has
``/login?user=NAME`` (a real app would take a password, by POST), and every part
has ``/logout``. (GET for all of them only to keep the demo clickable: make
state changes POST with a CSRF token in a real app.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from flask import Flask, jsonify, request, session
from pyramid.config import Configurator
from pyramid.request import Request as PyramidRequest
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from wsgi_kvsession import KVSessionMiddleware, get_session
from wsgi_kvsession.integrations.flask import KVSessionInterface
from wsgi_kvsession.stores import Store, store_from_url

#: The Django middleware that hands Django the WSGI middleware's session.
DJANGO_SESSION_MIDDLEWARE = "wsgi_kvsession.integrations.django.SessionMiddleware"
MAX_CART_ITEMS = 20


def _add_to_cart(cart: list[str], item: str) -> None:
    if item:
        cart.append(item[:40])
        del cart[:-MAX_CART_ITEMS]


# -- Flask: login, and the cart -----------------------------------------------

flask_app = Flask(__name__)
flask_app.session_interface = KVSessionInterface()  # the site's middleware governs


@flask_app.get("/login")
def flask_login() -> Any:
    session.regenerate()  # type: ignore[attr-defined]  # a new ID at login
    session["user"] = request.args.get("user", "")[:40]
    return jsonify(user=session["user"])


@flask_app.get("/whoami")
def flask_whoami() -> Any:
    return jsonify(user=session.get("user"))


@flask_app.get("/add")
def flask_add() -> Any:
    _add_to_cart(session.setdefault("cart", []), request.args.get("item", ""))
    return jsonify(cart=session["cart"])


@flask_app.get("/cart")
def flask_cart() -> Any:
    return jsonify(cart=session.get("cart", []))


@flask_app.get("/logout")
def flask_logout() -> Any:
    session.destroy()  # type: ignore[attr-defined]
    return jsonify(user=None)


# -- Pyramid ------------------------------------------------------------------


def _pyramid_app() -> Any:
    def whoami(req: PyramidRequest) -> dict[str, Any]:
        return {"user": req.session.get("user")}

    def add(req: PyramidRequest) -> dict[str, Any]:
        cart = req.session.setdefault("cart", [])
        _add_to_cart(cart, req.params.get("item", ""))
        return {"cart": cart}

    def cart(req: PyramidRequest) -> dict[str, Any]:
        return {"cart": req.session.get("cart", [])}

    def logout(req: PyramidRequest) -> dict[str, Any]:
        req.session.invalidate()
        return {"user": None}

    with Configurator() as config:
        config.include("wsgi_kvsession.integrations.pyramid")  # no settings: the site's
        for name, view in [("whoami", whoami), ("add", add), ("cart", cart), ("logout", logout)]:
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name, renderer="json")
        return config.make_wsgi_app()


# -- Django -------------------------------------------------------------------


def _json(data: dict[str, Any]) -> HttpResponse:
    return HttpResponse(json.dumps(data), content_type="application/json")


def django_whoami(request: HttpRequest) -> HttpResponse:
    return _json({"user": request.session.get("user")})


def django_add(request: HttpRequest) -> HttpResponse:
    cart = request.session.setdefault("cart", [])
    _add_to_cart(cart, request.GET.get("item", ""))
    return _json({"cart": cart})


def django_cart(request: HttpRequest) -> HttpResponse:
    return _json({"cart": request.session.get("cart", [])})


def django_logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return _json({"user": None})


#: This module is the Django project's URLconf.
urlpatterns = [
    path("whoami", django_whoami),
    path("add", django_add),
    path("cart", django_cart),
    path("logout", django_logout),
]


def configure_django() -> None:
    """Settings for the Django part, unless the process has configured Django."""
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "mixed-demo-" + "x" * 40),
            ALLOWED_HOSTS=["127.0.0.1", "localhost"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[DJANGO_SESSION_MIDDLEWARE],
            INSTALLED_APPS=[],
            LOGGING_CONFIG=None,
        )
        django.setup()


# -- the site -------------------------------------------------------------------


def index(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A plain WSGI page: what the session holds, for every part to see."""
    session = get_session(environ)
    body = json.dumps({"user": session.get("user"), "cart": session.get("cart", [])})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


def make_site(store: Store | None = None, **options: Any) -> KVSessionMiddleware:
    """The four apps under one dispatcher, inside one session middleware."""
    configure_django()
    from django.core.wsgi import get_wsgi_application

    if store is None:
        store = store_from_url(os.environ.get("KVSESSION_STORE_URL", "sqlite:///sessions.db"))
    dispatcher = DispatcherMiddleware(
        index,
        {
            "/flask": flask_app.wsgi_app,
            "/pyramid": _pyramid_app(),
            "/django": get_wsgi_application(),
        },
    )
    return KVSessionMiddleware(dispatcher, store, **options)


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    # cookie_secure=False: the development server speaks plain http://.
    with make_server("127.0.0.1", 8003, make_site(cookie_secure=False)) as server:
        print("Serving on http://127.0.0.1:8003/; Ctrl-C to stop")
        server.serve_forever()
