"""Work with stored sessions without their client: :class:`SessionManager`.

A support tool, a password change or a disabled account needs to read, change
or end sessions while their browsers are elsewhere. ``SessionManager`` does so
through the same store and options as the middleware, and by the same rules:

* it never adopts what a request would not: a record that has expired (by the
  store's expiry or the absolute timeout), is damaged, or was written by
  another serializer is no session here either;
* a change is a key-level merge written with the store's compare-and-set, on
  the record as it is now, and only if the session still exists: a session
  that ended meanwhile is never brought back (DESIGN.md rules 10 and 11);
* the store never sees a session ID, so neither does a listing: sessions are
  named by their *key hash*, the SHA-256 (hex) of the ID that follows
  ``key_prefix`` in the store key. Everything you can do with an ID you can
  do with the key hash a listing gave you (``get_by_hash`` and friends).

Finding a user's sessions uses the store's per-user index where it keeps one
(memory, files, SQLite, Redis, SQL) and otherwise lists every record and reads
its user (SimpleKVStore). memcached cannot list its keys at all, so listing,
counting and finding a user's sessions raise ``NotImplementedError`` there.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import envelope
from .ids import _ID_FORMAT, store_key
from .options import Options, SessionOptions
from .serializers import SerializationError
from .session import MAX_CLOCK_SKEW, MAX_MERGE_ATTEMPTS, merge_backoff
from .stores.base import Record, Store, StoreError, update_with_user, user_text

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SessionInfo", "SessionManager"]

log = logging.getLogger(__name__)

#: What follows ``key_prefix`` in the store key of a session.
_KEY_HASH = re.compile(r"[0-9a-f]{64}")


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)


@dataclass(frozen=True)
class SessionInfo:
    """A stored session as :class:`SessionManager` reports it.

    It holds no session ID (the store never has one): ``key_hash`` names the
    session for :meth:`SessionManager.get_by_hash`,
    :meth:`~SessionManager.update_by_hash` and
    :meth:`~SessionManager.revoke_by_hash`.
    """

    #: SHA-256 (hex) of the session ID: the store key without ``key_prefix``.
    key_hash: str
    #: The store key (``key_prefix + key_hash``).
    key: str
    #: When the session was first stored (aware, UTC).
    created: datetime.datetime
    #: When its data was last written (aware, UTC).
    written: datetime.datetime
    #: When it ends unless a request slides it further (aware, UTC).
    expires_at: datetime.datetime
    permanent: bool
    #: The user the session is tied to (``Session.user_id``), or None.
    user_id: str | int | None
    #: The session's data, decoded: a copy, changing it changes nothing stored.
    data: dict[str, Any]


class SessionManager:
    """Read, change and end stored sessions without their client.

    ``SessionManager(store, **options)`` takes the store and the options of the
    middleware (``KVSessionMiddleware(app, store, **options)``): of those,
    ``key_prefix``, ``serializer``, ``idle_timeout`` and ``absolute_timeout``
    matter here; the cookie options are checked and otherwise ignored.

    Safe to use from several threads and beside running servers: every method
    is a few store calls, each atomic in the store.
    """

    def __init__(self, store: Store, **options: Unpack[SessionOptions]) -> None:
        if not isinstance(store, Store):
            raise TypeError(
                f"store={store!r}: give a wsgi_kvsession store, e.g. "
                "store_from_url('sqlite:///sessions.db')"
            )
        self.store = store
        self.options = Options.from_kwargs(**options)

    def __repr__(self) -> str:
        return f"SessionManager({self.store!r}, key_prefix={self.options.key_prefix!r})"

    # -- naming a session -------------------------------------------------

    def key_hash(self, session_id: str) -> str:
        """The key hash of ``session_id`` (what listings name the session by)."""
        return self._key(session_id)[len(self.options.key_prefix) :]

    def _key(self, session_id: str) -> str:
        if not isinstance(session_id, str) or not _ID_FORMAT.fullmatch(session_id):
            # Never the value itself in the message: it may be a live cookie.
            raise ValueError(
                "not a session ID: expected 22 to 128 characters of A-Z, a-z, 0-9, '_' "
                "and '-' (the ID itself, not a signed cookie value)"
            )
        return store_key(self.options.key_prefix, session_id)

    def _key_of_hash(self, key_hash: str) -> str:
        if not isinstance(key_hash, str) or not _KEY_HASH.fullmatch(key_hash):
            raise ValueError(
                f"key_hash={key_hash!r}: expected the 64 lower-case hex digits that "
                "follow key_prefix in a store key (SessionInfo.key_hash)"
            )
        return self.options.key_prefix + key_hash

    # -- one session --------------------------------------------------------

    def get(self, session_id: str) -> SessionInfo | None:
        """The session ``session_id`` with its data, or None when there is no
        live one (unknown, expired, damaged, or of another serializer)."""
        return self._get(self._key(session_id))

    def get_by_hash(self, key_hash: str) -> SessionInfo | None:
        """:meth:`get` for the session a listing named by ``key_hash``."""
        return self._get(self._key_of_hash(key_hash))

    def update(
        self, session_id: str, mapping: Mapping[str, Any] = {}, /, *, remove: Iterable[str] = ()
    ) -> bool:
        """Set the keys of ``mapping`` in the live session ``session_id`` (and
        delete the keys in ``remove``); return whether the session was changed.

        The change is merged into the record as it is now, keys that are not
        named keep whatever a request wrote meanwhile, and it is written with
        the store's compare-and-set, retried on a conflict. A session that has
        ended (or ends meanwhile) is never written back: the result is then
        False. Its expiry is not moved: a change by an operator is not
        activity of the user. A session left with no data and no user is
        deleted, as a request would (rule 7).

        Values the serializer cannot store raise ``SerializationError`` before
        anything is written.
        """
        return self._update(self._key(session_id), mapping, remove)

    def update_by_hash(
        self, key_hash: str, mapping: Mapping[str, Any] = {}, /, *, remove: Iterable[str] = ()
    ) -> bool:
        """:meth:`update` for the session a listing named by ``key_hash``."""
        return self._update(self._key_of_hash(key_hash), mapping, remove)

    def revoke(self, session_id: str) -> bool:
        """End the session ``session_id`` now; return whether there was one.

        Its next request finds no session (and gets a new, empty one); a
        request of it still in flight cannot bring it back.
        """
        return self._revoke(self._key(session_id))

    def revoke_by_hash(self, key_hash: str) -> bool:
        """:meth:`revoke` for the session a listing named by ``key_hash``."""
        return self._revoke(self._key_of_hash(key_hash))

    # -- every session ------------------------------------------------------

    def iter_sessions(self) -> Iterator[SessionInfo]:
        """Yield every live session under ``key_prefix``, in the store's order.

        Records of other applications in the same store (other key prefixes,
        other serializers) are skipped. A session written or ended while the
        listing runs may or may not be listed. Raises ``NotImplementedError``
        for a store that cannot list its records (memcached).
        """
        for key, record in self._records():
            info = self._info(key, record, time.time())
            if info is not None:
                yield info

    def count(self) -> int:
        """The number of live sessions under ``key_prefix`` (a full listing;
        their data is not decoded)."""
        now = time.time()
        return sum(
            1 for key, record in self._records() if self._metadata(key, record, now) is not None
        )

    def cleanup(self) -> int:
        """Remove expired records from the store; return how many were removed.

        Stores whose backend expires records by itself (Redis, memcached)
        return 0. Run it regularly (a scheduled job) for memory, files, SQLite
        and SQL.
        """
        return self.store.cleanup()

    # -- a user's sessions -------------------------------------------------

    def sessions_of(self, user_id: str | int) -> list[SessionInfo]:
        """The live sessions tied to ``user_id`` (``Session.user_id``), oldest first.

        A user ID and its text are the same user: ``sessions_of("42")`` also
        finds the sessions tied to ``42``. Uses the store's per-user index
        where it has one (no scan); SimpleKVStore is scanned; memcached raises
        ``NotImplementedError``.
        """
        text = _user_text(user_id)
        now = time.time()
        found = []
        for key, record in self._user_records(text):
            info = self._info(key, record, now)
            if info is not None and user_text(info.user_id) == text:
                found.append(info)
        return sorted(found, key=lambda info: (info.created, info.key_hash))

    def revoke_user(self, user_id: str | int) -> int:
        """End every session tied to ``user_id`` (log the user out everywhere:
        a password change, a disabled account); return how many were ended.

        Call it *after* the change that stops new logins (the new password is
        saved), so that no session it misses can be created with the old
        state. Sessions of other users are never touched; a session whose
        user changed meanwhile is left alone. Requests of the revoked sessions
        still in flight cannot bring them back.
        """
        text = _user_text(user_id)
        if text is None:
            return 0
        revoked = 0
        for key, record in list(self._user_records(text)):
            if self._revoke_if_of(key, record, text):
                revoked += 1
        log.info("revoked %d session(s) of one user", revoked)
        return revoked

    def reindex_users(self) -> int:
        """Write every session tied to a user again, so that the store's
        per-user index holds it; return how many were written.

        Only needed for records written without the index: by a custom store
        wrapper or writer that did not pass ``user=``, or in a SQL table
        before its ``user_id`` column was added. A full listing; each record
        is rewritten unchanged with a compare-and-set (one a request changes
        meanwhile is indexed by that request's own write). Does nothing (and
        returns 0) on a store without an index.
        """
        if not self.store.indexes_users:
            return 0
        written = 0
        for key, record in list(self._records()):
            meta = self._metadata(key, record, time.time())
            if meta is None or meta.user_id is None:
                continue
            if update_with_user(
                self.store,
                key,
                record.value,
                record.expires_at,
                record.version,
                user_text(meta.user_id),
            ):
                written += 1
        return written

    # -- internals -----------------------------------------------------------

    def _records(self) -> Iterator[tuple[str, Record]]:
        prefix = self.options.key_prefix
        for key, record in self.store.iter_records(prefix):
            if key.startswith(prefix) and _KEY_HASH.fullmatch(key[len(prefix) :]):
                yield key, record

    def _user_records(self, text: str | None) -> Iterator[tuple[str, Record]]:
        """Candidates for the records of the user ``text`` (each still to be
        checked against its envelope): from the index, or a listing."""
        if text is None:
            return  # a user ID no record can hold (see _user_text)
        prefix = self.options.key_prefix
        if self.store.indexes_users:
            records = self.store.iter_user_records(text, prefix)
        else:
            records = self._records()
        for key, record in records:
            if key.startswith(prefix) and _KEY_HASH.fullmatch(key[len(prefix) :]):
                yield key, record

    def _metadata(self, key: str, record: Record, now: float) -> envelope.Envelope | None:
        """The envelope of a record that is a live session here, else None:
        the checks of a request's load, without decoding the data."""
        if record.expires_at <= now:
            return None
        try:
            stored = envelope.unpack(record.value)
        except SerializationError:
            return None
        if stored.serializer != self.options.serializer.name:
            return None
        if not (0 <= stored.created <= now + MAX_CLOCK_SKEW):
            return None
        absolute = self.options.absolute_timeout
        if absolute is not None and stored.created + absolute <= now:
            return None
        return stored

    def _decode(
        self, key: str, record: Record, now: float
    ) -> tuple[envelope.Envelope, dict[str, Any]] | None:
        stored = self._metadata(key, record, now)
        if stored is None:
            return None
        try:
            data = self.options.serializer.loads(stored.data)
        except SerializationError:
            return None
        if type(data) is not dict:
            return None
        return stored, data

    def _info(self, key: str, record: Record, now: float) -> SessionInfo | None:
        decoded = self._decode(key, record, now)
        if decoded is None:
            return None
        stored, data = decoded
        return SessionInfo(
            key_hash=key[len(self.options.key_prefix) :],
            key=key,
            created=_utc(stored.created),
            written=_utc(stored.written),
            expires_at=_utc(record.expires_at),
            permanent=stored.permanent,
            user_id=stored.user_id,
            data=data,
        )

    def _get(self, key: str) -> SessionInfo | None:
        record = self.store.load(key)
        return None if record is None else self._info(key, record, time.time())

    def _update(self, key: str, mapping: Mapping[str, Any], remove: Iterable[str]) -> bool:
        changes = dict(mapping)
        removals = [remove] if isinstance(remove, str) else list(remove)
        serializer = self.options.serializer
        # The caller's values must be storable: fail now, before any write,
        # rather than after merging them into the stored data.
        serializer.dumps(changes)
        for attempt in range(MAX_MERGE_ATTEMPTS):
            now = time.time()
            record = self.store.load(key)
            if record is None:
                return False  # ended (or never was): never written back
            decoded = self._decode(key, record, now)
            if decoded is None:
                return False  # expired by the absolute timeout, or unreadable
            stored, data = decoded
            data.update(changes)
            for name in removals:
                data.pop(name, None)
            if not data and stored.user_id is None:
                # Nothing left worth a record: a request would delete it too.
                if self.store.delete(key, record.version):
                    return True
            else:
                try:
                    encoded = serializer.dumps(data)
                except SerializationError as exc:
                    # The stored part cannot be written back (the caller's
                    # part was checked): leave the session as it is.
                    log.warning("not updating an unwritable session: %s", exc)
                    return False
                value = envelope.pack(stored._replace(written=now, data=encoded))
                user = user_text(stored.user_id)
                if update_with_user(
                    self.store, key, value, record.expires_at, record.version, user
                ):
                    return True
            # A request wrote meanwhile: merge into its version and try again.
            time.sleep(merge_backoff(attempt))
        raise StoreError(
            f"{self.store!r}: could not update the session after {MAX_MERGE_ATTEMPTS} "
            "concurrent changes"
        )

    def _revoke(self, key: str) -> bool:
        revoked = self.store.delete(key)
        if revoked:
            log.info("revoked a session")
        return revoked

    def _revoke_if_of(self, key: str, record: Record, text: str) -> bool:
        """Delete the record under ``key`` if it is (still) tied to the user
        ``text``. A compare-and-delete, so that a session that passed to
        another user meanwhile is left alone; re-read and retried when a
        request of the session wrote meanwhile."""
        current: Record | None = record
        for _ in range(MAX_MERGE_ATTEMPTS):
            if current is None or not self._tied_to(current, text):
                return False
            if self.store.delete(key, current.version):
                return True
            current = self.store.load(key)
        # Still this user's after that many concurrent writes: end it anyway.
        return self.store.delete(key)

    def _tied_to(self, record: Record, text: str) -> bool:
        """Whether ``record`` is a session record of the user ``text``, by its
        envelope. Looser than a listing on purpose: a record of this user
        written by another serializer, or past the absolute timeout, is
        removed as well (ending too much is the safe side of a revocation)."""
        if record.expires_at <= time.time():
            return False
        try:
            stored = envelope.unpack(record.value)
        except SerializationError:
            return False
        return user_text(stored.user_id) == text


def _user_text(user_id: str | int) -> str | None:
    """The index text of ``user_id``; None when no stored session can be tied
    to it (text that is not valid Unicode, which a record cannot hold)."""
    if user_id is None or (type(user_id) is not str and type(user_id) is not int):
        raise TypeError(f"user_id must be a str or an int, not {type(user_id).__name__}")
    text = str(user_id)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text
