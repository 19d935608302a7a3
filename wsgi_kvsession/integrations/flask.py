"""Flask: the middleware's session as ``flask.session``, configured by ``app.config``.

Two ways in, which end up the same::

    init_app(app, store)                                  # one call

    app.wsgi_app = KVSessionMiddleware(app.wsgi_app, store)   # or the two lines
    app.session_interface = KVSessionInterface()

:class:`KVSessionInterface` does not load or save anything itself while the
middleware is there: ``open_session`` wraps the session the middleware put in
``environ`` (it is loaded on first use, rule 6) and gives it the cookie
settings of ``app.config``; the middleware persists it when the response
starts. Requests that do not pass through the middleware (Flask's
``test_request_context()``, the test client's ``session_transaction()``, an app
served without it) get a session of their own, loaded by cookie from the same
store, which ``save_session`` commits onto the Flask response with the same
rules.

Settings are read from ``app.config`` on every request (a change after
``init_app`` takes effect, as in Flask) and turned into
:class:`~wsgi_kvsession.options.Options` once per distinct configuration.
Options passed to :func:`init_app` or to the middleware explicitly win over the
config; see :ref:`flask` in the docs for the mapping.
"""

from __future__ import annotations

import datetime
import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import Headers

from .. import envelope
from ..cookies import finish_headers
from ..ids import MIN_SECRET_KEY_BYTES
from ..middleware import ENVIRON_KEY, KVSessionMiddleware
from ..options import DEFAULT_ABSOLUTE_TIMEOUT, Options, SessionOptions
from ..serializers import SerializationError
from ..session import Session
from ..stores.base import Store

if TYPE_CHECKING:
    from flask.wrappers import Request, Response
    from typing_extensions import Unpack

__all__ = [
    "KVSession",
    "KVSessionExtension",
    "KVSessionInterface",
    "cleanup_sessions",
    "init_app",
]

log = logging.getLogger(__name__)

#: ``app.extensions`` key of the per-app state.
EXTENSION_KEY = "wsgi_kvsession"
#: ``environ`` key marking a session that ``open_session`` made itself (no
#: middleware), which ``save_session`` must therefore commit.
_OWN_SESSION_KEY = "wsgi_kvsession.flask.own_session"


class KVSession(SessionMixin):
    """``flask.session``: the request's :class:`~wsgi_kvsession.Session` with
    Flask's :class:`~flask.sessions.SessionMixin` interface.

    Every read and write goes to the core session, so what Flask, Flask-Login
    and the app see is exactly what the middleware persists. The name is
    Flask-KVSession's, as are :meth:`regenerate` and :meth:`destroy`.
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def raw(self) -> Session:
        """The core :class:`~wsgi_kvsession.Session` behind this one."""
        return self._session

    # -- the mapping -----------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._session[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._session[key] = value

    def __delitem__(self, key: str) -> None:
        del self._session[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._session)

    def __len__(self) -> int:
        return len(self._session)

    def __contains__(self, key: object) -> bool:
        return key in self._session

    def get(self, key: str, default: Any = None) -> Any:
        return self._session.get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        return self._session.setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        return self._session.pop(key, *default)

    def clear(self) -> None:
        self._session.clear()

    def copy(self) -> dict[str, Any]:
        """A shallow copy of the data as a plain dict: Flask's own sessions and
        Flask-KVSession's are dicts, and apps call ``session.copy()``."""
        return dict(self._session)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._session!r}>"

    # -- SessionMixin ----------------------------------------------------

    @property
    def permanent(self) -> bool:
        """A permanent session's cookie has Max-Age and Expires (Flask's
        ``PERMANENT_SESSION_LIFETIME``); others end with the browser."""
        return self._session.permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self._session.permanent = value

    @property
    def new(self) -> bool:  # type: ignore[override]
        """True when no stored session backs this one (yet)."""
        return self._session.new

    @property
    def modified(self) -> bool:
        """True when the session will be written back. Changes are found by
        comparing bytes, so nested mutation counts without setting this;
        setting it to True forces a write."""
        return self._session.modified

    @modified.setter
    def modified(self, value: bool) -> None:
        self._session.modified = value

    @property
    def accessed(self) -> bool:
        """True once the session was really read or written in this request."""
        return self._session.accessed

    @accessed.setter
    def accessed(self, value: bool) -> None:
        # Flask (3.1.3+) sets this whenever the ``session`` proxy is touched,
        # e.g. by every render_template(). The core session knows when it was
        # really read, which is what Vary: Cookie and rule 6 go by, so a
        # page that never reads the session costs no store call.
        pass

    # -- Flask-KVSession and core extras --------------------------------

    @property
    def id(self) -> str | None:
        """The session ID, or None while the session has none."""
        return self._session.id

    @property
    def sid_s(self) -> str | None:
        """Flask-KVSession's name for :attr:`id`."""
        return self._session.id

    @property
    def created(self) -> datetime.datetime:
        return self._session.created

    @property
    def user_id(self) -> str | int | None:
        return self._session.user_id

    @user_id.setter
    def user_id(self, value: str | int | None) -> None:
        self._session.user_id = value

    def regenerate(self) -> None:
        """New ID, same data; the old record is deleted at once (call it at login)."""
        self._session.regenerate()

    def destroy(self) -> None:
        """Delete the record now and expire the cookie with the response (logout)."""
        self._session.destroy()


#: The ``app.config`` keys each option is read from.
CONFIG_KEYS = {
    "cookie_name": "SESSION_COOKIE_NAME",
    "cookie_domain": "SESSION_COOKIE_DOMAIN",
    "cookie_path": "SESSION_COOKIE_PATH",
    "cookie_httponly": "SESSION_COOKIE_HTTPONLY",
    "cookie_secure": "SESSION_COOKIE_SECURE",
    "cookie_samesite": "SESSION_COOKIE_SAMESITE",
    "cookie_partitioned": "SESSION_COOKIE_PARTITIONED",
    "idle_timeout": "PERMANENT_SESSION_LIFETIME",
    "absolute_timeout": "PERMANENT_SESSION_LIFETIME",
    "cookie_refresh": "SESSION_REFRESH_EACH_REQUEST",
    "secret_key": "SECRET_KEY",
    "id_bits": "SESSION_KEY_BITS",
    "key_prefix": "SESSION_KEY_PREFIX",
}


class _AppState:
    """What one app's sessions need: the store and the explicit options."""

    def __init__(self, store: Store, option_kwargs: SessionOptions) -> None:
        self.store = store
        self.option_kwargs = option_kwargs
        #: The last configuration seen and its options, as ONE tuple so that
        #: threads never pair one configuration with another's options.
        self._cached: tuple[tuple[Any, ...], Options] | None = None

    def options(self, settings: dict[str, Any]) -> Options:
        """Options for ``settings`` (from the config) under the explicit options;
        built once per distinct configuration."""
        key = tuple(
            (name, tuple(value) if isinstance(value, list) else value)
            for name, value in settings.items()
        )
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        merged: dict[str, Any] = {**settings, **self.option_kwargs}
        try:
            options = Options.from_kwargs(**merged)
        except (TypeError, ValueError) as exc:
            # Name the config key a Flask user set, not only the option it maps to.
            message = str(exc)
            keys = [
                key
                for option, key in CONFIG_KEYS.items()
                if option in settings and option not in self.option_kwargs and option in message
            ]
            if not keys:
                raise
            raise type(exc)(f"{message} (from app.config[{', '.join(keys)}])") from None
        self._cached = (key, options)
        return options


def _find_middleware(wsgi_app: Any) -> KVSessionMiddleware | None:
    """The KVSessionMiddleware in the chain of WSGI wrappers at ``app.wsgi_app``.

    Wrappers keep the app they wrap as ``.app`` (Werkzeug's ProxyFix and most
    others), ``.application`` (WhiteNoise) or ``.wsgi_app``; the search follows
    those a bounded number of steps.
    """
    for _ in range(32):
        if isinstance(wsgi_app, KVSessionMiddleware):
            return wsgi_app
        for attribute in ("app", "application", "wsgi_app"):
            inner = getattr(wsgi_app, attribute, None)
            if inner is not None:
                wsgi_app = inner
                break
        else:
            return None
    return None


def _coerce_store(store: Any, where: str) -> Store:
    """A wsgi_kvsession store from a store, a store URL, or a simplekv/minimalkv
    ``KeyValueStore`` (what Flask-KVSession took), or a clear error."""
    if isinstance(store, Store):
        return store
    if isinstance(store, str):
        from ..stores import store_from_url

        return store_from_url(store)
    if all(callable(getattr(store, name, None)) for name in ("get", "put", "delete")):
        from ..stores.simplekv import SimpleKVStore

        return SimpleKVStore(store)
    raise TypeError(
        f"{where}: {store!r} is not a session store; give a wsgi_kvsession store, a store "
        "URL such as 'redis://localhost:6379/0', or a simplekv/minimalkv KeyValueStore"
    )


class KVSessionInterface(SessionInterface):
    """A Flask session interface over :class:`~wsgi_kvsession.KVSessionMiddleware`.

    With no arguments it uses the store (and options) of :func:`init_app`, or
    of the middleware it finds at ``app.wsgi_app``. Give ``store`` (and
    options) to use it without either, e.g. for an app whose middleware wraps
    it from outside (``application = KVSessionMiddleware(app, store)``).
    """

    session_class = KVSession

    def __init__(self, store: Store | None = None, **options: Unpack[SessionOptions]) -> None:
        self._state: _AppState | None = None
        if store is not None:
            Options.from_kwargs(**options)  # fail now on a bad option, not per request
            self._state = _AppState(_coerce_store(store, "KVSessionInterface(store=...)"), options)
        elif options:
            raise TypeError("KVSessionInterface: options need a store; give store=... too")

    # -- configuration ---------------------------------------------------

    def app_state(self, app: Flask) -> _AppState:
        """The store and explicit options serving ``app``."""
        if self._state is not None:
            return self._state
        state = app.extensions.get(EXTENSION_KEY)
        if isinstance(state, _AppState):
            return state
        middleware = _find_middleware(app.wsgi_app)
        if middleware is None:
            raise RuntimeError(
                "KVSessionInterface() found no store: call "
                "wsgi_kvsession.integrations.flask.init_app(app, store), wrap "
                "app.wsgi_app = KVSessionMiddleware(app.wsgi_app, store) before the first "
                "request, or give KVSessionInterface(store)"
            )
        state = _AppState(middleware.store, middleware.option_kwargs)
        app.extensions[EXTENSION_KEY] = state
        return state

    def settings(self, app: Flask) -> dict[str, Any]:
        """The session options ``app.config`` asks for (Flask's own rules for
        each cookie attribute, through this interface's ``get_cookie_*``)."""
        config = app.config
        settings: dict[str, Any] = {
            "cookie_name": self.get_cookie_name(app),
            "cookie_domain": self.get_cookie_domain(app),
            "cookie_path": self.get_cookie_path(app),
            "cookie_httponly": self.get_cookie_httponly(app),
            "cookie_secure": self.get_cookie_secure(app),
            "cookie_samesite": self.get_cookie_samesite(app),
            "cookie_partitioned": bool(config.get("SESSION_COOKIE_PARTITIONED", False)),
            "idle_timeout": app.permanent_session_lifetime,
            "cookie_refresh": (
                "every_request" if config.get("SESSION_REFRESH_EACH_REQUEST", True) else "on_change"
            ),
        }
        # Flask's default lifetime is 31 days; the core's absolute timeout of
        # 30 would silently cut it short, so it is never below the lifetime.
        settings["absolute_timeout"] = max(DEFAULT_ABSOLUTE_TIMEOUT, app.permanent_session_lifetime)
        secret_key = config.get("SECRET_KEY")
        if secret_key:
            keys = [secret_key, *(config.get("SECRET_KEY_FALLBACKS") or [])]
            strong = [k for k in keys if len(k) >= MIN_SECRET_KEY_BYTES]
            if len(strong) < len(keys):
                _warn_once(
                    app,
                    f"SECRET_KEY (or a fallback) is shorter than {MIN_SECRET_KEY_BYTES} "
                    "characters, too short to sign session cookies with; "
                    + (
                        "cookies are not signed (the IDs are still 256 random bits)"
                        if len(secret_key) < MIN_SECRET_KEY_BYTES
                        else "the short fallback keys are ignored"
                    ),
                )
            if len(secret_key) >= MIN_SECRET_KEY_BYTES:
                settings["secret_key"] = strong
        key_bits = config.get("SESSION_KEY_BITS")
        if key_bits is not None:
            if (
                not isinstance(key_bits, int)
                or isinstance(key_bits, bool)
                or not 128 <= key_bits <= 768
                or key_bits % 8
            ):
                raise ValueError(
                    f"SESSION_KEY_BITS={key_bits!r}: session IDs need at least 128 random "
                    "bits; remove the setting (the default is 256) or set a multiple of 8 "
                    "from 128 to 768"
                )
            settings["id_bits"] = key_bits
        key_prefix = config.get("SESSION_KEY_PREFIX")  # Flask-Session's name
        if key_prefix is not None:
            settings["key_prefix"] = key_prefix
        source = config.get("SESSION_RANDOM_SOURCE")
        if source is not None and not isinstance(source, random.SystemRandom):
            raise ValueError(
                f"SESSION_RANDOM_SOURCE={source!r}: session IDs always come from the "
                "secrets module (the operating system's CSPRNG); remove the setting"
            )
        return settings

    def options(self, app: Flask) -> Options:
        """The options of ``app``'s sessions as configured now."""
        return self.app_state(app).options(self.settings(app))

    # -- the SessionInterface protocol -----------------------------------

    def open_session(self, app: Flask, request: Request) -> KVSession:
        options = self.options(app)
        environ = request.environ
        session = environ.get(ENVIRON_KEY)
        if not isinstance(session, Session):
            # No middleware on this request's path: a session of our own,
            # which save_session commits.
            session = Session(self.app_state(app).store, options, environ)
            environ[ENVIRON_KEY] = session
            environ[_OWN_SESSION_KEY] = session
        elif session.options is not options:
            if session.accessed and session.options.cookie_name != options.cookie_name:
                log.warning(
                    "the session was read before Flask opened it, with cookie name %r "
                    "instead of the configured %r",
                    session.options.cookie_name,
                    options.cookie_name,
                )
            session.options = options
        return self.session_class(session)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, KVSession):
            return
        core = session.raw
        if (
            core.accessed
            and app.config.get("SESSION_PERMANENT")
            and core.new
            and not core.permanent
            and core
        ):
            core.permanent = True  # Flask-Session's SESSION_PERMANENT: new sessions are
        environ = core._environ
        if environ.get(_OWN_SESSION_KEY) is not core:
            return  # the middleware commits it when the response starts
        del environ[_OWN_SESSION_KEY]  # commit once
        set_cookie, vary = core._commit(response.status_code)
        if set_cookie is not None or vary:
            headers = finish_headers(
                response.headers.to_wsgi_list(), core.options, set_cookie=set_cookie, vary=vary
            )
            response.headers = Headers(headers)


def _warn_once(app: Flask, message: str) -> None:
    warned = app.extensions.setdefault(f"{EXTENSION_KEY}.warned", set())
    if message not in warned:
        warned.add(message)
        log.warning("%s", message)


def init_app(app: Flask, store: Store | str | Any, **options: Unpack[SessionOptions]) -> Store:
    """Serve ``app``'s sessions from ``store``; return the store.

    Wraps ``app.wsgi_app`` in :class:`~wsgi_kvsession.KVSessionMiddleware`, sets
    ``app.session_interface`` to a :class:`KVSessionInterface`, puts the store at
    ``app.kvsession_store`` and registers the ``flask kvsession`` commands.
    ``store`` may be a store, a store URL or a simplekv/minimalkv
    ``KeyValueStore``. ``options`` are the middleware's; they win over the
    matching ``app.config`` keys. Calling it again replaces the store.
    """
    store = _coerce_store(store, "init_app(app, store)")
    Options.from_kwargs(**options)  # a bad option fails here, naming itself
    state = _AppState(store, options)
    middleware = _find_middleware(app.wsgi_app)
    if middleware is None:
        app.wsgi_app = KVSessionMiddleware(app.wsgi_app, store, **options)  # type: ignore[method-assign]
    else:
        middleware.store = store
        middleware.options = Options.from_kwargs(**options)
        middleware.option_kwargs = options
    app.extensions[EXTENSION_KEY] = state
    interface = KVSessionInterface()
    app.session_interface = interface
    app.kvsession_store = store  # type: ignore[attr-defined]
    if "kvsession" not in app.cli.commands:
        app.cli.add_command(kvsession_cli)
    interface.options(app)  # a bad config fails now, not on the first request
    return store


class KVSessionExtension:
    """Flask-KVSession 0.6's extension object, over :func:`init_app`.

    ``KVSessionExtension(store, app)``, or ``ext = KVSessionExtension(store)``
    then ``ext.init_app(app)``; one extension may serve several apps, each with
    its own store.
    """

    def __init__(self, session_kvstore: Any = None, app: Flask | None = None) -> None:
        self.default_kvstore = session_kvstore
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, session_kvstore: Any = None) -> None:
        store = session_kvstore if session_kvstore is not None else self.default_kvstore
        if store is None:
            raise ValueError("Must supply session_kvstore either on construction or init_app().")
        init_app(app, store)

    def cleanup_sessions(self, app: Flask | None = None) -> int:
        """Remove expired sessions from ``app``'s store; return how many."""
        return cleanup_sessions(app)


def cleanup_sessions(app: Flask | None = None) -> int:
    """Remove expired sessions from the store of ``app`` (default: the current
    app); return how many records were removed."""
    app = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
    return _interface(app).app_state(app).store.cleanup()


def _interface(app: Flask) -> KVSessionInterface:
    interface = app.session_interface
    if not isinstance(interface, KVSessionInterface):
        raise RuntimeError(
            "the app's sessions are not served by wsgi_kvsession: call init_app(app, store)"
        )
    return interface


# -- flask kvsession ... ------------------------------------------------------

kvsession_cli = AppGroup("kvsession", help="Manage the sessions of wsgi_kvsession.")


@kvsession_cli.command("cleanup")
def _cleanup_command() -> None:
    """Remove expired sessions from the store."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    store = _interface(app).app_state(app).store
    removed = store.cleanup()
    click.echo(f"removed {removed} expired session record(s) from {store!r}")


@kvsession_cli.command("stats")
def _stats_command() -> None:
    """Count the live sessions of this app (its key prefix)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    interface = _interface(app)
    store = interface.app_state(app).store
    options = interface.options(app)
    total = permanent = with_user = unreadable = 0
    try:
        for _key, record in store.iter_records(options.key_prefix):
            total += 1
            try:
                stored = envelope.unpack(record.value)
            except SerializationError:
                unreadable += 1
                continue
            permanent += stored.permanent
            with_user += stored.user_id is not None
    except NotImplementedError as exc:
        raise click.ClickException(f"{store!r} cannot list its sessions: {exc}") from None
    click.echo(f"store: {store!r}")
    click.echo(f"key prefix: {options.key_prefix}")
    click.echo(f"sessions: {total}")
    click.echo(f"permanent: {permanent}")
    click.echo(f"tied to a user: {with_user}")
    if unreadable:
        click.echo(f"unreadable records: {unreadable}")
