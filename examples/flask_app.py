"""A small Flask shop on wsgi_kvsession: log in, fill a cart, visit the admin page, log out.

Run it from the repository root, with the package, Flask-Login and bcrypt installed
(``pip install -e '.[flask]' flask-login bcrypt``)::

    python examples/flask_app.py                      # http://127.0.0.1:5000/
    KVSESSION_STORE_URL=redis://127.0.0.1:6379/0 python examples/flask_app.py
    flask --app examples/flask_app.py run             # Flask's CLI finds create_app()
    flask --app examples/flask_app.py kvsession stats

Demo users (kept in memory; only their bcrypt hashes are in this file):

=========  =======================  ========
user       password                 role
=========  =======================  ========
``alice``  ``alice-demo-password``  admin
``bob``    ``bob-demo-password``    customer
=========  =======================  ========

Environment variables:

``KVSESSION_STORE_URL``
    the session store (default ``sqlite:///flask_sessions.db`` in the working directory).
``FLASK_SECRET_KEY``
    signs the session cookie. Without it every start draws a random key, so the
    cookies of the previous run no longer verify (everyone logs in again). Several
    worker processes must share one key.
``FLASK_SESSION_COOKIE_SECURE``
    ``1`` behind HTTPS (production). The default ``0`` lets the development server
    work on plain ``http://127.0.0.1``.

Routes: ``/`` (the shop and the cart), ``/login``, ``/logout``, ``/admin``. Everything
that changes state is a POST form carrying a CSRF token kept in the session.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import bcrypt
from flask import (
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from werkzeug.wrappers import Response

from wsgi_kvsession.integrations.flask import init_app
from wsgi_kvsession.stores import Store

DEFAULT_STORE_URL = "sqlite:///flask_sessions.db"
#: A cart is session data, and session data should stay small.
MAX_CART_ITEMS = 50


@dataclass(frozen=True)
class User(UserMixin):
    id: int
    name: str
    password_hash: bytes
    is_admin: bool = False

    def get_id(self) -> str:
        return str(self.id)


# A real app keeps these in its database; the point here is that only bcrypt hashes
# are kept, never the passwords (which are in the module docstring, for the demo).
USERS = {
    user.name: user
    for user in (
        User(1, "alice", b"$2b$12$q7gJV0b/muB386FG6XAD3eViqBI/cW5CLPT267wTdJDMGnkHJIF9.", True),
        User(2, "bob", b"$2b$12$k7e7uDzGkOG1Dngf/EV5xeTKVv.SFcu.9lPS2DvoZRzelgO0V/lJ2"),
    )
}
USERS_BY_ID = {str(user.id): user for user in USERS.values()}
#: Checked against when the user name is unknown, so that a wrong name takes as long
#: as a wrong password and response times do not tell which user names exist.
_DUMMY_HASH = b"$2b$12$/gInSDCRC4/mu1EjTTLeDuOY/mSGKBp9rw1oXA6/VEqvKQw4.sHQK"

PRODUCTS = {
    "apple": ("Apple", "0.50"),
    "bread": ("Bread", "2.20"),
    "cheese": ("Cheese", "4.80"),
}


def check_password(name: str, password: str) -> User | None:
    """The user ``name`` if ``password`` is theirs, else None."""
    user = USERS.get(name)
    hashed = user.password_hash if user is not None else _DUMMY_HASH
    # bcrypt looks at 72 bytes at most (bcrypt 5 refuses longer input).
    matches = bcrypt.checkpw(password.encode("utf-8")[:72], hashed)
    return user if matches and user is not None else None


# -- templates -------------------------------------------------------------------

LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }} · wsgi_kvsession shop</title>
<style>
  body { font-family: sans-serif; max-width: 40rem; margin: 2rem auto; }
  .flash { padding: .4rem .6rem; border-radius: .3rem; }
  .flash.success { background: #dfd; } .flash.error { background: #fdd; }
  .flash.info { background: #def; }
  nav form { display: inline; }
</style>
</head>
<body>
<nav>
  <a href="{{ url_for('index') }}">Shop</a>
  {% if current_user.is_authenticated %}
    &middot; <a href="{{ url_for('admin') }}">Admin</a>
    &middot; signed in as <strong>{{ current_user.name }}</strong>
    <form method="post" action="{{ url_for('logout') }}">
      <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
      <button>Log out</button>
    </form>
  {% else %}
    &middot; <a href="{{ url_for('login') }}">Log in</a>
  {% endif %}
</nav>
{% for category, message in get_flashed_messages(with_categories=true) %}
  <p class="flash {{ category }}">{{ message }}</p>
{% endfor %}
<h1>{{ title }}</h1>
<!-- content -->
</body>
</html>
"""


def _page(body: str) -> str:
    """A whole page template: the layout around ``body``."""
    return LAYOUT.replace("<!-- content -->", body)


SHOP_PAGE = _page("""
<ul>
{% for pid, (name, price) in products.items() %}
  <li>{{ name }} ({{ price }})
    <form method="post" action="{{ url_for('cart_add') }}" style="display:inline">
      <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
      <input type="hidden" name="product" value="{{ pid }}">
      <button>Add to cart</button>
    </form>
  </li>
{% endfor %}
</ul>
<h2>Your cart</h2>
{% if cart %}
<ul id="cart">
  {% for pid, count in cart.items() %}
  <li>{{ count }} &times; {{ products[pid][0] }}
    <form method="post" action="{{ url_for('cart_remove') }}" style="display:inline">
      <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
      <input type="hidden" name="product" value="{{ pid }}">
      <button>Remove one</button>
    </form>
  </li>
  {% endfor %}
</ul>
{% else %}
<p id="cart">Your cart is empty.</p>
{% endif %}
""")

LOGIN_PAGE = _page("""
{% if request.args.get('logged_out') %}
  <p class="flash info">You have been logged out.</p>
{% endif %}
<form method="post" action="{{ url_for('login', next=request.args.get('next')) }}">
  <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
  <p><label>User name <input name="username" value="{{ username }}" required></label></p>
  <p><label>Password <input name="password" type="password" required></label></p>
  <p><label><input name="remember" type="checkbox" value="1"> Keep me signed in</label></p>
  <p><button>Log in</button></p>
</form>
""")

ADMIN_PAGE = _page("""
<p>Only admins see this page.</p>
<ul>
  <li>session created: {{ session.created.strftime('%Y-%m-%d %H:%M:%S UTC') }}</li>
  <li>permanent cookie: {{ 'yes' if session.permanent else 'no' }}</li>
  <li>session tied to user id: {{ session.user_id }}</li>
  <li>store: <code>{{ store }}</code></li>
</ul>
""")


# -- CSRF ----------------------------------------------------------------------


def csrf_token() -> str:
    """This session's CSRF token, made on first use (templates call it in each form)."""
    token = session.get("csrf_token")
    if not isinstance(token, str):
        token = session["csrf_token"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Refuse a POST whose form does not carry this session's CSRF token.

    The SameSite=Lax cookie already keeps most cross-site POSTs from carrying the
    session; the token covers older browsers and same-site subdomains.
    """
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf_token")
    if not isinstance(expected, str) or not hmac.compare_digest(
        sent.encode("utf-8"), expected.encode("utf-8")
    ):
        abort(400, description="Missing or wrong CSRF token: reload the page and try again.")


def _safe_next(target: str | None) -> str:
    """Where to go after login: only a path on this site (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("index")


# -- the app -----------------------------------------------------------------------


def create_app(
    store: Store | str | None = None, config: Mapping[str, Any] | None = None, **options: Any
) -> Flask:
    """The shop. ``store`` defaults to ``$KVSESSION_STORE_URL``; ``config`` updates
    ``app.config``; ``options`` go to :func:`~wsgi_kvsession.integrations.flask.init_app`
    (e.g. ``key_prefix``) and win over the config."""
    app = Flask(__name__)
    # False by default only so that the development server works on plain
    # http://127.0.0.1: browsers do not send a Secure cookie over plain http (some
    # make an exception for localhost). Set FLASK_SESSION_COOKIE_SECURE=1 in
    # production, behind HTTPS.
    secure = os.environ.get("FLASK_SESSION_COOKIE_SECURE", "0").lower() in ("1", "true", "yes")
    app.config.update(
        SECRET_KEY=os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32),
        SESSION_COOKIE_SECURE=secure,
        # Flask's default is no SameSite attribute at all; Lax keeps the cookie off
        # cross-site POSTs.
        SESSION_COOKIE_SAMESITE="Lax",
        # The server-side idle timeout of every session, and the cookie lifetime of a
        # permanent one ("Keep me signed in").
        PERMANENT_SESSION_LIFETIME=timedelta(days=7),
    )
    if config:
        app.config.update(config)
    init_app(app, store if store is not None else _store_url(), **options)

    login_manager = LoginManager(app)
    login_manager.login_view = "login"
    login_manager.login_message_category = "info"

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        return USERS_BY_ID.get(user_id)

    app.jinja_env.globals["csrf_token"] = csrf_token
    app.before_request(check_csrf)

    @app.get("/")
    def index() -> str:
        cart = Counter(session.get("cart", []))
        return render_template_string(SHOP_PAGE, title="Shop", products=PRODUCTS, cart=cart)

    @app.post("/cart/add")
    def cart_add() -> Response:
        product = request.form.get("product", "")
        if product not in PRODUCTS:
            flash("There is no such product.", "error")
        elif len(session.get("cart", [])) >= MAX_CART_ITEMS:
            flash(f"A cart holds at most {MAX_CART_ITEMS} items.", "error")
        else:
            # A change inside a value: the session compares its bytes at the end of
            # the request, so no `session.modified = True` is needed.
            session.setdefault("cart", []).append(product)
            flash(f"Added {PRODUCTS[product][0]} to your cart.", "success")
        return redirect(url_for("index"), 303)

    @app.post("/cart/remove")
    def cart_remove() -> Response:
        product = request.form.get("product", "")
        cart = session.get("cart", [])
        if product in cart:
            cart.remove(product)
            flash(f"Removed one {PRODUCTS[product][0]} from your cart.", "success")
        else:
            flash("That is not in your cart.", "error")
        return redirect(url_for("index"), 303)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response | str | tuple[str, int]:
        if current_user.is_authenticated:
            return redirect(_safe_next(request.args.get("next")), 303)
        username = request.form.get("username", "").strip()
        if request.method == "POST":
            user = check_password(username, request.form.get("password", ""))
            if user is not None:
                login_user(user)
                # A new session ID now that the session grants a login: an ID an
                # attacker planted or saw before (session fixation) is worthless.
                # The old record is deleted at once; the data moves to the new ID.
                session.regenerate()
                # Ties the record to the user (`flask kvsession stats`, and finding
                # a user's sessions to revoke them).
                session.user_id = user.id
                session.permanent = request.form.get("remember") == "1"
                # A token that was on the page before login is not trusted after it.
                session["csrf_token"] = secrets.token_urlsafe(32)
                flash(f"Welcome, {user.name}!", "success")
                return redirect(_safe_next(request.args.get("next")), 303)
            flash("Wrong user name or password.", "error")
            page = render_template_string(LOGIN_PAGE, title="Log in", username=username)
            return page, 401
        return render_template_string(LOGIN_PAGE, title="Log in", username=username)

    @app.post("/logout")
    def logout() -> Response:
        logout_user()
        # Deletes the record now and expires the cookie with this response: the
        # cart goes too. No flash() after it: that would start a new session.
        session.destroy()
        return redirect(url_for("login", logged_out=1), 303)

    @app.get("/admin")
    @login_required
    def admin() -> str:
        if not current_user.is_admin:
            abort(403)
        return render_template_string(
            ADMIN_PAGE, title="Admin", store=repr(current_app.kvsession_store)
        )

    return app


def _store_url() -> str:
    return os.environ.get("KVSESSION_STORE_URL", DEFAULT_STORE_URL)


def main() -> None:
    app = create_app()
    # The store's repr, not the URL: it hides a password the URL may carry.
    print(f"Serving on http://127.0.0.1:5000/ (store: {app.kvsession_store!r}); Ctrl-C to stop")
    try:
        # debug=False: the debugger would let anyone who reaches the port run code.
        app.run(host="127.0.0.1", port=5000, debug=False)
    finally:
        app.kvsession_store.close()


if __name__ == "__main__":
    main()
