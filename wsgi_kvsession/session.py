"""The session: a lazily loaded mapping that knows what to write back.

A :class:`Session` is created for every request but costs nothing until it is
used: the cookie is parsed and the store read on the first access (rule 6).
At the commit point the middleware calls :meth:`Session._commit`, which
decides the single store operation the request needs (rules 7 to 9):

============================  =========================================
what the request did          what is written
============================  =========================================
never touched the session     nothing, no headers
read it                       nothing; a touch when the idle deadline
                              would move by ``touch_interval`` or more
changed it (bytes differ)     one update, or one insert for a new session
emptied it                    one delete, and the cookie is expired
============================  =========================================

Changes are found by comparing the freshly encoded data with the bytes that
were loaded, so nested mutation (``session["cart"].append(x)``) is saved and
an assignment of an equal value is not.
"""

from __future__ import annotations

import datetime
import enum
import logging
import random
import time
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from . import envelope
from .cookies import expired_cookie, request_cookie_values, session_cookie
from .events import SessionEvent, emit
from .ids import store_key
from .serializers import SerializationError
from .stores.base import (
    Record,
    Store,
    StoreError,
    Version,
    insert_with_user,
    update_with_user,
    user_text,
)

if TYPE_CHECKING:
    from .options import Options
    from .serializers import Serializer

log = logging.getLogger(__name__)

#: How often a save that lost a compare-and-set race re-reads and merges.
MAX_MERGE_ATTEMPTS = 32
#: The longest pause between two merge attempts (seconds); see merge_backoff().
MAX_MERGE_BACKOFF = 0.05
#: How far in the future a record's creation time may lie (clocks of several
#: servers disagree a little); anything later is a damaged record.
MAX_CLOCK_SKEW = 300.0
#: How often a new session draws another ID when the store reports a collision.
MAX_INSERT_ATTEMPTS = 5

_MISSING = object()


def decode_record(
    options: Options, record: Record, now: float
) -> tuple[envelope.Envelope, dict[str, Any]]:
    """Parse a stored record; raise :class:`SerializationError` for one that is
    damaged, foreign, or could not be written back. (Shared by the session and
    by integrations that keep their own session objects, such as Django's.)"""
    stored, data, _ = _decode_record(options, record, now)
    return stored, data


def _decode_record(
    options: Options, record: Record, now: float
) -> tuple[envelope.Envelope, dict[str, Any], bool]:
    """:func:`decode_record`, and whether every value is immutable."""
    stored = envelope.unpack(record.value)
    if stored.serializer != options.serializer.name:
        raise SerializationError(f"written by the {stored.serializer!r} serializer")
    if not (0 <= stored.created <= now + MAX_CLOCK_SKEW):
        raise SerializationError("its creation time is not plausible")
    data = options.serializer.loads(stored.data)
    if type(data) is not dict:
        raise SerializationError("the session data is not a mapping")
    immutable = all(type(v) in _IMMUTABLE for v in data.values())
    if not immutable:
        # Damaged or foreign containers can decode yet fail to encode again
        # (nesting deeper than the encoder goes), which would make every
        # later save of the session fail: refuse them now.
        options.serializer.dumps(data)
    return stored, data, immutable


def merge_changes(
    serializer: Serializer, loaded: dict[str, Any], mine: dict[str, Any], theirs: dict[str, Any]
) -> dict[str, Any]:
    """Apply one request's key-level changes (``loaded`` → ``mine``) to the newer
    stored data ``theirs``.

    A key the request set or changed takes the request's value (so for the
    same key the last writer wins); a key it deleted is deleted; every other
    key keeps the newer stored value.
    """
    dumps = serializer.dumps
    merged = dict(theirs)
    for key, value in mine.items():
        if key not in loaded or dumps(loaded[key]) != dumps(value):
            merged[key] = value
    for key in loaded:
        if key not in mine:
            merged.pop(key, None)
    return merged


def merge_backoff(attempt: int) -> float:
    """How long to pause before merge attempt ``attempt + 1``: full jitter over an
    exponentially growing window (0.5 ms, 1 ms, 2 ms ... up to 50 ms), so that
    many requests racing on one session (tens at once, as a burst of parallel
    XHRs makes) spread out instead of colliding again in lockstep. The whole
    worst case stays under two seconds."""
    window = min(MAX_MERGE_BACKOFF, 0.0005 * 2**attempt)
    return random.uniform(0, window)  # noqa: S311 - jitter, not a secret


class _Outcome(enum.Enum):
    """How a save of an existing record ended."""

    SAVED = "saved"
    #: The session was emptied, so its record was deleted.
    DELETED = "deleted"
    #: The record vanished (destroyed, regenerated, expired) or became
    #: unreadable while the request ran; it stays gone.
    GONE = "gone"


#: Values that cannot change in place: a session holding only these cannot have
#: been modified without a setter, so its bytes need no re-encoding to compare.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})
_NOT_LOADED = object()
_NOT_SAVED = object()


class Session(MutableMapping[str, Any]):
    """The session of one request; get it with :func:`~wsgi_kvsession.get_session`.

    Keys are strings; values are anything the configured serializer can
    encode (by default JSON types plus datetime, date, time, UUID, bytes,
    tuple, set, Decimal and Markup). Every way of reading the session, ``in``
    and ``len`` included, loads it and marks it accessed.
    """

    # Slots: a session is built for every request, and its attributes are
    # read and written many times in each.
    __slots__ = (
        "__weakref__",
        "_accessed",
        "_commit_started",
        "_committed",
        "_created",
        "_data",
        "_deleted",
        "_environ",
        "_forced",
        "_key_of",
        "_late_change_logged",
        "_loaded",
        "_loaded_data",
        "_loaded_immutable",
        "_loaded_permanent",
        "_loaded_user_id",
        "_mutated",
        "_permanent",
        "_record",
        "_request_had_cookie",
        "_resign",
        "_sid",
        "_store_failed",
        "_store_key",
        "_user_id",
        "options",
        "store",
    )

    def __init__(self, store: Store, options: Options, environ: dict[str, Any]) -> None:
        self.store = store
        self.options = options
        self._environ = environ
        self._loaded = False
        self._accessed = False
        self._data: dict[str, Any] = {}
        #: The ID the session has now, or None while it has none.
        self._sid: str | None = None
        #: The record the current ID had when loaded; None for a new session.
        self._record: Record | None = None
        self._loaded_data = b""
        #: Every loaded value is immutable: unless a mutating method ran, the
        #: data cannot have changed, so it need not be encoded to compare.
        self._loaded_immutable = False
        self._created = 0.0
        self._permanent = False
        self._loaded_permanent = False
        self._user_id: str | int | None = None
        self._loaded_user_id: str | int | None = None
        #: Set by ``modified = True``: write even when the bytes compare equal.
        self._forced = False
        #: A mutating method ran (it may still have left equal bytes).
        self._mutated = False
        self._request_had_cookie = False
        #: The cookie was signed with an older (fallback) key: send it again.
        self._resign = False
        #: A record was deleted by destroy() or regenerate() in this request.
        self._deleted = False
        self._store_failed = False
        #: The encoded data as of the commit point (_MISSING before it), to
        #: notice changes made after the headers left.
        self._committed: bytes | object | None = _MISSING
        self._late_change_logged = False
        self._commit_started = False
        #: The store key of ``_key_of``, a (key prefix, ID) pair (see _key()).
        self._key_of: tuple[str, str] | None = None
        self._store_key = ""

    # -- loading ---------------------------------------------------------

    def _load(self) -> None:
        self._loaded = True
        self._accessed = True
        now = time.time()
        self._created = now
        self._permanent = self._loaded_permanent = self.options.permanent_by_default
        # An empty value is how a cookie is deleted (and what some clients send
        # back after a logout): no cookie, nothing to log.
        values = [v for v in request_cookie_values(self._environ, self.options.cookie_name) if v]
        if not values:
            return
        self._request_had_cookie = True
        session_id = None
        for value in values:
            session_id, current_key = self.options.ids.decode_cookie(value)
            if session_id is not None:
                self._resign = not current_key
                break
        if session_id is None:
            # Rule 2: never the value itself in the log, it may be a live ID.
            self._event(SessionEvent.REJECTED, None, f"{len(values)} value(s)")
            return
        try:
            record = self.store.load(self._key(session_id))
        except StoreError:
            # Marked in both modes: an app that catches the error must not
            # then replace the user's session with a new, empty one.
            self._store_failed = True
            if self.options.on_store_error == "raise":
                raise
            log.exception("session store failed; continuing with an empty session")
            return
        if record is None:
            # Rule 3 (strict mode): the ID is never adopted; a write gets a new one.
            self._event(SessionEvent.UNKNOWN, session_id)
            return
        try:
            stored, data, immutable = _decode_record(self.options, record, now)
        except SerializationError as exc:
            self._event(SessionEvent.UNREADABLE, session_id, str(exc))
            return
        absolute = self.options.absolute_timeout
        if record.expires_at <= now or (absolute is not None and stored.created + absolute <= now):
            self._event(SessionEvent.EXPIRED, session_id)
            return
        self._sid = session_id
        self._record = record
        self._data = data
        self._loaded_immutable = immutable
        self._loaded_data = stored.data
        self._created = stored.created
        self._permanent = self._loaded_permanent = stored.permanent
        self._user_id = self._loaded_user_id = stored.user_id

    def _decode(self, record: Record, now: float) -> tuple[envelope.Envelope, dict[str, Any]]:
        return decode_record(self.options, record, now)

    def _changing(self) -> None:
        if not self._loaded:
            self._load()
        self._mutated = True
        if self._committed is not _MISSING and not self._late_change_logged:
            self._log_late_change()

    def _log_late_change(self) -> None:
        self._late_change_logged = True
        log.warning(
            "the session was changed after the response headers were sent; the change "
            "is not saved (change the session before the response body starts)"
        )

    # -- the mapping -----------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if not self._loaded:
            self._load()
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._changing()
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        self._changing()
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        if not self._loaded:
            self._load()
        return iter(self._data)

    def __len__(self) -> int:
        if not self._loaded:
            self._load()
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        if not self._loaded:
            self._load()
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        if not self._loaded:
            self._load()
        return self._data.get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if not self._loaded:
            self._load()
        if key in self._data:
            return self._data[key]
        self._changing()
        return self._data.setdefault(key, default)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        if not self._loaded:
            self._load()
        if key not in self._data:
            if default is _MISSING:
                raise KeyError(key)
            return default  # nothing removed, nothing changed
        self._changing()
        return self._data.pop(key)

    def clear(self) -> None:
        """Remove every key and the tie to a user (what a logout expects)."""
        if not self._loaded:
            self._load()
        if not self._data and self._user_id is None:
            return  # already empty: not a change
        self._changing()
        self._data.clear()
        self._user_id = None

    def __repr__(self) -> str:
        state = repr(self._data) if self._loaded else "(not loaded)"
        return f"<{type(self).__name__} {state}>"

    # -- attributes ------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The session ID, or None while the session has none (new and empty)."""
        if not self._loaded:
            self._load()
        return self._sid

    @property
    def new(self) -> bool:
        """True when no stored session backs this one (yet)."""
        if not self._loaded:
            self._load()
        return self._record is None

    @property
    def accessed(self) -> bool:
        """True once the session has been read or written in this request."""
        return self._accessed

    @property
    def modified(self) -> bool:
        """True when the session will be written back.

        Setting it to True forces a write even when the data compares equal.
        """
        if not self._loaded:
            return False
        encoded = self._encoded_data()
        if encoded is None and self._record is None:
            return False  # a new session left empty is never stored (rule 7)
        if self._forced:
            return True
        if self._permanent != self._loaded_permanent or self._user_id != self._loaded_user_id:
            return True
        return (encoded or b"") != self._loaded_data

    @modified.setter
    def modified(self, value: bool) -> None:
        if value:
            self._changing()
        self._forced = bool(value)

    @property
    def created(self) -> datetime.datetime:
        """When the session was first stored (aware, UTC)."""
        if not self._loaded:
            self._load()
        return datetime.datetime.fromtimestamp(self._created, datetime.timezone.utc)

    @property
    def permanent(self) -> bool:
        """A permanent session's cookie outlives the browser session (Max-Age);
        either way the server enforces the timeouts."""
        if not self._loaded:
            self._load()
        return self._permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if not self._loaded:
            self._load()
        if bool(value) != self._permanent:
            self._changing()
            self._permanent = bool(value)

    @property
    def user_id(self) -> str | int | None:
        """The user this session belongs to, for listing and revoking a user's
        sessions; None (the default) for an anonymous session."""
        if not self._loaded:
            self._load()
        return self._user_id

    @user_id.setter
    def user_id(self, value: str | int | None) -> None:
        if value is not None and (type(value) is not str and type(value) is not int):
            raise TypeError(f"user_id must be a str, an int or None, not {type(value).__name__}")
        if not self._loaded:
            self._load()
        if value != self._user_id:
            self._changing()
            self._user_id = value

    # -- lifecycle -------------------------------------------------------

    def _key(self, session_id: str) -> str:
        # Remembered: a request that reads and then writes needs it twice. By
        # prefix too: Flask and Django may swap a session's options before use.
        of = (self.options.key_prefix, session_id)
        if of != self._key_of:
            self._key_of = of
            self._store_key = store_key(*of)
        return self._store_key

    def _event(self, event: SessionEvent, session_id: str | None, detail: str = "") -> None:
        hashed = self.options.ids.log_hash(session_id) if session_id is not None else None
        remote_addr = self._environ.get("REMOTE_ADDR")
        emit(
            self.options.on_event,
            event,
            hashed,
            detail,
            remote_addr if isinstance(remote_addr, str) else None,
        )

    def _delete_record(self, event: SessionEvent) -> None:
        """Delete the stored record of the current ID, if there is one, at once."""
        if not self._loaded:
            self._load()
        if self._record is not None and self._sid is not None:
            self.store.delete(self._key(self._sid))
            self._deleted = True
            self._event(event, self._sid)
        self._record = None

    def regenerate(self) -> None:
        """Give the session a new ID, keeping its data.

        Call it when the user logs in or gains privileges, so that an ID an
        attacker planted or saw before cannot ride along (session fixation).
        The old record is deleted at once; the data is stored under the new ID
        when the response starts. The creation time is kept, so regenerating
        never extends the absolute timeout.
        """
        self._take_over_record()
        self._sid = self.options.ids.new_id()
        self._changing()

    def _take_over_record(self) -> None:
        """Delete the current record for :meth:`regenerate`, keeping parallel changes.

        The delete is a compare-and-delete on the version this request loaded. If
        another request of the session saved a change since, the record is read
        again and this request's key-level changes are merged onto it (as
        :meth:`_save` does), so the new record starts from the newest data rather
        than from this request's stale copy (rule 11).
        """
        if not self._loaded:
            self._load()
        record, session_id = self._record, self._sid
        if record is None or session_id is None:
            self._record = None
            return
        key = self._key(session_id)
        version = record.version
        loaded = self.options.serializer.loads(self._loaded_data) if self._loaded_data else {}
        own_permanent = self._permanent != self._loaded_permanent
        own_user = self._user_id != self._loaded_user_id
        for attempt in range(MAX_MERGE_ATTEMPTS):
            if self.store.delete(key, version):
                break
            current = self.store.load(key)
            if current is None:
                break  # destroyed or expired meanwhile: nothing left to take over
            try:
                theirs, their_data = self._decode(current, time.time())
            except SerializationError:
                break
            self._data = self._merge(loaded, their_data)
            loaded = their_data  # our changes, relative to what we merged onto
            if not own_permanent:
                self._permanent = theirs.permanent
            if not own_user:
                self._user_id = theirs.user_id
            version = current.version
            time.sleep(merge_backoff(attempt))
        else:
            raise StoreError(
                f"{self.store!r}: could not regenerate the session after "
                f"{MAX_MERGE_ATTEMPTS} concurrent changes"
            )
        self._deleted = True
        self._event(SessionEvent.REGENERATED, session_id)
        self._record = None

    def destroy(self) -> None:
        """Delete the session: its record at once, its cookie with the response.

        A request of the same session still in flight cannot write it back
        (rule 10). Data set after ``destroy()`` starts a new session.
        """
        self._delete_record(SessionEvent.DESTROYED)
        if self._request_had_cookie:
            self._deleted = True  # expire whatever cookie the browser sent
        self._changing()
        self._data.clear()
        self._sid = None
        self._created = time.time()
        self._permanent = self._loaded_permanent = self.options.permanent_by_default
        self._user_id = self._loaded_user_id = None

    # -- the commit point (called by the middleware) --------------------

    def _encoded_data(self) -> bytes | None:
        """The data as the serializer writes it (None when empty)."""
        if not self._data and self._user_id is None:
            return None  # nothing worth a record
        if not self._mutated and self._loaded_immutable and self._loaded_data:
            return self._loaded_data  # unchanged by construction: skip the encode
        return self.options.serializer.dumps(self._data)

    def _cookie(self, session_id: str, expires_at: float, now: float) -> str:
        """The Set-Cookie value for ``session_id``: a permanent session's cookie
        lives as long as the server keeps the session, others die with the browser."""
        max_age = max(1, int(expires_at - now)) if self._permanent else None
        return session_cookie(self.options, self.options.ids.encode(session_id), max_age)

    def _commit(self, status_code: int) -> tuple[str | None, bool]:
        """Persist the session; return ``(Set-Cookie value or None, vary)``.

        Only the first call persists: an integration that commits at its
        framework's save point (Flask's ``save_session``) has already put the
        headers on the framework's response when the middleware's commit point
        comes, and a commit that failed must not be retried by the error page.
        """
        if self._commit_started:
            return None, False
        self._commit_started = True
        if not self._accessed:
            self._committed = _NOT_LOADED
            return None, False  # rule 6
        if self._store_failed or (
            status_code >= 500 and not self.options.save_on_server_error  # rule 12
        ):
            # Nothing is saved, so nothing is encoded either: an app rendering
            # its own error page must not fail on an unstorable value.
            self._committed = _NOT_SAVED
            return None, True
        data = self._encoded_data()
        self._committed = data
        try:
            return self._persist(data, time.time()), True
        except StoreError:
            if self.options.on_store_error == "raise":
                raise
            log.exception("session store failed; the session was not saved")
            return None, True

    def _persist(self, data: bytes | None, now: float) -> str | None:
        options = self.options
        record, session_id = self._record, self._sid
        if record is None or session_id is None:
            if data is None:
                # Rule 7: a new session left empty has no record and no cookie;
                # one this request deleted has its cookie removed.
                return expired_cookie(options) if self._deleted else None
            session_id = self._insert(data, now)
            if session_id is None:
                return expired_cookie(options) if self._request_had_cookie else None
            expires_at = options.expires_at(self._created, now)
            return self._cookie(session_id, expires_at, now)
        key = self._key(session_id)
        permanent_changed = self._permanent != self._loaded_permanent
        if (
            data is None
            or self._forced
            or permanent_changed
            or self._user_id != self._loaded_user_id
            or data != self._loaded_data
        ):
            expires_at = options.expires_at(self._created, now)
            outcome = self._save(key, record.version, data, expires_at, now)
            if outcome is _Outcome.GONE:
                return None
            if outcome is _Outcome.DELETED:
                return expired_cookie(options)  # rule 7: emptied, so deleted
            if self._permanent or permanent_changed or self._resign:
                return self._cookie(session_id, expires_at, now)
            return None
        # Read only: slide the idle deadline, at most once per touch_interval.
        expires_at = options.expires_at(self._created, now)
        moved = expires_at - record.expires_at
        if moved > 0 and moved >= options.touch_interval:
            if not self.store.touch(key, expires_at):
                return None  # gone meanwhile: no cookie for a record that is not there
        elif options.cookie_refresh == "every_request" or self._resign:
            expires_at = record.expires_at
        else:
            return None
        if self._resign:
            # Signed with a fallback key: re-sign now, before that key is retired.
            return self._cookie(session_id, expires_at, now)
        if not self._permanent or options.cookie_refresh == "on_change":
            return None
        # A permanent cookie's Max-Age follows the server's deadline.
        return self._cookie(session_id, expires_at, now)

    def _pack(self, data: bytes, now: float) -> bytes:
        return envelope.pack(
            envelope.Envelope(
                created=self._created,
                written=now,
                permanent=self._permanent,
                user_id=self._user_id,
                serializer=self.options.serializer.name,
                data=data,
            )
        )

    def _insert(self, data: bytes, now: float) -> str | None:
        """Store a new record under a fresh ID; return the ID, or None when the
        absolute timeout has already run out."""
        expires_at = self.options.expires_at(self._created, now)
        if expires_at <= now:
            log.info("session not stored: its absolute timeout has passed")
            return None
        value = self._pack(data, now)
        user = user_text(self._user_id)
        for _ in range(MAX_INSERT_ATTEMPTS):
            session_id = self._sid or self.options.ids.new_id()
            if insert_with_user(self.store, self._key(session_id), value, expires_at, user):
                self._sid = session_id
                self._event(SessionEvent.CREATED, session_id)
                return session_id
            # Insert-if-absent refused: the ID is taken. Never share a record.
            log.warning("session ID collision in %r; drawing another ID", self.store)
            self._sid = None
        raise StoreError(f"{self.store!r}: no free session ID after {MAX_INSERT_ATTEMPTS} attempts")

    def _save(
        self, key: str, version: Version, data: bytes | None, expires_at: float, now: float
    ) -> _Outcome:
        """Write this request's change over the loaded record (rules 7, 10, 11).

        ``data`` None means the session was emptied: the record is deleted.
        Both are compare-and-set on the loaded version; when another request
        wrote in between, this request's key-level changes are merged into the
        newer record and tried again.
        """
        if data is None:
            if self.store.delete(key, version):
                self._event(SessionEvent.EMPTIED, self._sid)
                return _Outcome.DELETED
        elif update_with_user(
            self.store, key, self._pack(data, now), expires_at, version, user_text(self._user_id)
        ):
            return _Outcome.SAVED
        # Another request wrote (or deleted) the record since we read it. Decide
        # once which metadata this request changed: only those fields are ours.
        loaded = self.options.serializer.loads(self._loaded_data) if self._loaded_data else {}
        own_permanent = self._permanent != self._loaded_permanent
        own_user = self._user_id != self._loaded_user_id
        permanent, user_id = self._permanent, self._user_id
        for attempt in range(MAX_MERGE_ATTEMPTS):
            current = self.store.load(key)
            if current is None:
                self._event(SessionEvent.GONE, self._sid)
                return _Outcome.GONE
            try:
                theirs, their_data = self._decode(current, now)
            except SerializationError as exc:
                self._event(SessionEvent.UNREADABLE, self._sid, str(exc))
                return _Outcome.GONE
            merged = self._merge(loaded, their_data)
            self._permanent = permanent if own_permanent else theirs.permanent
            self._user_id = user_id if own_user else theirs.user_id
            if not merged and self._user_id is None:
                if self.store.delete(key, current.version):
                    self._data = merged
                    self._committed = None
                    return _Outcome.DELETED
            else:
                data = self.options.serializer.dumps(merged)
                value = self._pack(data, now)
                user = user_text(self._user_id)
                if update_with_user(self.store, key, value, expires_at, current.version, user):
                    self._data = merged
                    self._committed = data
                    return _Outcome.SAVED
            # Lost again: back off a little so the racers spread out.
            time.sleep(merge_backoff(attempt))
        raise StoreError(
            f"{self.store!r}: could not save the session after {MAX_MERGE_ATTEMPTS} "
            "concurrent changes"
        )

    def _merge(self, loaded: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
        return merge_changes(self.options.serializer, loaded, self._data, theirs)

    def _after_response(self) -> None:
        """Called when the response is finished: report changes made too late
        (nested mutations included, which no setter sees)."""
        committed = self._committed
        if (
            committed is _MISSING
            or committed is _NOT_SAVED  # nothing was to be saved anyway
            or not self._loaded
            or self._late_change_logged
        ):
            return
        if committed is _NOT_LOADED:  # first loaded after the commit point
            committed = self._loaded_data or None
        try:
            data = self._encoded_data()
        except SerializationError:
            data = None  # an unstorable late value is a late change too
        if data != committed:
            self._log_late_change()
