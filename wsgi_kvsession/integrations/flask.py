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
import functools
import importlib
import logging
import random
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import Headers

from .. import envelope
from ..cookies import finish_headers
from ..ids import MIN_SECRET_KEY_BYTES
from ..middleware import ENVIRON_KEY, MIDDLEWARE_ENVIRON_KEY, KVSessionMiddleware
from ..options import DEFAULT_ABSOLUTE_TIMEOUT, Options, SessionOptions
from ..serializers import SerializationError
from ..session import Session
from ..stores.base import Store
from .base import SessionProxy

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
#: How many configurations an interface keeps options for (apps x configs).
_OPTIONS_CACHE_SIZE = 8
#: Every ``app.config`` key that :meth:`KVSessionInterface.settings` (with
#: Flask's own ``get_cookie_*``) reads: their values decide the options.
_CONFIG_READ = (
    "SESSION_COOKIE_NAME",
    "SESSION_COOKIE_DOMAIN",
    "SESSION_COOKIE_PATH",
    "APPLICATION_ROOT",
    "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SECURE",
    "SESSION_COOKIE_SAMESITE",
    "SESSION_COOKIE_PARTITIONED",
    "PERMANENT_SESSION_LIFETIME",
    "SESSION_REFRESH_EACH_REQUEST",
    "SECRET_KEY",
    "SECRET_KEY_FALLBACKS",
    "SESSION_KEY_BITS",
    "SESSION_PERMANENT",
    "SESSION_KEY_PREFIX",
    "SESSION_RANDOM_SOURCE",
)
_COOKIE_GETTERS = (
    "get_cookie_name",
    "get_cookie_domain",
    "get_cookie_path",
    "get_cookie_httponly",
    "get_cookie_secure",
    "get_cookie_samesite",
    "get_cookie_partitioned",
)


class KVSession(SessionProxy, SessionMixin):
    """``flask.session``: the request's :class:`~wsgi_kvsession.Session` with
    Flask's :class:`~flask.sessions.SessionMixin` interface.

    Every read and write goes to the core session, so what Flask, Flask-Login
    and the app see is exactly what the middleware persists. The name is
    Flask-KVSession's, as are :meth:`regenerate` and :meth:`destroy`.
    """

    __slots__ = ()

    # -- SessionMixin ----------------------------------------------------

    @property
    def new(self) -> bool:  # type: ignore[override]
        """True when no stored session backs this one (yet)."""
        return self._session.new

    # -- Flask-KVSession and core extras --------------------------------

    @property
    def sid_s(self) -> str | None:
        """Flask-KVSession's name for :attr:`id`."""
        return self._session.id

    @property
    def created(self) -> datetime.datetime:
        return self._session.created

    def destroy(self) -> None:
        """Delete the record now and expire the cookie with the response (logout).

        Flask-Login's ``logout_user()`` leaves ``_remember = "clear"`` in the
        session for its after_request hook to delete the remember-me cookie; that
        instruction to this response survives, so ``logout_user()`` then
        ``destroy()`` logs out fully. (The hook removes it again: nothing is stored.)
        """
        remember = self._session.get("_remember")
        self._session.destroy()
        if remember == "clear":
            self._session["_remember"] = "clear"


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
    """What one app's sessions need: the store, the explicit options, and the
    middleware installed for the app (None when there is none)."""

    def __init__(
        self,
        store: Store,
        option_kwargs: SessionOptions,
        middleware: KVSessionMiddleware | None = None,
    ) -> None:
        self.store = store
        self.option_kwargs = option_kwargs
        self.middleware = middleware
        #: Options per configuration seen, newest last. Built once each: a
        #: signer and checks are not free, and several apps may share one state.
        self._cache: dict[tuple[Any, ...], Options] = {}
        #: The same options by the raw config values they came from (see
        #: KVSessionInterface.options): found without computing the settings.
        self.by_config: dict[tuple[Any, ...], Options] = {}

    def remember(self, config_values: tuple[Any, ...], options: Options) -> None:
        cache = dict(self.by_config)  # copy on write, as in options()
        if len(cache) >= _OPTIONS_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[config_values] = options
        self.by_config = cache

    def options(self, settings: dict[str, Any]) -> Options:
        """Options for ``settings`` (from the config) under the explicit options;
        built once per distinct configuration."""
        key = tuple(
            (name, tuple(value) if isinstance(value, list) else value)
            for name, value in settings.items()
        )
        options = self._cache.get(key)
        if options is not None:
            return options
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
        cache = dict(self._cache)  # copy on write: readers in other threads see a whole dict
        if len(cache) >= _OPTIONS_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[key] = options
        self._cache = cache
        return options


def _find_middleware(wsgi_app: Any) -> KVSessionMiddleware | None:
    """The KVSessionMiddleware in the chain of WSGI wrappers at ``app.wsgi_app``.

    Wrappers keep the app they wrap as ``.app`` (Werkzeug's ProxyFix and most
    others), ``.application`` (WhiteNoise) or ``.wsgi_app``; the search follows
    those a bounded number of steps, and stops at another Flask app.
    """
    for _ in range(32):
        if isinstance(wsgi_app, KVSessionMiddleware):
            return wsgi_app
        if isinstance(wsgi_app, Flask):
            return None  # another app (mounted inside this one): not this app's middleware
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
        state = self._known_state(app)
        if state is None:
            raise RuntimeError(
                "KVSessionInterface() found no store: call "
                "wsgi_kvsession.integrations.flask.init_app(app, store), wrap "
                "app.wsgi_app = KVSessionMiddleware(app.wsgi_app, store) before the first "
                "request, or give KVSessionInterface(store)"
            )
        return state

    def _known_state(self, app: Flask) -> _AppState | None:
        if self._state is not None:
            return self._state
        state = app.extensions.get(EXTENSION_KEY)
        if isinstance(state, _AppState):
            return state
        middleware = _find_middleware(app.wsgi_app)
        if middleware is None:
            return None
        # The explicit two-liner: from now on the middleware asks the app's
        # config for each request's options.
        state = _AppState(middleware.store, middleware.option_kwargs, middleware)
        app.extensions[EXTENSION_KEY] = state
        middleware.options_provider = functools.partial(self.options, app)
        _follow_flask_login()
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
            "cookie_partitioned": self.get_cookie_partitioned(app),
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
        if config.get("SESSION_PERMANENT"):  # Flask-Session's key
            settings["permanent_by_default"] = True
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
        """The options of ``app``'s sessions as configured now.

        Asked twice on every request, so the answer is looked up by the raw
        values of the config keys the settings come from, which costs a
        fraction of computing the settings; an interface whose subclass
        overrides how they are computed always computes them.
        """
        state = self.app_state(app)
        if not self._settings_from_config_only:
            return state.options(self.settings(app))
        config = app.config
        values = tuple(
            tuple(value) if type(value) is list else value
            for value in map(config.get, _CONFIG_READ)
        )
        try:
            options = state.by_config.get(values)
        except TypeError:  # an unhashable config value: compute, don't cache
            return state.options(self.settings(app))
        if options is None:
            options = state.options(self.settings(app))
            state.remember(values, options)
        return options

    @functools.cached_property
    def _settings_from_config_only(self) -> bool:
        cls = type(self)
        return cls.settings is KVSessionInterface.settings and all(
            getattr(cls, name) is getattr(SessionInterface, name) for name in _COOKIE_GETTERS
        )

    # -- the SessionInterface protocol -----------------------------------

    def open_session(self, app: Flask, request: Request) -> KVSession:
        environ = request.environ
        session = environ.get(ENVIRON_KEY)
        if not isinstance(session, Session):
            # No middleware on this request's path (test_request_context(),
            # session_transaction(), an app served without it): a session of
            # our own, loaded by cookie from the same store.
            session = Session(self.app_state(app).store, self.options(app), environ)
            environ[ENVIRON_KEY] = session
            return self.session_class(session)
        middleware = environ.get(MIDDLEWARE_ENVIRON_KEY)
        # Whether the middleware already asked this interface for this app's
        # options when the request came in (then the session has them).
        provider = getattr(middleware, "options_provider", None)
        provided = (
            isinstance(provider, functools.partial)
            and getattr(provider.func, "__self__", None) is self
            and provider.args == (app,)
        )
        state = self._known_state(app)
        if (
            state is not None
            and middleware is not None
            and middleware is state.middleware
            and not provided
        ):
            # This app's own middleware, which asks for the config's options; on
            # the first request of the two-liner they arrive only now.
            options = self.options(app)
            if session.options is not options:
                if session.accessed:
                    log.warning(
                        "the session was read before Flask opened it, with other "
                        "options than app.config gives; this request keeps them"
                    )
                else:
                    session.options = options
        elif self._state is not None and self._state.store is not session.store:
            raise RuntimeError(
                f"KVSessionInterface was given {self._state.store!r}, but the request's "
                f"session comes from a KVSessionMiddleware around the app using "
                f"{session.store!r}: give both the same store, or leave the interface "
                "without one (KVSessionInterface())"
            )
        # Otherwise the session is a middleware's around the app (the whole
        # site's): its store and options govern, shared with the other apps.
        return self.session_class(session)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Persist the session now, as Flask's own sessions are saved here.

        So the after_request handlers' changes are saved, a store or
        serialization error goes through Flask's error handling (an
        ``errorhandler(500)`` page, ``got_request_exception``), and changes in
        a streamed body or at teardown are not saved (they are logged), as with
        Flask's cookie sessions. The middleware then finds it saved.
        """
        if not isinstance(session, KVSession):
            return
        core = session.raw
        set_cookie, vary = core._commit(response.status_code)
        if set_cookie is not None or vary:
            headers = finish_headers(
                response.headers.to_wsgi_list(), core.options, set_cookie=set_cookie, vary=vary
            )
            response.headers = Headers(headers)


_flask_login_followed = False


def _follow_flask_login() -> None:
    """With Flask-Login installed, keep ``session.user_id`` on the logged-in user.

    Then ``SessionManager.revoke_user()`` finds every session of a user however
    it logged in (form or remember-me cookie), and a logout or a failed session
    protection check unties the session at once.
    """
    global _flask_login_followed
    if _flask_login_followed:
        return
    try:
        flask_login = importlib.import_module("flask_login")  # optional, and untyped
    except ImportError:
        return
    flask_login.user_logged_in.connect(_tie_session_to_user)
    flask_login.user_loaded_from_cookie.connect(_tie_session_to_user)
    flask_login.user_logged_out.connect(_untie_session)
    flask_login.session_protected.connect(_untie_session)
    _flask_login_followed = True


def _current_kvsession(app: Any) -> KVSession | None:
    if not isinstance(app, Flask) or not isinstance(app.session_interface, KVSessionInterface):
        return None  # another app in the process, with sessions of its own
    from flask import session

    current = session._get_current_object()  # type: ignore[attr-defined]
    return current if isinstance(current, KVSession) else None


def _tie_session_to_user(app: Any, user: Any = None, **extra: Any) -> None:
    session = _current_kvsession(app)
    user_id = user.get_id() if user is not None else None
    if session is not None and isinstance(user_id, str | int) and not isinstance(user_id, bool):
        session.user_id = user_id


def _untie_session(app: Any, **extra: Any) -> None:
    session = _current_kvsession(app)
    if session is not None:
        session.user_id = None


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
    middleware = _find_middleware(app.wsgi_app)
    if middleware is None:
        middleware = KVSessionMiddleware(app.wsgi_app, store, **options)
        app.wsgi_app = middleware  # type: ignore[method-assign]
    else:
        middleware.store = store
        middleware.options = Options.from_kwargs(**options)
        middleware.option_kwargs = options
    app.extensions[EXTENSION_KEY] = _AppState(store, options, middleware)
    interface = KVSessionInterface()
    app.session_interface = interface
    interface.options(app)  # a bad config fails now, not on the first request
    middleware.options_provider = functools.partial(interface.options, app)
    app.kvsession_store = store  # type: ignore[attr-defined]
    if "kvsession" not in app.cli.commands:
        app.cli.add_command(kvsession_cli)
    _follow_flask_login()
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
