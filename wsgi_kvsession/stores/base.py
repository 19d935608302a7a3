"""The one small protocol every session store implements.

A store keeps opaque ``bytes`` under string keys, each with an absolute expiry
time. It never sees a session ID (only ``key_prefix + sha256(id)``), never
decodes the bytes and knows nothing about cookies or requests: everything a
session *means* lives in :mod:`wsgi_kvsession.session`. That keeps a backend to
a handful of methods, which one shared contract test suite checks.

Writes are split by intent, because that is what makes sessions safe under
concurrency (DESIGN.md rules 10 and 11):

* :meth:`Store.insert` creates a record only if the key is absent, so two new
  sessions can never share a record.
* :meth:`Store.update` rewrites a record only if it still exists (and, when a
  ``version`` is given, only if nobody wrote it since it was read), so a request
  still in flight cannot bring back a session that another request destroyed.
* :meth:`Store.touch` moves the expiry without rewriting the data, so sliding the
  idle timeout cannot roll back another request's change.

Sessions tied to a user (``Session.user_id``) are found again through a
per-user index: the session layer passes the user's ID as text (``user=``) to
every insert and update, and a store that keeps an index
(:attr:`Store.indexes_users`) lists them with :meth:`Store.iter_user_records`
without scanning everything. The store still never decodes a value: the user
is handed to it beside the bytes.
"""

from __future__ import annotations

import abc
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: An opaque token that changes every time a record's value is written. Stores
#: choose its type (a counter, a hash of the value, a CAS token).
Version = int | str | bytes


class StoreError(Exception):
    """A store could not be reached or did not answer as it must.

    The message names the store (for example ``RedisStore(redis://:***@host/0)``)
    and never contains a password or a session ID.
    """


def mask_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``, fit for a message or a repr.

    Masked: the password of the user information, and the value of any query
    parameter whose name speaks of a secret (``?password=``, ``passwd``,
    ``sslpassword``, ``pwd``, ``token``, ``secret``, ``auth``), which redis-py,
    libpq and PyMySQL all accept.

    Not parsed with ``urlsplit``: a password may hold an unescaped ``/``, ``?``
    or ``#`` (base64 passwords often do), which would end the URL's authority
    early and leave the password in the "path". Everything between ``://`` and
    the last ``@`` is the user information; what follows its first ``:`` is the
    password. Masking too much is harmless; showing a password is not.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_QUERY_VALUE.sub(r"\1***", url)
    userinfo, at, hostinfo = rest.rpartition("@")
    hostinfo = _SECRET_QUERY_VALUE.sub(r"\1***", hostinfo)
    if not at:
        return f"{scheme}://{hostinfo}"
    if ":" not in userinfo:
        return f"{scheme}://{userinfo}@{hostinfo}"
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostinfo}"


# A query parameter (after ?, & or ;) whose name holds one of these words: its
# value runs to the next separator.
_SECRET_QUERY_VALUE = re.compile(
    r"([?&;][^=&;#]*(?:pass|pwd|secret|token|auth)[^=&;#]*=)[^&;#]*", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Record:
    """What a store returns for a live key."""

    value: bytes
    #: Unix time after which the record no longer exists.
    expires_at: float
    #: The token to pass to :meth:`Store.update` for a compare-and-set.
    version: Version


class Store(abc.ABC):
    """Base class of every session store.

    Implementations must be safe to call from several threads at once, and
    ``expires_at`` must be honoured on every read: a record whose ``expires_at``
    is not in the future is absent for every method, whether or not the backend
    has already removed it.
    """

    #: Whether :meth:`update` honours ``version`` atomically. Stores without a
    #: compare-and-set (SimpleKVStore) check, then write: parallel changes to
    #: different keys of one session may overwrite each other, and a record
    #: deleted between an update's check and its write can come back.
    supports_versioning: bool = True

    #: Whether the store keeps an index of records by user, so that
    #: :meth:`iter_user_records` finds a user's records without a scan. Stores
    #: that do not keep one accept ``user=`` on writes and ignore it; a session
    #: manager then finds a user's sessions by listing every record. A subclass
    #: that overrides ``insert`` or ``update`` without taking ``user`` cannot
    #: keep the index current, so this is switched off for it automatically.
    indexes_users: bool = False

    #: Whether ``insert`` / ``update`` take the ``user`` keyword (set for each
    #: subclass by ``__init_subclass__``; stores written before the per-user
    #: index do not, and are called without it).
    _insert_takes_user: bool = True
    _update_takes_user: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._insert_takes_user = _takes_user(cls.insert)
        cls._update_takes_user = _takes_user(cls.update)
        if cls.indexes_users and not (cls._insert_takes_user and cls._update_takes_user):
            cls.indexes_users = False

    @abc.abstractmethod
    def load(self, key: str) -> Record | None:
        """Return the live record under ``key``, or ``None``."""

    @abc.abstractmethod
    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        """Create a record if ``key`` holds no live record.

        Returns ``False``, changing nothing, when a live record exists.
        ``user`` is the text of the ID of the user the record belongs to (None:
        nobody); a store with :attr:`indexes_users` indexes the record under it.
        """

    @abc.abstractmethod
    def update(
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        *,
        user: str | None = None,
    ) -> bool:
        """Replace a live record's value and expiry.

        Returns ``False``, changing nothing, when there is no live record, or
        when ``version`` is given and the record's version differs from it.
        ``user`` is the user the record belongs to after the write (None:
        nobody), as for :meth:`insert`; a :meth:`touch` keeps the user.
        """

    @abc.abstractmethod
    def delete(self, key: str, version: Version | None = None) -> bool:
        """Remove the record under ``key``; a missing key is not an error.

        With ``version``, remove it only if its version still matches (a
        compare-and-delete). Returns whether a live record was removed.
        """

    @abc.abstractmethod
    def touch(self, key: str, expires_at: float) -> bool:
        """Set a live record's expiry without changing its value or version.

        Returns ``False`` when there is no live record.
        """

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """Yield ``(key, record)`` for every live record whose key starts with ``prefix``.

        The prefix is how a session manager lists only its own sessions (its
        ``key_prefix``) in a store shared with other applications.

        Optional: stores that cannot list their keys raise ``NotImplementedError``
        with a message saying so.
        """
        raise NotImplementedError(f"{self!r} cannot list its records")

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """Yield ``(key, record)`` for every live record whose key starts with
        ``prefix`` and whose latest insert or update passed ``user=user``.

        Only stores with :attr:`indexes_users` implement it, from their index
        and without reading every record. Others raise ``NotImplementedError``:
        :class:`~wsgi_kvsession.admin.SessionManager` then lists every record
        with :meth:`iter_records` and reads the user from each (a scan).
        """
        raise NotImplementedError(f"{self!r} keeps no index of its records by user")

    def cleanup(self) -> int:
        """Remove expired records and return how many were removed.

        Stores whose backend expires keys by itself return 0.
        """
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections or file handles; the store may be used again."""


def _takes_user(method: Callable[..., Any]) -> bool:
    """Whether ``method`` accepts a ``user`` keyword argument."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a C function or odd callable
        return False
    return any(
        (p.name == "user" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def user_text(user_id: str | int | None) -> str | None:
    """The text under which a store indexes the user ``user_id`` (None: no user).

    An ``int`` ID and its decimal ``str`` are the same user to the index, so
    that ``revoke_user("42")`` also ends the sessions tied to ``42``.
    """
    return None if user_id is None else str(user_id)


def insert_with_user(
    store: Store, key: str, value: bytes, expires_at: float, user: str | None
) -> bool:
    """``store.insert(...)``, passing ``user`` when the store's ``insert`` takes it."""
    if getattr(store, "_insert_takes_user", False):
        return store.insert(key, value, expires_at, user=user)
    return store.insert(key, value, expires_at)


def update_with_user(
    store: Store,
    key: str,
    value: bytes,
    expires_at: float,
    version: Version | None,
    user: str | None,
) -> bool:
    """``store.update(...)``, passing ``user`` when the store's ``update`` takes it."""
    if getattr(store, "_update_takes_user", False):
        return store.update(key, value, expires_at, version, user=user)
    return store.update(key, value, expires_at, version)
