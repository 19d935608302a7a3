"""The demo app of ``wsgi-kvsession demo``: sessions at work, in one small file.

Plain WSGI with Werkzeug's routing, ``Request`` and ``Response`` (no framework),
wrapped in :class:`~wsgi_kvsession.KVSessionMiddleware`. Pages:

``/``
    what the session holds, and a visit count.
``/login`` (POST)
    any user name with the demo password: ``session.regenerate()`` (a new ID on
    login defeats session fixation), then ``session.user_id = name``.
``/cart`` (POST)
    add or remove items: a nested mutation, ``session["cart"].append(item)``.
``/sessions``
    the user's active sessions (``SessionManager.sessions_of``), each with a
    "revoke" button, and "log out everywhere" (``revoke_user``).
``/logout`` (POST)
    ``session.destroy()``.

Flash messages live in the session and are shown once. Every POST carries a
CSRF token kept in the session.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from . import KVSessionMiddleware, Session, get_session
from .admin import SessionInfo, SessionManager
from .stores.base import Store

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Any user name logs in with this password: the demo has no user database.
DEMO_PASSWORD = "demo"  # noqa: S105 - shown on the page on purpose

_URLS = Map(
    [
        Rule("/", endpoint="index", methods=["GET"]),
        Rule("/login", endpoint="login", methods=["POST"]),
        Rule("/cart", endpoint="cart", methods=["POST"]),
        Rule("/sessions", endpoint="sessions", methods=["GET"]),
        Rule("/sessions/revoke", endpoint="revoke", methods=["POST"]),
        Rule("/sessions/revoke-all", endpoint="revoke_all", methods=["POST"]),
        Rule("/logout", endpoint="logout", methods=["POST"]),
    ]
)

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>wsgi_kvsession demo</title>
<style>body {{ font-family: sans-serif; max-width: 46rem; margin: 2rem auto; }}
.flash {{ background: #ffd; padding: .5rem; }} td, th {{ padding: .2rem .6rem; text-align: left; }}
form.inline {{ display: inline; }}</style></head>
<body>
<h1><a href="/">wsgi_kvsession demo</a></h1>
{flashes}
{body}
</body>
</html>
"""


class DemoApp:
    """The WSGI app; :func:`make_app` wraps it in the session middleware."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, _ = _URLS.bind_to_environ(environ).match()
            session = get_session(environ)
            if request.method == "POST":
                _check_csrf(request, session)
            response: Response = getattr(self, f"on_{endpoint}")(request, session)
        except HTTPException as exc:
            response = exc.get_response(environ)
        return response(environ, start_response)

    # -- pages ------------------------------------------------------------

    def on_index(self, request: Request, session: Session) -> Response:
        session["visits"] = session.get("visits", 0) + 1
        user = session.user_id
        if user is None:
            who = f"""<p>You are not logged in.</p>
<form method="post" action="/login">{_csrf_field(session)}
  <label>User name <input name="user" required maxlength="64"></label>
  <label>Password <input name="password" type="password" required></label>
  <button>Log in</button></form>
<p>Any user name works; the password is <code>{DEMO_PASSWORD}</code>.</p>"""
        else:
            who = f"""<p>Logged in as <strong>{escape(str(user))}</strong>.
<a href="/sessions">Your sessions</a>.</p>
<form method="post" action="/logout">{_csrf_field(session)}<button>Log out</button></form>"""
        items = "".join(
            f"""<li>{escape(str(item))} <form class="inline" method="post" action="/cart">
{_csrf_field(session)}<input type="hidden" name="remove" value="{escape(str(item))}">
<button>remove</button></form></li>"""
            for item in session.get("cart", [])
        )
        cart = f"""<h2>Cart</h2><ul>{items or "<li>(empty)</li>"}</ul>
<form method="post" action="/cart">{_csrf_field(session)}
  <input name="add" required maxlength="64" placeholder="an item"><button>Add</button></form>"""
        held = {key: value for key, value in session.items() if key != "csrf"}
        body = f"""{who}
<p>Visits in this session: <strong>{session["visits"]}</strong>.</p>
{cart}
<h2>What the session holds</h2>
<pre>{escape(repr(held))}</pre>
<p>The browser holds only a random ID in its cookie; this data lives in the store.</p>"""
        return _page(session, body)

    def on_login(self, request: Request, session: Session) -> Response:
        user = request.form.get("user", "").strip()[:64]
        password = request.form.get("password", "")
        if not user or not hmac.compare_digest(password.encode(), DEMO_PASSWORD.encode()):
            _flash(session, "Wrong user name or password.")
            return redirect("/", 303)
        session.regenerate()  # a new ID on login: an ID planted before cannot ride along
        session.user_id = user
        session["csrf"] = secrets.token_urlsafe(32)  # a new token with the new privilege
        _flash(session, f"Welcome, {user}! Your session ID was regenerated.")
        return redirect("/", 303)

    def on_cart(self, request: Request, session: Session) -> Response:
        item = request.form.get("add", "").strip()[:64]
        if item:
            session.setdefault("cart", [])
            session["cart"].append(item)  # a nested mutation: saved all the same
            _flash(session, f"Added {item}.")
        removed = request.form.get("remove")
        if removed is not None and removed in session.get("cart", []):
            session["cart"].remove(removed)
            _flash(session, f"Removed {removed}.")
        return redirect("/", 303)

    def on_sessions(self, request: Request, session: Session) -> Response:
        user = session.user_id
        if user is None:
            _flash(session, "Log in to see your sessions.")
            return redirect("/", 303)
        try:
            sessions = self.manager.sessions_of(user)
        except NotImplementedError:
            return _page(session, "<p>This store cannot list sessions (memcached).</p>")
        current = self.manager.key_hash(session.id) if session.id else None
        rows = "".join(_session_row(info, info.key_hash == current, session) for info in sessions)
        body = f"""<h2>Active sessions of {escape(str(user))}</h2>
<table><tr><th>Session (key hash)</th><th>Created</th><th>Expires</th><th></th></tr>
{rows}</table>
<form method="post" action="/sessions/revoke-all">{_csrf_field(session)}
  <button>Log out everywhere</button></form>"""
        return _page(session, body)

    def on_revoke(self, request: Request, session: Session) -> Response:
        user = session.user_id
        key_hash = request.form.get("key_hash", "")
        if user is None:
            return redirect("/", 303)
        if session.id is not None and key_hash == self.manager.key_hash(session.id):
            session.destroy()  # revoking this very session is logging out
            _flash(session, "This session was revoked: you are logged out.")
            return redirect("/", 303)
        # Only a session of this user: a key hash is no licence to end others'.
        if any(info.key_hash == key_hash for info in self.manager.sessions_of(user)):
            self.manager.revoke_by_hash(key_hash)
            _flash(session, "Session revoked: that browser is logged out.")
        return redirect("/sessions", 303)

    def on_revoke_all(self, request: Request, session: Session) -> Response:
        user = session.user_id
        if user is not None:
            session.destroy()
            count = self.manager.revoke_user(user)
            _flash(session, f"Logged out everywhere ({count + 1} session(s) ended).")
        return redirect("/", 303)

    def on_logout(self, request: Request, session: Session) -> Response:
        session.destroy()  # the record goes now, the cookie with this response
        _flash(session, "Logged out: the session was destroyed.")  # starts a new one
        return redirect("/", 303)


def make_app(store: Store, *, key_prefix: str = "session:") -> WSGIApplication:
    """The demo app on ``store``, wrapped in the session middleware."""
    app = DemoApp(SessionManager(store, key_prefix=key_prefix))
    # cookie_secure=False only because the demo speaks plain http on 127.0.0.1:
    # a Secure cookie would not come back over http. Keep the default (True)
    # behind HTTPS in anything real.
    return KVSessionMiddleware(app, store, cookie_secure=False, key_prefix=key_prefix)


# -- helpers -----------------------------------------------------------------


def _csrf_token(session: Session) -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(_csrf_token(session))}">'


def _check_csrf(request: Request, session: Session) -> None:
    expected = session.get("csrf")
    sent = request.form.get("csrf", "")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise BadRequest("CSRF token missing or wrong: reload the page and try again.")


def _flash(session: Session, message: str) -> None:
    session.setdefault("flashes", [])
    session["flashes"].append(message)


def _page(session: Session, body: str) -> Response:
    # Shown once: popped from the session as the page that shows them renders.
    flashes: list[Any] = session.pop("flashes", [])
    shown = "".join(f'<p class="flash">{escape(str(message))}</p>' for message in flashes)
    html = _PAGE.format(flashes=shown, body=body)
    return Response(html, content_type="text/html; charset=utf-8")


def _session_row(info: SessionInfo, current: bool, session: Session) -> str:
    label = " <strong>(this session)</strong>" if current else ""
    return f"""<tr><td><code>{info.key_hash[:12]}…</code>{label}</td>
<td>{info.created:%Y-%m-%d %H:%M:%S}Z</td><td>{info.expires_at:%Y-%m-%d %H:%M:%S}Z</td>
<td><form class="inline" method="post" action="/sessions/revoke">{_csrf_field(session)}
<input type="hidden" name="key_hash" value="{info.key_hash}">
<button>revoke</button></form></td></tr>"""
