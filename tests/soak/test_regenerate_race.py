"""A login's regenerate() drops changes saved while the login was running (found by the soak).

The soak (``test_soak.py``) books writes that a parallel request saved *after*
a login request loaded the session but *before* it called ``regenerate()``
as ``window_lost_writes`` and ``window_resurrected_keys``, and finds tens of
them in every run, on every store. This is the smallest reproduction,
in-process and deterministic:

1. the login request loads the session (it is checking a password now);
2. another request of the same session sets ``cart`` and deletes ``promo``,
   and answers 200: its change is saved in the store;
3. the login calls ``regenerate()``: the old record is deleted without a
   version check (``Session._delete_record``), and the new record is inserted
   from the data the login loaded in step 1.

So the new session has no ``cart`` and has ``promo`` again. Rule 11 says parallel
requests that change different keys both keep their change, and
``docs/concurrency.rst`` only gives up on requests that *still carry* the
replaced ID when the login happens; this request had finished before
``regenerate()`` was called. A version-checked delete of the old record,
re-reading and merging (as ``Session._save`` does) when it was written
meanwhile, would keep both changes.

Found by the soak; ``regenerate()`` now does exactly that, and these tests keep it so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from wsgi_kvsession import KVSessionMiddleware, get_session
from wsgi_kvsession.stores import MemoryStore, SQLiteStore, Store

#: Bound on every wait of the test (a broken library must fail it, not hang it).
TIMEOUT = 10.0


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    yield made
    made.close()


class Login:
    """A login request held between loading the session and regenerating it."""

    def __init__(self) -> None:
        self.loaded = threading.Event()
        self.go_on = threading.Event()


def make_app(store: Store, login: Login) -> KVSessionMiddleware:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        session = get_session(environ)
        if request.path == "/start":
            session["promo"] = "WELCOME"
        elif request.path == "/cart":
            session["cart"] = [42]
            del session["promo"]
        elif request.path == "/login":
            session.get("user")  # loaded: the password check starts
            login.loaded.set()
            if not login.go_on.wait(TIMEOUT):
                raise RuntimeError("the test never let the login go on")
            session.regenerate()
            session["user"] = "alice"
        elif request.path == "/read":
            return Response(repr(sorted(session.items())))(environ, start_response)
        return Response("ok")(environ, start_response)

    return KVSessionMiddleware(app, store, cookie_secure=False)


def cookie_of(client: Client) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    assert cookie.value
    return cookie.value


def run(store: Store, *, cart_while_login_runs: bool) -> str:
    """Start a session, log in on another thread, change the cart before the login
    loads the session or while it runs; return the session the browser ends with."""
    login = Login()
    app = make_app(store, login)
    browser = Client(app)
    assert browser.get("/start").status_code == 200
    old_cookie = cookie_of(browser)
    if not cart_while_login_runs:
        assert browser.get("/cart").status_code == 200
        login.go_on.set()
    outcome: dict[str, Any] = {}

    def log_in() -> None:
        tab = Client(app)
        tab.set_cookie("session", old_cookie)
        outcome["status"] = tab.get("/login").status_code
        outcome["cookie"] = cookie_of(tab)

    thread = threading.Thread(target=log_in, daemon=True)
    thread.start()
    try:
        assert login.loaded.wait(TIMEOUT), "the login never loaded the session"
        if cart_while_login_runs:
            # Another tab, still holding the old (not yet replaced) ID.
            assert browser.get("/cart").status_code == 200
    finally:
        login.go_on.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert outcome["status"] == 200
    reader = Client(app)
    reader.set_cookie("session", outcome["cookie"])
    return reader.get("/read").get_data(as_text=True)


def test_a_change_saved_before_the_login_loaded_is_kept(store: Store) -> None:
    """The control: the same scenario without the overlap keeps the change."""
    assert run(store, cart_while_login_runs=False) == "[('cart', [42]), ('user', 'alice')]"


def test_a_change_saved_while_the_login_runs_is_kept(store: Store) -> None:
    assert run(store, cart_while_login_runs=True) == "[('cart', [42]), ('user', 'alice')]"
