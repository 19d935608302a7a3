"""Session lifecycle events: logged, and handed to an optional hook.

Every event of a session's life (created, regenerated, destroyed, emptied,
expired, unknown, unreadable, gone during a request, and a rejected cookie) is
logged at INFO (WARNING for the unusual ones) on ``wsgi_kvsession.session``
with three ``extra`` fields a log handler can index, ``session_event``,
``session_hash`` and ``remote_addr`` (the client's address), and passed to the
``on_event`` option when one is set.

The hash is a keyed short hash of the session ID (HMAC-SHA256, 16 hex
digits): lines of one session correlate, while a log reader can neither
recover the ID (rule 4) nor confirm a guessed one, and cannot find the record in
a store dump either (the store key is an unkeyed hash). The key derives from
the first ``secret_key`` when signing is on, so every worker process hashes
alike; without one it is drawn per process, and lines correlate within a
process only.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("wsgi_kvsession.session")

_PROCESS_KEY = secrets.token_bytes(32)


class SessionEvent(str, enum.Enum):
    """What happened to a session."""

    CREATED = "created"
    REGENERATED = "regenerated"
    DESTROYED = "destroyed"
    #: The app emptied the session, so its record was deleted.
    EMPTIED = "emptied"
    EXPIRED = "expired"
    #: A well-formed cookie whose session the store does not have.
    UNKNOWN = "unknown"
    #: A record that is damaged or was written by another serializer.
    UNREADABLE = "unreadable"
    #: Destroyed or expired while a request of it ran; its changes were dropped.
    GONE = "gone"
    #: A cookie value that failed the format or signature check (rule 2).
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class SessionEventInfo:
    """What an ``on_event`` hook receives."""

    event: SessionEvent
    #: The keyed hash of the session ID; None for a rejected cookie.
    session_hash: str | None
    #: A human-readable detail, never the ID or the data.
    detail: str = ""
    #: The request's client address (``REMOTE_ADDR``, so the proxy's unless a
    #: trusted proxy fix rewrote it), for counting e.g. unknown or rejected
    #: cookies per client (ID guessing); None outside a request.
    remote_addr: str | None = None


EventHook = Callable[[SessionEventInfo], None]

_WARNINGS = frozenset({SessionEvent.UNREADABLE, SessionEvent.GONE})
_MESSAGES = {
    SessionEvent.CREATED: "session %s created",
    SessionEvent.REGENERATED: "session %s regenerated",
    SessionEvent.DESTROYED: "session %s destroyed",
    SessionEvent.EMPTIED: "session %s emptied and deleted",
    SessionEvent.EXPIRED: "session %s expired",
    SessionEvent.UNKNOWN: "unknown or expired session %s",
    SessionEvent.UNREADABLE: "ignoring unreadable session %s",
    SessionEvent.GONE: (
        "session %s was destroyed or expired while this request ran; its changes are "
        "dropped, not written back"
    ),
    SessionEvent.REJECTED: "rejected a malformed session cookie%s",
}


def log_key(secret_key: bytes | None) -> bytes:
    """The key of the log hash: derived from the signing key, or per process."""
    if secret_key is None:
        return _PROCESS_KEY
    return hashlib.sha256(b"wsgi_kvsession.log-hash\x00" + secret_key).digest()


def session_hash(key: bytes, session_id: str) -> str:
    """The keyed short hash of ``session_id`` for logs and hooks."""
    return hmac.new(key, session_id.encode("ascii"), hashlib.sha256).hexdigest()[:16]


def emit(
    hook: EventHook | None,
    event: SessionEvent,
    hashed: str | None,
    detail: str = "",
    remote_addr: str | None = None,
) -> None:
    """Log ``event`` and call ``hook``; a failing hook is logged, never raised."""
    level = logging.WARNING if event in _WARNINGS else logging.INFO
    if log.isEnabledFor(level):
        message = _MESSAGES[event]
        if detail:
            message += ": %s"
        args: tuple[object, ...] = (hashed or "",) + ((detail,) if detail else ())
        extra = {"session_event": event.value, "session_hash": hashed, "remote_addr": remote_addr}
        log.log(level, message, *args, extra=extra)
    if hook is not None:
        try:
            hook(SessionEventInfo(event, hashed, detail, remote_addr))
        except Exception:
            log.exception("the on_event hook failed on %s", event.value)
