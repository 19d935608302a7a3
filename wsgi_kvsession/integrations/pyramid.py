"""Pyramid: the middleware's session as ``request.session``, an ``ISession``.

Two ways in::

    config.include("wsgi_kvsession.integrations.pyramid")     # ini settings
    config.set_session_factory(KVSessionFactory())            # or in code

and two ways the session is stored, decided per request:

* A :class:`~wsgi_kvsession.KVSessionMiddleware` wraps the app (in code, or as
  the ``kvsession`` filter of a PasteDeploy pipeline): ``request.session``
  wraps the session it put in ``environ`` and the middleware persists it when
  the response starts. Its store and options are the ones that count.
* No middleware, and the factory has a store (``KVSessionFactory(store)``, or
  ``kvsession.store_url`` in the settings): the factory loads the session
  itself and commits it onto Pyramid's response in a response callback, by the
  same rules. ``config.make_wsgi_app()`` cannot be wrapped by ``includeme``, so
  this is how the settings alone give an app its sessions.

When both are there, the middleware's session wins and the factory commits
nothing, so a response never carries two session cookies. With neither, the
first use of ``request.session`` raises a :class:`RuntimeError` naming the fix.

A retried request (``pyramid_retry``: a new ``Request`` per attempt, on the
same ``environ``) gets a fresh session from the factory on each attempt, so a
failed attempt's changes are dropped; a middleware's session is one for the
whole WSGI request and keeps them (see the docs).

The session is loaded on first use (a view that never reads
``request.session`` costs no store call), and flash queues and the CSRF token
live in it under Pyramid's own keys (``"_f_" + queue``, ``"_csrft_"``), so
Pyramid's default CSRF storage policy works with it unchanged.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyramid.interfaces import ICSRFStoragePolicy, ISession, ISessionFactory
from zope.interface import implementer  # type: ignore[import-untyped]

from ..cookies import finish_headers
from ..middleware import ENVIRON_KEY
from ..options import Options, SessionOptions
from ..paste import parse_settings
from ..serializers import SerializationError
from ..session import Session
from ..stores import store_from_url
from ..stores.base import Store
from .base import SessionProxy

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "SETTINGS_PREFIX",
    "KVSession",
    "KVSessionCSRFStoragePolicy",
    "KVSessionFactory",
    "includeme",
]

log = logging.getLogger(__name__)

#: Pyramid settings for the sessions start with this (``kvsession.store_url``).
SETTINGS_PREFIX = "kvsession."
#: Where flash queues and the CSRF token live, as in Pyramid's own sessions.
FLASH_KEY_PREFIX = "_f_"
CSRF_TOKEN_KEY = "_csrft_"  # noqa: S105 - a session key, not a secret
#: The ``environ`` key where the factory notes a session it made and commits
#: itself, to tell it from a middleware's session under ``ENVIRON_KEY``.
FACTORY_ENVIRON_KEY = "wsgi_kvsession.pyramid.factory_session"


@implementer(ISession)
class KVSession(SessionProxy):
    """``request.session``: the request's :class:`~wsgi_kvsession.Session`
    with Pyramid's :class:`~pyramid.interfaces.ISession` interface.

    Every read and write goes to the core session, so what Pyramid, the app
    and any other framework behind the same middleware see is the same data.
    """

    __slots__ = ()

    # -- ISession --------------------------------------------------------

    @property
    def created(self) -> float:
        """When the session was first stored, as Unix time (a float, like
        Pyramid's own sessions; :attr:`raw` ``.created`` is the datetime)."""
        return self._session.created.timestamp()

    @property
    def new(self) -> bool:
        """True when no stored session backs this one (yet)."""
        return self._session.new

    def invalidate(self) -> None:
        """Delete the session: its record at once, its cookie with the response.

        Call it at logout. Data set afterwards starts a new session with a new
        ID, and a request of the old session still in flight cannot write it
        back.
        """
        self._session.destroy()

    def changed(self) -> None:
        """Force a write of the session with this response.

        Changes, nested ones included (``session["cart"].append(x)``), are
        found by comparing the stored bytes, so this is only needed to write
        a session that did not change (to refresh its record).
        """
        self._session.modified = True

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Add ``msg`` to the end of flash queue ``queue`` (unless it is
        already there and ``allow_duplicate`` is false)."""
        storage = self._session.setdefault(FLASH_KEY_PREFIX + queue, [])
        if allow_duplicate or msg not in storage:
            storage.append(msg)

    def pop_flash(self, queue: str = "") -> list[Any]:
        """Return the messages of ``queue`` and remove the queue."""
        return list(self._session.pop(FLASH_KEY_PREFIX + queue, []))

    def peek_flash(self, queue: str = "") -> list[Any]:
        """Return the messages of ``queue`` and keep them."""
        return list(self._session.get(FLASH_KEY_PREFIX + queue, []))

    def new_csrf_token(self) -> str:
        """Store a new CSRF token (40 hex digits) and return it."""
        token = secrets.token_hex(20)
        self._session[CSRF_TOKEN_KEY] = token
        return token

    def get_csrf_token(self) -> str:
        """The session's CSRF token, made on first use."""
        token = self._session.get(CSRF_TOKEN_KEY)
        if not isinstance(token, str):
            token = self.new_csrf_token()
        return token


@implementer(ISessionFactory)
class KVSessionFactory:
    """Pyramid's session factory (``ISessionFactory``) over wsgi_kvsession.

    ``KVSessionFactory()`` serves the session of the
    :class:`~wsgi_kvsession.KVSessionMiddleware` that wraps the app.
    ``KVSessionFactory(store, **options)`` (``store`` a store or a store URL,
    ``options`` the middleware's) also works with no middleware in front: it
    then loads the session and commits it onto the response itself. A
    middleware in front, when there is one, wins.
    """

    def __init__(self, store: Store | str | None = None, **options: Unpack[SessionOptions]) -> None:
        if isinstance(store, str):
            store = store_from_url(store)
        elif store is not None and not isinstance(store, Store):
            raise TypeError(
                f"KVSessionFactory(store={store!r}): give a wsgi_kvsession store or a store "
                "URL such as 'redis://localhost:6379/0'"
            )
        if store is None and options:
            raise TypeError(
                "KVSessionFactory: options need a store; give store=... too, or give the "
                "options to the KVSessionMiddleware that wraps the app"
            )
        #: The factory's own store (None: the middleware's only).
        self.store: Store | None = store
        #: Its own sessions' options (checked now, not on the first request).
        self.options: Options = Options.from_kwargs(**options)
        self._told_middleware_wins = False

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, object], prefix: str = SETTINGS_PREFIX
    ) -> KVSessionFactory:
        """A factory configured by the ``kvsession.*`` keys of Pyramid settings
        (see :func:`~wsgi_kvsession.paste.parse_settings`); without
        ``kvsession.store_url`` it serves the middleware's sessions only."""
        parsed = parse_settings(settings, prefix=prefix, source="Pyramid setting")
        if parsed.store_url is None:
            if parsed.options:
                raise ValueError(
                    f"Pyramid setting(s) {', '.join(parsed.names.values())} need "
                    f"{prefix}store_url: without a store of its own the session factory "
                    "serves the KVSessionMiddleware's sessions, whose options are the "
                    "middleware's (give them to it, or to the [filter:kvsession] section)"
                )
            return cls()
        try:
            store = store_from_url(parsed.store_url)
        except ValueError as exc:
            raise ValueError(f"Pyramid setting {prefix}store_url: {exc}") from None
        return cls(store, **parsed.options)

    def __call__(self, request: Any) -> KVSession:
        environ = request.environ
        core = environ.get(ENVIRON_KEY)
        if isinstance(core, Session):
            own = environ.get(FACTORY_ENVIRON_KEY)
            if not isinstance(own, _FactorySession) or own.session is not core:
                # A middleware's session (or another integration's that wraps
                # the app): whoever made it saves it.
                if self.store is not None and not self._told_middleware_wins:
                    self._tell_middleware_wins(core.options)
                return KVSession(core)
            if not own.finished:
                # A factory's session whose request still runs: a Pyramid app
                # this request calls on the same environ (``@wsgiapp``) shares
                # it, and the request that made it commits it.
                return KVSession(core)
            # Made for an earlier Request on this environ that has finished:
            # pyramid_retry's previous attempt. Its commit callback is gone
            # with it, and a failed attempt's changes must not leak into the
            # next one (Pyramid's own sessions start afresh too): a new session,
            # loaded from the cookie again, with its own callbacks.
        if self.store is None:
            raise RuntimeError(
                "request.session: no wsgi_kvsession store. Wrap the Pyramid app in "
                "KVSessionMiddleware(app, store) (or a [filter:kvsession] in the ini "
                "pipeline), or set kvsession.store_url in the settings, or use "
                "KVSessionFactory(store)"
            )
        core = Session(self.store, self.options, environ)
        own = _FactorySession(core)
        # Other code of this request (a WSGI app it calls, get_session())
        # sees the same session, as under the middleware.
        environ[ENVIRON_KEY] = core
        environ[FACTORY_ENVIRON_KEY] = own
        request.add_response_callback(own.commit)
        request.add_finished_callback(own.finish)
        return KVSession(core)

    def _tell_middleware_wins(self, middleware_options: Options) -> None:
        """Say once that the factory's own store and options go unused."""
        self._told_middleware_wins = True
        differ = [
            name
            for name in _COOKIE_AND_TIMEOUT_OPTIONS
            if getattr(self.options, name) != getattr(middleware_options, name)
        ]
        if differ:
            # Most likely kvsession.* settings meant for this app, overridden
            # by a middleware (a [filter:kvsession]) configured differently.
            log.warning(
                "a KVSessionMiddleware wraps the Pyramid app: its store and options "
                "serve the sessions, and the session factory's own differ from them "
                "(%s); those of the factory are not used",
                ", ".join(differ),
            )
        else:
            log.info(
                "a KVSessionMiddleware wraps the Pyramid app: its store serves the "
                "sessions, not the session factory's own"
            )


#: The options whose difference between the factory and a middleware in front
#: is worth a warning: they decide the cookie and the sessions' lifetime.
_COOKIE_AND_TIMEOUT_OPTIONS = (
    "cookie_name",
    "cookie_path",
    "cookie_domain",
    "cookie_secure",
    "cookie_httponly",
    "cookie_samesite",
    "cookie_partitioned",
    "idle_timeout",
    "absolute_timeout",
    "key_prefix",
)


class _FactorySession:
    """A session the factory made and commits itself onto Pyramid's response,
    noted in ``environ`` under :data:`FACTORY_ENVIRON_KEY`; its methods are the
    request's response and finished callbacks."""

    __slots__ = ("committed", "finished", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        #: The response callback ran: the session was committed.
        self.committed = False
        #: The request that made the session has finished.
        self.finished = False

    def commit(self, request: Any, response: Any) -> None:
        # Response callbacks run on the final response, the one an exception
        # view made included, and not at all for an unhandled exception: the
        # status decides (a 5xx saves nothing by default), as in the middleware.
        self.committed = True
        core = self.session
        set_cookie, vary = core._commit(response.status_int)
        if set_cookie is not None or vary:
            response.headerlist = finish_headers(
                list(response.headerlist), core.options, set_cookie=set_cookie, vary=vary
            )

    def finish(self, request: Any) -> None:
        self.finished = True
        core = self.session
        if self.committed:
            # A change after the commit (a NewResponse subscriber, a later
            # response callback) is not saved: say so rather than lose it
            # silently (rule 12).
            core._after_response()
            return
        # Never committed. An exception no exception view handled is on its
        # way out (this runs in the ``finally`` of Pyramid's router, where
        # it is the one being handled): nothing is saved then, by design, and
        # a retried attempt ends this way too. Otherwise the session was first
        # used after Pyramid had run the response callbacks (in a NewResponse
        # subscriber or a finished callback), so the commit callback added
        # then never ran and the response went out without the session.
        if sys.exc_info()[1] is None and _changed(core):
            core._log_late_change()


def _changed(core: Session) -> bool:
    """Whether a session that was never committed holds something to save: a
    mutating call, or a nested change that no setter saw."""
    if not core._loaded:
        return False
    if core._mutated:
        return True
    try:
        return core.modified
    except SerializationError:
        return True  # an unstorable value is a change too


@implementer(ICSRFStoragePolicy)
class KVSessionCSRFStoragePolicy:
    """Pyramid's CSRF storage in the session (``"_csrft_"``), without the
    write on a refused request.

    Pyramid's default policy (``LegacySessionCSRFStoragePolicy``) checks a
    token by calling ``get_csrf_token()``, which *makes* a token when the
    session has none: every refused POST from a client without a session
    (a bot at the login form) then stores a new session and gets a cookie.
    This policy checks against the stored token only, so such a request costs
    no store call. Making and reading tokens is the session's, as before.
    :func:`includeme` installs it; an app's own ``set_csrf_storage_policy()``
    wins.
    """

    def new_csrf_token(self, request: Any) -> str:
        return str(request.session.new_csrf_token())

    def get_csrf_token(self, request: Any) -> str:
        return str(request.session.get_csrf_token())

    def check_csrf_token(self, request: Any, supplied_token: str | bytes) -> bool:
        expected = request.session.get(CSRF_TOKEN_KEY)
        if not isinstance(expected, str):
            return False  # no token was ever handed out: nothing can match
        if isinstance(supplied_token, str):
            supplied_token = supplied_token.encode("utf-8", "backslashreplace")
        return hmac.compare_digest(expected.encode("utf-8", "backslashreplace"), supplied_token)


def includeme(config: Any) -> None:
    """``config.include("wsgi_kvsession.integrations.pyramid")``: set the session
    factory, configured by the ``kvsession.*`` settings when there are any
    (:meth:`KVSessionFactory.from_settings`), and the
    :class:`KVSessionCSRFStoragePolicy`. A bad setting fails here."""
    config.set_session_factory(KVSessionFactory.from_settings(config.get_settings()))
    config.set_csrf_storage_policy(KVSessionCSRFStoragePolicy())
