"""Django: ``request.session`` kept in a wsgi_kvsession store, as a session engine.

Two pieces, for two ways of running a Django project::

    # settings.py
    SESSION_ENGINE = "wsgi_kvsession.integrations.django"
    WSGI_KVSESSION_STORE_URL = "redis://localhost:6379/0"
    WSGI_KVSESSION_OPTIONS = {"key_prefix": "session:"}   # optional

:class:`SessionStore` is a session engine (a ``SessionBase``): with Django's
stock ``django.contrib.sessions.middleware.SessionMiddleware`` it behaves as
Django's own backends do (``save(must_create=True)`` raises ``CreateError`` on
an existing key, ``save()`` raises ``UpdateError`` when the record vanished
during the request, which Django turns into ``SessionInterrupted``), and
Django sets the cookie from its ``SESSION_COOKIE_*`` settings.

:class:`SessionMiddleware` replaces Django's middleware in ``MIDDLEWARE`` when
the session should follow the rules of the core (DESIGN.md section 4): writes
only when the bytes changed (nested mutation included), key-level merge of
parallel requests, ``Vary: Cookie``, ``Cache-Control: no-store`` and exactly
one ``Set-Cookie`` per response. ``request.session`` is then a :class:`KVSession`:
Django's session API over the core :class:`~wsgi_kvsession.Session`.

* When a :class:`~wsgi_kvsession.KVSessionMiddleware` wraps the Django WSGI
  application (alone, or a dispatcher mounting Flask, Pyramid and Django apps
  side by side), ``request.META`` *is* the WSGI environ and holds the
  middleware's session: ``request.session`` wraps it, and the WSGI middleware
  loads it, owns the cookie and persists it at its commit point. A value set
  by Flask is read by Django and the other way round, and ``logout()`` in one
  ends the session for all, because they are one object per request and one
  record in the store.
* With no WSGI middleware in front (``runserver``, Django's test ``Client``,
  a server running the bare Django application), the middleware makes that
  session itself (store and options from the settings) and commits it onto
  Django's response, by the same rules.

Why a middleware of our own rather than a :class:`SessionStore` that looks for
the environ session (the other way to share a session with the WSGI
middleware): a session engine is built from a session key alone, never sees
the request, and Django's stock middleware sets a cookie of its own after it;
finding the environ would need request-global state, and two parties (the WSGI
middleware and Django's middleware) would each decide about the same cookie.
A middleware has the request, hands the cookie to exactly one owner, and keeps
the plain engine path exactly Django's. It subclasses Django's middleware, so
the admin's system check (``admin.E410``) accepts it.

Records, keys and cookies are the same in every mode: the record is the
envelope of :mod:`wsgi_kvsession.envelope` with the data in the configured
serializer (tagged JSON by default, never Django's signed pickle-or-JSON
format), under ``store_key(key_prefix, session_id)``; and
``SessionStore.session_key`` is the cookie value the WSGI middleware would set
(the ID, or ``ID.signature`` when ``secret_key`` is configured). So a cookie
issued in one mode opens the same session in the others, and Django's test
``Client`` (``client.session``, ``client.login()``) works with both.

Session keys are IDs of the core: ``secrets.token_urlsafe`` with 256 random
bits by default (Django's are 32 characters of ``[a-z0-9]``, about 165 bits),
made without Django's ``exists()`` round trip (insert-if-absent refuses a
collision), and a key that fails the ID format (or the signature) is treated as
no key at all before any store call.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import math
import threading
import time
from collections.abc import Container, Mapping
from http.cookies import Morsel
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import (
    CreateError,
    SessionBase,
    UpdateError,
)
from django.contrib.sessions.middleware import (
    SessionMiddleware as DjangoSessionMiddleware,
)
from django.core.exceptions import ImproperlyConfigured
from django.utils.cache import patch_vary_headers
from django.utils.module_loading import import_string

from .. import envelope
from ..events import SessionEvent, emit
from ..ids import store_key
from ..middleware import ENVIRON_KEY
from ..options import DEFAULT_ABSOLUTE_TIMEOUT, Options, SessionOptions
from ..serializers import SerializationError
from ..session import (
    _IMMUTABLE,
    MAX_INSERT_ATTEMPTS,
    MAX_MERGE_ATTEMPTS,
    Session,
    decode_record,
    merge_backoff,
    merge_changes,
)
from ..stores import store_from_url
from ..stores.base import (
    Record,
    Store,
    StoreError,
    Version,
    insert_with_user,
    update_with_user,
    user_text,
)
from .base import SessionProxy

__all__ = [
    "DEFAULT_STORE_URL",
    "CreateError",
    "KVSession",
    "SessionMiddleware",
    "SessionStore",
    "UpdateError",
    "get_options",
    "get_store",
    "session_options",
]

log = logging.getLogger(__name__)

#: The store when ``WSGI_KVSESSION_STORE_URL`` is not set: the embedded SQLite
#: store, in ``sessions.db`` of the working directory. It needs no server and is
#: shared by the worker processes of one machine; set the URL for anything else.
DEFAULT_STORE_URL = "sqlite:///sessions.db"

#: ``django.contrib.auth.SESSION_KEY``: the logged-in user's primary key. Not
#: imported, because importing ``django.contrib.auth`` needs the app registry.
_AUTH_USER_KEY = "_auth_user_id"
#: Where Django's ``set_expiry()`` keeps a session's own expiry.
_EXPIRY_KEY = "_session_expiry"
#: ``environ`` key marking a session :class:`SessionMiddleware` made itself (no
#: WSGI middleware in front), which it must therefore commit.
_OWN_SESSION_KEY = "wsgi_kvsession.django.own_session"

#: Django settings each option is read from (explicit WSGI_KVSESSION_OPTIONS win).
SETTINGS_KEYS = {
    "cookie_name": "SESSION_COOKIE_NAME",
    "cookie_path": "SESSION_COOKIE_PATH",
    "cookie_domain": "SESSION_COOKIE_DOMAIN",
    "cookie_secure": "SESSION_COOKIE_SECURE",
    "cookie_httponly": "SESSION_COOKIE_HTTPONLY",
    "cookie_samesite": "SESSION_COOKIE_SAMESITE",
    "idle_timeout": "SESSION_COOKIE_AGE",
    "absolute_timeout": "SESSION_COOKIE_AGE",
    "cookie_refresh": "SESSION_SAVE_EVERY_REQUEST",
    "permanent_by_default": "SESSION_EXPIRE_AT_BROWSER_CLOSE",
}


# ---------------------------------------------------------------- settings

_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()
_default_url_warned = False
#: The last configuration seen and its Options, as ONE tuple so that threads
#: never pair one configuration with another's options.
_cached_options: tuple[Any, Options] | None = None


def get_store() -> Store:
    """The store of the settings: ``WSGI_KVSESSION_STORE`` (a store object, for
    stores built in code and for tests), else the store named by
    ``WSGI_KVSESSION_STORE_URL`` (default :data:`DEFAULT_STORE_URL`).

    A URL's store is built once per process (thread-safe) and then shared by
    every request, so its connection pool is too.
    """
    configured = getattr(settings, "WSGI_KVSESSION_STORE", None)
    if configured is not None:
        if not isinstance(configured, Store):
            raise ImproperlyConfigured(
                f"WSGI_KVSESSION_STORE={configured!r}: give a wsgi_kvsession store, e.g. "
                "RedisStore(...), or set WSGI_KVSESSION_STORE_URL instead"
            )
        return configured
    url = getattr(settings, "WSGI_KVSESSION_STORE_URL", None)
    if url is None:
        url = DEFAULT_STORE_URL
        _warn_default_url()
    if not isinstance(url, str):
        raise ImproperlyConfigured(
            f"WSGI_KVSESSION_STORE_URL must be a str such as 'redis://localhost:6379/0', "
            f"not {type(url).__name__}"
        )
    store = _stores.get(url)
    if store is None:
        with _stores_lock:
            store = _stores.get(url)
            if store is None:
                try:
                    store = store_from_url(url)
                except ValueError as exc:
                    raise ImproperlyConfigured(f"WSGI_KVSESSION_STORE_URL: {exc}") from None
                _stores[url] = store
    return store


def _warn_default_url() -> None:
    global _default_url_warned
    if not _default_url_warned and not settings.DEBUG:
        _default_url_warned = True
        log.warning(
            "WSGI_KVSESSION_STORE_URL is not set: sessions go to %s (sessions.db in the "
            "working directory); set it to the store every server process shares",
            DEFAULT_STORE_URL,
        )


def session_options() -> SessionOptions:
    """The middleware options the settings ask for: Django's ``SESSION_COOKIE_*``
    settings under ``WSGI_KVSESSION_OPTIONS`` (which win).

    Give them to a :class:`~wsgi_kvsession.KVSessionMiddleware` wrapping the
    project (``KVSessionMiddleware(application, get_store(), **session_options())``)
    so that it and Django's test client agree on the cookie.
    """
    age = settings.SESSION_COOKIE_AGE
    samesite = settings.SESSION_COOKIE_SAMESITE
    from_settings: dict[str, Any] = {
        "cookie_name": settings.SESSION_COOKIE_NAME,
        "cookie_path": settings.SESSION_COOKIE_PATH,
        "cookie_domain": settings.SESSION_COOKIE_DOMAIN,
        "cookie_secure": settings.SESSION_COOKIE_SECURE,
        "cookie_httponly": settings.SESSION_COOKIE_HTTPONLY,
        # Django's False means "send no SameSite attribute", our None.
        "cookie_samesite": samesite if samesite else None,
        "idle_timeout": age,
        # The core's 30-day absolute timeout would silently cut a longer
        # SESSION_COOKIE_AGE short, so it is never below it.
        "absolute_timeout": max(DEFAULT_ABSOLUTE_TIMEOUT.total_seconds(), age)
        if isinstance(age, (int, float)) and not isinstance(age, bool)
        else age,
        "cookie_refresh": "every_request" if settings.SESSION_SAVE_EVERY_REQUEST else "on_touch",
        # The cookie kind of a session no set_expiry() spoke for: for a WSGI
        # middleware built from these options, Django's policy is the site's.
        "permanent_by_default": not settings.SESSION_EXPIRE_AT_BROWSER_CLOSE,
    }
    explicit = getattr(settings, "WSGI_KVSESSION_OPTIONS", None) or {}
    if not isinstance(explicit, Mapping):
        raise ImproperlyConfigured(
            f"WSGI_KVSESSION_OPTIONS must be a dict of middleware options such as "
            f"{{'key_prefix': 'session:'}}, not {type(explicit).__name__}"
        )
    return cast(SessionOptions, {**from_settings, **explicit})


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def get_options() -> Options:
    """The validated :class:`~wsgi_kvsession.options.Options` of the settings,
    built once per distinct configuration.

    A bad value raises ``ImproperlyConfigured`` naming the Django setting.
    """
    global _cached_options
    kwargs = session_options()
    key: Any = tuple(sorted((name, _freeze(value)) for name, value in kwargs.items()))
    try:
        hash(key)
    except TypeError:
        key = None  # an unhashable option value: build every time
    cached = _cached_options
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    try:
        options = Options.from_kwargs(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        explicit = getattr(settings, "WSGI_KVSESSION_OPTIONS", None) or {}
        names = sorted(
            {
                SETTINGS_KEYS[option]
                for option in SETTINGS_KEYS
                if option in message and option not in explicit
            }
        )
        names += ["WSGI_KVSESSION_OPTIONS"] if any(o in message for o in explicit) else []
        where = f" (from settings.{', settings.'.join(names)})" if names else ""
        raise ImproperlyConfigured(f"{message}{where}") from None
    if key is not None:
        _cached_options = (key, options)
    return options


# ----------------------------------------------------------------- records


def _user_id(value: Any) -> str | int | None:
    """The ``user_id`` of the record for the value of ``_auth_user_id``."""
    if type(value) is str or type(value) is int:
        return value
    return None


def _expiry_deadline(expiry: Any) -> tuple[float | None, float | None]:
    """What a ``set_expiry()`` value means on the server: ``(idle seconds,
    None)`` for seconds of inactivity, ``(None, unix time)`` for a fixed end,
    ``(None, None)`` for the default policy (0, None, or a value that is no
    expiry Django would write)."""
    if type(expiry) is int or type(expiry) is float:
        if not math.isfinite(expiry) or expiry == 0:
            return None, None
        if expiry < 0:
            return None, 0.0  # Django's backends store a past date: over at once
        return float(expiry), None
    if isinstance(expiry, str):
        try:
            expiry = datetime.datetime.fromisoformat(expiry)
        except ValueError:
            return None, None
    if isinstance(expiry, datetime.datetime):
        if expiry.tzinfo is None and settings.USE_TZ:
            expiry = expiry.replace(tzinfo=datetime.timezone.utc)
        try:
            return None, expiry.timestamp()
        except (OverflowError, OSError, ValueError):
            return None, None
    return None, None


def _deadline(options: Options, expiry: Any, created: float, now: float) -> float:
    """When a session with this ``_session_expiry`` (Django's ``set_expiry``)
    expires if it is active at ``now``: its own expiry when it has one, else
    the idle timeout; the absolute timeout caps both."""
    idle, end = _expiry_deadline(expiry)
    if idle is None and end is None:
        return options.expires_at(created, now)
    deadline = now + idle if idle is not None else cast(float, end)
    if options.absolute_timeout is not None:
        deadline = min(deadline, created + options.absolute_timeout)
    return deadline


# ------------------------------------------------------ the session engine


class SessionStore(SessionBase):  # type: ignore[misc]
    """Django's session engine over a wsgi_kvsession store.

    ``SESSION_ENGINE = "wsgi_kvsession.integrations.django"``. ``session_key``
    is the cookie value (the ID, signed when ``secret_key`` is set); the record
    lives under ``store_key(key_prefix, ID)`` in the envelope every wsgi_kvsession
    session uses, so Flask, Pyramid and plain WSGI apps on the same store read
    it. Behaves as Django's own backends do, and beyond them:

    * ``modified`` is also true after a change no setter saw (nested
      mutation such as ``request.session["cart"].append(x)``), because the data
      is compared with the loaded bytes; ``save()`` of data that compares equal
      only moves the expiry (a ``touch``), it does not rewrite the record.
    * ``save()`` is an update-if-exists with compare-and-set: a record deleted
      meanwhile raises ``UpdateError`` (never brought back), and a record
      another request changed meanwhile gets this request's changes merged in
      key by key.
    * ``cycle_key()`` deletes the old record at once and stores the data under
      the new key at the next ``save()`` (one insert, not an insert and an
      update); the creation time is kept, so logging in does not extend the
      absolute timeout.
    * Loading enforces the idle and absolute timeouts of the options and
      slides the idle deadline (a ``touch``, at most once per
      ``touch_interval``), so a session that is only read stays alive.
    """

    def __init__(self, session_key: str | None = None) -> None:
        # Before SessionBase.__init__, which validates the key with them.
        self._kv_options = get_options()
        self._kv_store = get_store()
        self._kv_modified = False
        self._kv_created: float | None = None
        self._kv_user_id: str | int | None = None
        self._kv_had_auth = False
        self._kv_clear_record_state()
        super().__init__(session_key)

    def _kv_clear_record_state(self) -> None:
        """Forget what is known of the record of the current key."""
        #: A record is known to exist under the current key (loaded or written).
        self._kv_known = False
        #: Its version when loaded, for compare-and-set; None after our own write.
        self._kv_version: Version | None = None
        self._kv_expires_at = 0.0
        #: The data as loaded or last written (b"" when unknown).
        self._kv_data = b""
        #: The whole record value this instance last wrote (b"" when none):
        #: the record is still ours while it holds exactly these bytes.
        self._kv_value = b""
        self._kv_permanent: bool | None = None
        #: The current key is new (cycle_key): the next save inserts it.
        self._kv_pending = False
        #: The store failed (on_store_error="empty"): nothing is saved.
        self._kv_failed = False

    # -- keys ------------------------------------------------------------

    def _validate_session_key(self, key: Any) -> bool:
        return isinstance(key, str) and self._kv_options.ids.decode(key) is not None

    def _kv_set_session_key(self, value: Any) -> None:
        old = getattr(self, "_SessionBase__session_key", None)
        SessionBase._set_session_key(self, value)
        if self._kv_id(old) != self._kv_id(self.session_key):
            self._kv_clear_record_state()

    # Django keeps the key in a name-mangled attribute behind these two.
    _session_key = property(SessionBase._get_session_key, _kv_set_session_key)
    session_key = property(SessionBase._get_session_key)

    def _kv_id(self, session_key: Any) -> str | None:
        """The session ID in a session key (cookie value), or None."""
        if not isinstance(session_key, str):
            return None
        return self._kv_options.ids.decode(session_key)

    def _kv_key(self, session_id: str) -> str:
        return store_key(self._kv_options.key_prefix, session_id)

    def _get_new_session_key(self) -> str:
        # 256 random bits (by default) and insert-if-absent on save: no
        # exists() round trip per new session, unlike SessionBase.
        options = self._kv_options
        return options.ids.encode(options.ids.new_id())

    async def _aget_new_session_key(self) -> str:
        return self._get_new_session_key()

    # -- modified --------------------------------------------------------

    @property
    def modified(self) -> bool:
        """True after a change: set by every setter as in Django, and also
        when the data no longer encodes to the loaded bytes (nested mutation)."""
        if self._kv_modified:
            return True
        data = self.__dict__.get("_session_cache")
        if not data or not self._kv_data:
            return False
        if all(type(v) in _IMMUTABLE for v in data.values()):
            return False  # only a setter can change these, and it sets the flag
        try:
            return bool(self._kv_options.serializer.dumps(data) != self._kv_data)
        except SerializationError:
            return True  # save() raises the clear error

    @modified.setter
    def modified(self, value: bool) -> None:
        self._kv_modified = bool(value)

    def get_session_cookie_age(self) -> int:
        idle = self._kv_options.idle_timeout
        return int(idle) if idle is not None else int(settings.SESSION_COOKIE_AGE)

    # -- SessionBase: storage --------------------------------------------

    def load(self) -> dict[str, Any]:
        self._kv_clear_record_state()
        session_id = self._kv_id(self.session_key)
        if session_id is None:
            self._session_key = None
            return {}
        options = self._kv_options
        key = self._kv_key(session_id)
        now = time.time()
        try:
            record = self._kv_store.load(key)
        except StoreError:
            if options.on_store_error == "raise":
                raise
            log.exception("session store failed; continuing with an empty session")
            # Keep the key: the cookie stays as it is and nothing is saved,
            # so the user's session is not replaced by an empty one.
            self._kv_failed = True
            return {}
        if record is None:
            # Strict mode (rule 3): an unknown ID is never adopted.
            emit(options.on_event, SessionEvent.UNKNOWN, options.ids.log_hash(session_id))
            self._session_key = None
            return {}
        try:
            stored, data = decode_record(options, record, now)
        except SerializationError as exc:
            emit(
                options.on_event,
                SessionEvent.UNREADABLE,
                options.ids.log_hash(session_id),
                str(exc),
            )
            self._session_key = None
            return {}
        absolute = options.absolute_timeout
        if absolute is not None and stored.created + absolute <= now:
            emit(options.on_event, SessionEvent.EXPIRED, options.ids.log_hash(session_id))
            self._session_key = None
            return {}
        self._kv_remember(record, stored, data)
        if not options.ids.signed_with_current_key(cast(str, self.session_key), session_id):
            # Signed with a fallback key: have Django send it again, newly
            # signed, before that key is retired (the save is only a touch).
            self._session_key = options.ids.encode(session_id)
            self.modified = True
        # Slide the idle deadline of a session that is only read.
        deadline = _deadline(options, data.get(_EXPIRY_KEY), stored.created, now)
        moved = deadline - record.expires_at
        if moved > 0 and moved >= options.touch_interval:
            try:
                touched = self._kv_store.touch(key, deadline)
            except StoreError:
                if options.on_store_error == "raise":
                    raise
                log.exception("session store failed; the idle deadline was not moved")
                touched = True  # the data was read; only the deadline stays
            if not touched:
                emit(options.on_event, SessionEvent.GONE, options.ids.log_hash(session_id))
                self._session_key = None
                return {}
            self._kv_expires_at = max(self._kv_expires_at, deadline)
        return data

    def exists(self, session_key: Any) -> bool:
        session_id = self._kv_id(session_key)
        if session_id is None:
            return False
        return self._kv_store.load(self._kv_key(session_id)) is not None

    def create(self) -> None:
        created = time.time()
        for _ in range(MAX_INSERT_ATTEMPTS):
            self._session_key = self._get_new_session_key()
            self._kv_created = created
            self._kv_user_id = None
            self._kv_had_auth = False
            try:
                self.save(must_create=True)
            except CreateError:
                log.warning("session ID collision in %r; drawing another ID", self._kv_store)
                continue
            self.modified = True
            return
        raise StoreError(
            f"{self._kv_store!r}: no free session ID after {MAX_INSERT_ATTEMPTS} attempts"
        )

    def save(self, must_create: bool = False) -> None:
        """Store the session: insert-if-absent when ``must_create`` (else
        ``CreateError``), otherwise update-if-exists (else ``UpdateError``)."""
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)
        if self.session_key is None:  # loading found no record
            return self.create()
        if self._kv_failed:
            return  # on_store_error="empty": this session is not saved
        try:
            self._kv_save(data, must_create)
        except StoreError:
            if self._kv_options.on_store_error == "raise":
                raise
            log.exception("session store failed; the session was not saved")

    def _kv_save(self, data: dict[str, Any], must_create: bool) -> None:
        options = self._kv_options
        now = time.time()
        inserting = must_create or self._kv_pending
        if not inserting and not self._kv_known:
            # A key never read by this instance (clear() then save()): read
            # the record first, so that its creation time is kept (else the
            # absolute timeout would restart) and the write is a compare-and-set.
            self._kv_read_record(now)
        if self._kv_created is None:
            self._kv_created = now
        created = self._kv_created
        deadline = _deadline(options, data.get(_EXPIRY_KEY), created, now)
        encoded = options.serializer.dumps(data)
        permanent = not self.get_expire_at_browser_close()
        user_id = self._kv_user_id
        if _AUTH_USER_KEY in data:
            user_id = _user_id(data[_AUTH_USER_KEY])
        elif self._kv_had_auth:
            user_id = None  # logged out by removing the key
        if inserting:
            self._kv_insert(data, encoded, permanent, user_id, deadline, now, must_create)
            return
        session_id = cast(str, self._kv_id(self.session_key))
        key = self._kv_key(session_id)
        if deadline <= now:
            # An expiry in the past (set_expiry(-x)): the session ends now.
            self._kv_store.delete(key)
            self._kv_clear_record_state()
            return
        if (
            self._kv_known
            and encoded == self._kv_data
            and permanent == self._kv_permanent
            and user_id == self._kv_user_id
        ):
            # Nothing changed (an equal value assigned, a change reverted):
            # move the expiry only. The touch also says whether the record
            # is still there, as an update would.
            if not self._kv_store.touch(key, deadline):
                raise UpdateError
            self._kv_expires_at = deadline
            return
        version = self._kv_version
        if version is None:
            # This instance wrote the record last (a view's save(), then the
            # middleware's), and a write does not tell its new version. Read
            # it, so that this save is a compare-and-set too and cannot
            # overwrite what a parallel request wrote since.
            current = self._kv_store.load(key)
            if current is None:
                raise UpdateError  # deleted meanwhile (logged out elsewhere)
            if current.value != self._kv_value:
                # Changed by another request: merge key by key, with what
                # this instance last wrote as the common base.
                self._kv_merge(key, data, permanent, user_id, deadline, now)
                return
            version = current.version
        value = self._kv_pack(created, now, permanent, user_id, encoded)
        if update_with_user(self._kv_store, key, value, deadline, version, user_text(user_id)):
            self._kv_written(data, value, encoded, permanent, user_id, deadline)
            return
        self._kv_merge(key, data, permanent, user_id, deadline, now)

    def _kv_read_record(self, now: float) -> None:
        """Learn the state of the record of the current key; ``UpdateError``
        when there is none (or none this engine can read)."""
        options = self._kv_options
        current = self._kv_store.load(self._kv_key(cast(str, self._kv_id(self.session_key))))
        if current is None:
            raise UpdateError
        try:
            stored, data = decode_record(options, current, now)
        except SerializationError:
            raise UpdateError from None
        self._kv_remember(current, stored, data)

    def _kv_remember(self, record: Record, stored: envelope.Envelope, data: dict[str, Any]) -> None:
        """Note the state of the record this engine read (what a save compares to)."""
        self._kv_known = True
        self._kv_version = record.version
        self._kv_expires_at = record.expires_at
        self._kv_data = stored.data
        self._kv_permanent = stored.permanent
        self._kv_created = stored.created
        self._kv_user_id = stored.user_id
        self._kv_had_auth = _AUTH_USER_KEY in data

    def _kv_insert(
        self,
        data: dict[str, Any],
        encoded: bytes,
        permanent: bool,
        user_id: str | int | None,
        deadline: float,
        now: float,
        must_create: bool,
    ) -> None:
        if deadline <= now:
            # Already expired (Django #19200): stored nowhere, as if it had
            # expired at once.
            self._kv_pending = False
            return
        created = cast(float, self._kv_created)
        value = self._kv_pack(created, now, permanent, user_id, encoded)
        for _ in range(MAX_INSERT_ATTEMPTS):
            key = self._kv_key(cast(str, self._kv_id(self.session_key)))
            if insert_with_user(self._kv_store, key, value, deadline, user_text(user_id)):
                self._kv_pending = False
                self._kv_written(data, value, encoded, permanent, user_id, deadline)
                options = self._kv_options
                hashed = options.ids.log_hash(cast(str, self._kv_id(self.session_key)))
                emit(options.on_event, SessionEvent.CREATED, hashed)
                return
            if must_create:
                raise CreateError
            # A key cycle_key() drew is taken: never share a record, draw again.
            log.warning("session ID collision in %r; drawing another ID", self._kv_store)
            self._kv_renew_key()
        raise StoreError(
            f"{self._kv_store!r}: no free session ID after {MAX_INSERT_ATTEMPTS} attempts"
        )

    def _kv_renew_key(self) -> None:
        """A new, not yet stored key for the same session (created time and
        tie to a user kept)."""
        created, user_id, had_auth = self._kv_created, self._kv_user_id, self._kv_had_auth
        self._session_key = self._get_new_session_key()
        self._kv_created, self._kv_user_id, self._kv_had_auth = created, user_id, had_auth
        self._kv_pending = True

    def _kv_pack(
        self, created: float, now: float, permanent: bool, user_id: str | int | None, data: bytes
    ) -> bytes:
        return envelope.pack(
            envelope.Envelope(
                created=created,
                written=now,
                permanent=permanent,
                user_id=user_id,
                serializer=self._kv_options.serializer.name,
                data=data,
            )
        )

    def _kv_written(
        self,
        data: dict[str, Any],
        value: bytes,
        encoded: bytes,
        permanent: bool,
        user_id: str | int | None,
        deadline: float,
    ) -> None:
        """Remember what was just written as the state of the record."""
        self._kv_known = True
        self._kv_version = None  # unknown after a write; a later save reads it first
        self._kv_value = value
        self._kv_data = encoded
        self._kv_permanent = permanent
        self._kv_user_id = user_id
        self._kv_had_auth = _AUTH_USER_KEY in data
        self._kv_expires_at = deadline

    def _kv_merge(
        self,
        key: str,
        data: dict[str, Any],
        permanent: bool,
        user_id: str | int | None,
        deadline: float,
        now: float,
    ) -> None:
        """Another request wrote the record since this instance loaded (or
        last wrote) it: apply this request's key-level changes to the newer
        data, compare-and-set again."""
        options = self._kv_options
        loaded = options.serializer.loads(self._kv_data) if self._kv_data else {}
        own_permanent = permanent != self._kv_permanent
        own_user = user_id != self._kv_user_id
        for attempt in range(MAX_MERGE_ATTEMPTS):
            current = self._kv_store.load(key)
            if current is None:
                raise UpdateError  # deleted meanwhile (logged out elsewhere)
            try:
                theirs, their_data = decode_record(options, current, now)
            except SerializationError as exc:
                log.warning(
                    "session %s became unreadable: %s",
                    key[len(options.key_prefix) :][:12],
                    exc,
                )
                raise UpdateError from None
            merged = merge_changes(options.serializer, loaded, data, their_data)
            merged_permanent = permanent if own_permanent else theirs.permanent
            merged_user = user_id if own_user else theirs.user_id
            encoded = options.serializer.dumps(merged)
            value = self._kv_pack(theirs.created, now, merged_permanent, merged_user, encoded)
            user = user_text(merged_user)
            if update_with_user(self._kv_store, key, value, deadline, current.version, user):
                self._session_cache = merged
                self._kv_created = theirs.created
                self._kv_written(merged, value, encoded, merged_permanent, merged_user, deadline)
                return
            time.sleep(merge_backoff(attempt))
        raise StoreError(
            f"{self._kv_store!r}: could not save the session after {MAX_MERGE_ATTEMPTS} "
            "concurrent changes"
        )

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        session_id = self._kv_id(session_key)
        if session_id is None:
            return
        self._kv_store.delete(self._kv_key(session_id))
        if session_id == self._kv_id(self.session_key):
            self._kv_clear_record_state()

    def cycle_key(self) -> None:
        """A new key for the same data; the old record is deleted at once and
        the data stored under the new key by the next ``save()``."""
        data = self._session
        old = self.session_key
        if self._kv_created is None:
            self._kv_created = time.time()
        self._kv_renew_key()
        self._session_cache = data
        self.modified = True
        if old:
            self.delete(old)

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    @classmethod
    def clear_expired(cls) -> None:
        """Remove expired records (``manage.py clearsessions``); a no-op for
        stores that expire records themselves (Redis, memcached)."""
        removed = get_store().cleanup()
        if removed:
            log.info("removed %d expired session record(s)", removed)


# ------------------------------------------- the session of the middleware


class KVSession(SessionProxy, SessionBase):  # type: ignore[misc]
    """``request.session`` under :class:`SessionMiddleware`: Django's session
    API over the request's core :class:`~wsgi_kvsession.Session`.

    Every read and write goes to the core session (``raw``), so Django code
    sees exactly what the WSGI middleware (or :class:`SessionMiddleware`)
    persists when the response starts, and what Flask or Pyramid see in the
    same request. It is the :class:`~wsgi_kvsession.integrations.base.SessionProxy`
    of the other integrations too (``id``, ``user_id``, ``regenerate()``).
    Differences from Django's backends, all because the core saves once, at
    the commit point:

    * ``save()`` stores nothing by itself; for a new session it assigns the ID
      at once, so ``session_key`` is known. ``create()`` and ``cycle_key()``
      give a new ID (the old record deleted at once, the data kept);
      ``flush()`` and ``delete()`` end the session (record deleted, data
      cleared, cookie expired with the response).
    * Changes are found by comparing bytes: assigning an equal value writes
      nothing, nested mutation is saved without ``modified = True``.
    * A session another request deleted meanwhile is not written back; the
      change is dropped and logged (Django would answer 400 with
      ``SessionInterrupted``).
    """

    # SessionProxy keeps the core session in the slot ``_session``, which also
    # stands in for SessionBase's ``_session`` property (its lazily loaded
    # dict): every SessionBase method (``get``, ``keys``, ``items``,
    # ``has_key``, ``get_expiry_age``...) thus works on the core session.

    def __init__(self, session: Session) -> None:
        SessionProxy.__init__(self, session)
        self._base_options = session.options
        # Not SessionBase.__init__: of what it sets, the key, ``accessed``
        # and ``modified`` are the core session's (properties below), and the
        # serializer it imports on every request is never used for storage
        # (``serializer`` below imports it if encode()/decode() are called).
        self._session_cache = session
        #: The session's own expiry was removed in this request
        #: (``set_expiry(None)``, ``clear()``): the default policy applies again.
        self._expiry_removed = False

    @functools.cached_property
    def serializer(self) -> Any:
        """Django's ``SESSION_SERIALIZER``, for ``encode()``/``decode()`` only
        (the record is written with the core's serializer)."""
        return import_string(settings.SESSION_SERIALIZER)

    # -- attributes ------------------------------------------------------

    @property
    def session_key(self) -> str | None:
        """The cookie value of the session (its ID, signed when signing is on),
        or None while it has no ID (new and empty)."""
        session_id = self._session.id
        return None if session_id is None else self._session.options.ids.encode(session_id)

    @property
    def _session_key(self) -> str | None:
        # SessionBase's private name for the key, read by some of its
        # methods; the key is the core session's.
        return self.session_key

    def is_empty(self) -> bool:
        return self._session.id is None and len(self._session) == 0

    def get_session_cookie_age(self) -> int:
        idle = self._base_options.idle_timeout
        return int(idle) if idle is not None else int(settings.SESSION_COOKIE_AGE)

    # -- the mapping (no forced write: the core compares bytes) ---------

    def _tie(self, key: str) -> None:
        """Keep the record's user tie in step with Django's auth key (set or
        removed), so that ``SessionManager.sessions_of()``/``revoke_user()``
        find Django logins; note the removal of the session's own expiry
        (``set_expiry(None)`` deletes the key)."""
        if key == _AUTH_USER_KEY:
            self._session.user_id = _user_id(self._session.get(key))
        elif key == _EXPIRY_KEY and key not in self._session:
            self._expiry_removed = True

    def __setitem__(self, key: str, value: Any) -> None:
        self._session[key] = value
        self._tie(key)

    def __delitem__(self, key: str) -> None:
        del self._session[key]
        self._tie(key)

    def pop(self, key: str, *default: Any) -> Any:
        present = key in self._session
        value = self._session.pop(key, *default)
        if present:  # popping an absent key must not untie another framework's user
            self._tie(key)
        return value

    def setdefault(self, key: str, value: Any = None) -> Any:
        present = key in self._session
        result = self._session.setdefault(key, value)
        if not present:
            self._tie(key)
        return result

    def update(self, dict_: Any = (), /, **kwargs: Any) -> None:
        for key, value in dict(dict_, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        if _EXPIRY_KEY in self._session:
            self._expiry_removed = True  # back to the default policy, as in Django
        self._session.clear()

    async def _aget_session(self, no_load: bool = False) -> Session:
        # The first access loads the session from the store: off the event loop.
        if not self._session.accessed:
            await sync_to_async(self._session.__len__)()
        return self._session

    async def aset(self, key: str, value: Any) -> None:
        await sync_to_async(self.__setitem__)(key, value)

    async def apop(self, key: str, *default: Any) -> Any:
        return await sync_to_async(self.pop)(key, *default)

    async def asetdefault(self, key: str, value: Any) -> Any:
        return await sync_to_async(self.setdefault)(key, value)

    async def aupdate(self, dict_: Mapping[str, Any]) -> None:
        await sync_to_async(self.update)(dict_)

    # -- lifecycle -------------------------------------------------------

    def load(self) -> dict[str, Any]:
        return dict(self._session.items())

    def exists(self, session_key: Any) -> bool:
        core = self._session
        if not isinstance(session_key, str):
            return False
        session_id = core.options.ids.decode(session_key)
        if session_id is None:
            return False
        return core.store.load(store_key(core.options.key_prefix, session_id)) is not None

    def _get_new_session_key(self) -> str:
        ids = self._session.options.ids
        return ids.encode(ids.new_id())

    async def _aget_new_session_key(self) -> str:
        return self._get_new_session_key()

    def create(self) -> None:
        """A new ID for the session, now (the old record, if any, deleted)."""
        self._session.regenerate()

    def save(self, must_create: bool = False) -> None:
        """Nothing to do: the session is saved when the response starts. A
        new session gets its ID now, so that ``session_key`` is known; it is
        stored then if it holds data (a new, empty session never is)."""
        core = self._session
        if must_create and not core.new:
            raise CreateError
        if core.id is None:
            core.regenerate()

    def delete(self, session_key: str | None = None) -> None:
        core = self._session
        if session_key is None or session_key == self.session_key:
            core.destroy()
            return
        session_id = core.options.ids.decode(session_key)
        if session_id is not None:
            core.store.delete(store_key(core.options.key_prefix, session_id))

    def cycle_key(self) -> None:
        """New ID, same data (call it at login; ``django.contrib.auth.login()``
        does): the old record is deleted at once."""
        self._session.regenerate()

    def flush(self) -> None:
        """End the session: record deleted now, data cleared, cookie expired
        with the response (``django.contrib.auth.logout()`` calls it)."""
        self._session.destroy()

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    async def aflush(self) -> None:
        await sync_to_async(self.flush)()

    @classmethod
    def clear_expired(cls) -> None:
        SessionStore.clear_expired()

    # -- before the commit point -----------------------------------------

    def _prepare_commit(self, *, own: bool = True) -> None:
        """Turn Django's expiry policy into the core's terms before the session
        is committed: the cookie kind (``set_expiry(0)``,
        ``SESSION_EXPIRE_AT_BROWSER_CLOSE``) and a session's own expiry.

        ``own`` is False behind a WSGI middleware: the cookie kind is then the
        site's (its ``permanent_by_default``, or what another framework set),
        and only an explicit ``set_expiry()`` changes it.
        """
        core = self._session
        if not core.accessed:
            return  # rule 6: never loaded, nothing to decide
        options = self._base_options
        expiry = core.get(_EXPIRY_KEY)
        idle, end = _expiry_deadline(expiry)
        if idle is not None:
            options = dataclasses.replace(
                options, idle_timeout=idle, touch_interval=min(options.touch_interval, idle / 4)
            )
        elif end is not None:
            remaining = end - core.created.timestamp()
            if end <= time.time() or remaining <= 0:
                log.info("session ended by its own expiry (set_expiry)")
                core.destroy()
                return
            absolute = options.absolute_timeout
            options = dataclasses.replace(
                options,
                absolute_timeout=remaining if absolute is None else min(absolute, remaining),
            )
        if core.options is not options:
            core.options = options
        if not core.modified:
            # Only when the session is written anyway: applying Django's
            # default (permanent cookies) to every read would rewrite
            # sessions a framework with the opposite default shares.
            return
        if own:
            core.permanent = not self.get_expire_at_browser_close()
        elif expiry is not None:
            core.permanent = expiry != 0  # set_expiry(): Django's word counts
        elif self._expiry_removed:
            # set_expiry(None) goes back to the default policy: the site's.
            core.permanent = core.options.permanent_by_default
        # Otherwise SESSION_EXPIRE_AT_BROWSER_CLOSE is not the site's policy
        # (docs/mixed.rst): the cookie kind stays as the site made it.


# ---------------------------------------------------------- the middleware


class _SetCookieMorsel(Morsel[str]):
    """A cookie whose ``Set-Cookie`` text is the core's (Werkzeug's format,
    ``Partitioned`` included), with its fields filled in for code that reads
    ``response.cookies`` (Django's test client among them)."""

    def __init__(self, header: str) -> None:
        super().__init__()
        self._header = header
        first, *attributes = header.split(";")
        name, _, value = first.partition("=")
        self.set(name.strip(), value.strip(), value.strip())
        for attribute in attributes:
            key, sep, attribute_value = attribute.strip().partition("=")
            key = key.lower()
            if key in _MORSEL_ATTRIBUTES:
                self[key] = attribute_value if sep else True

    def OutputString(self, attrs: Container[str] | None = None) -> str:
        return self._header

    # Morsel's pickling and copy() keep only the name and value; the header
    # text is the cookie, so a copy (a response pickled by Django's cache
    # middleware, a deep-copied response) is made again from it.
    def __reduce__(self) -> tuple[type[_SetCookieMorsel], tuple[str]]:
        return (_SetCookieMorsel, (self._header,))

    def copy(self) -> _SetCookieMorsel:
        return _SetCookieMorsel(self._header)


#: The cookie attributes a ``Morsel`` knows (``Partitioned`` only from Python 3.14).
_MORSEL_ATTRIBUTES = frozenset(Morsel._reserved)  # type: ignore[attr-defined]


class _LateChangeCheck:
    """A response closer reporting changes made to the session after it was
    committed (by a streaming body, or by a middleware above ours).

    A pickled or copied response (Django's cache middleware pickles the ones
    it caches) gets a closer that does nothing: the copy is not the response
    of the request, and the session (with its store's locks and connections)
    must not be pickled with it.
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session | None = None) -> None:
        self._session = session

    def __call__(self) -> None:
        if self._session is not None:
            self._session._after_response()

    def __reduce__(self) -> tuple[type[_LateChangeCheck], tuple[()]]:
        return (_LateChangeCheck, ())


def _finish_response(response: Any, options: Options, set_cookie: str | None, vary: bool) -> None:
    """Apply the core's headers to a Django response (as ``finish_headers``
    does to a WSGI header list)."""
    if vary:
        patch_vary_headers(response, ("Cookie",))
    if set_cookie is not None:
        # Rule 5: one Set-Cookie for the session. Cookies are keyed by name,
        # so ours replaces one the view set under the same name.
        response.cookies[options.cookie_name] = _SetCookieMorsel(set_cookie)
        response.headers["Cache-Control"] = "no-store"


class SessionMiddleware(DjangoSessionMiddleware):  # type: ignore[misc]
    """Use it in ``MIDDLEWARE`` instead of
    ``django.contrib.sessions.middleware.SessionMiddleware``:
    ``request.session`` becomes a :class:`KVSession` over the core session.

    Behind a :class:`~wsgi_kvsession.KVSessionMiddleware` it wraps that
    middleware's session (whose store, options and cookie are the ones that
    count) and leaves the commit to it; without one it makes the session from
    the settings and commits it onto the response itself.
    """

    def process_request(self, request: Any) -> None:
        environ = request.META
        core = environ.get(ENVIRON_KEY)
        if not isinstance(core, Session):
            core = Session(get_store(), get_options(), environ)
            environ[ENVIRON_KEY] = core
            environ[_OWN_SESSION_KEY] = core
        request.session = KVSession(core)

    def process_response(self, request: Any, response: Any) -> Any:
        session = getattr(request, "session", None)
        if not isinstance(session, KVSession):
            return response
        core = session.raw
        environ = request.META
        own = environ.get(_OWN_SESSION_KEY) is core
        session._prepare_commit(own=own)
        if not own:
            return response  # the WSGI middleware commits when the response starts
        del environ[_OWN_SESSION_KEY]  # commit once
        set_cookie, vary = core._commit(response.status_code)
        _finish_response(response, core.options, set_cookie, vary)
        closers = getattr(response, "_resource_closers", None)
        if isinstance(closers, list):
            # A streaming body may still change the session: say so (logged).
            closers.append(_LateChangeCheck(core))
        return response
