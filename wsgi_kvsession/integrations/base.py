"""What every framework's session object shares: a mapping over the core session.

Each integration gives the request's :class:`~wsgi_kvsession.Session` the
interface its framework expects (Flask's ``SessionMixin``, Pyramid's
``ISession``) by subclassing :class:`SessionProxy`, so every read and write goes
to the one core session that the middleware persists, and apps of several
frameworks behind one middleware see the same data. No framework is imported here.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from ..session import Session

_MISSING: Any = object()


class SessionProxy(MutableMapping[str, Any]):
    """The mapping of a core :class:`~wsgi_kvsession.Session`, with the
    attributes every integration exposes (``id``, ``permanent``, ``user_id``,
    ``regenerate()``)."""

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

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        if default is _MISSING:
            return self._session.pop(key)
        return self._session.pop(key, default)

    def clear(self) -> None:
        self._session.clear()

    def copy(self) -> dict[str, Any]:
        """A shallow copy of the data as a plain dict (as ``dict.copy()`` gives)."""
        return dict(self._session.items())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._session!r}>"

    # -- what the core session adds --------------------------------------

    @property
    def id(self) -> str | None:
        """The session ID, or None while the session has none."""
        return self._session.id

    @property
    def permanent(self) -> bool:
        """A permanent session's cookie has Max-Age and Expires (it outlives the
        browser session); the server enforces the timeouts either way."""
        return self._session.permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self._session.permanent = value

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
        # Frameworks set this on every touch (Flask 3.1.3+ whenever the
        # ``session`` proxy is used, e.g. by every render_template(); Django's
        # SessionBase on every method call). The core session knows when it
        # was really read, which is what Vary: Cookie and rule 6 go by, so a
        # page that never reads the session costs no store call.
        pass

    @property
    def user_id(self) -> str | int | None:
        """The user this session belongs to (for listing and revoking a user's
        sessions); None for an anonymous session."""
        return self._session.user_id

    @user_id.setter
    def user_id(self, value: str | int | None) -> None:
        self._session.user_id = value

    def regenerate(self) -> None:
        """New ID, same data; the old record is deleted at once (call it at login,
        against session fixation)."""
        self._session.regenerate()
