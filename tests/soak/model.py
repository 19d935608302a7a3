"""The load client's own tally: what every session must hold, from what was acknowledged.

The soak never asks the store what it expects; it keeps its own book. Every
write (``/write``, ``/del``, the login's key) that answered 200 becomes an
:class:`Entry` of the session it was sent with: ``key = value`` must be there
later, or ``key`` must be absent for a delete. Keys are unique per write, so
parallel writes of one session never compete for a key and every entry can be
checked exactly.

A session ends with a login (``/regenerate``: new ID, data kept) or a logout
(``/destroy``). Writes of the old ID that run at the same moment are sorted by
the *server's* clock (``time.monotonic()``, shared by every process of the
machine), which each response reports, against when the lifecycle request
loaded the session and when it called ``regenerate()``/``destroy()``:

``strict``
    saved before the login loaded the session: the new session must hold it.
``window``
    saved after the login loaded the session but before it called
    ``regenerate()``: the change was in the store when the old record was
    deleted, acknowledged, and changes a key the login did not touch, so rule 11
    says it is kept. (wsgi_kvsession 0.1 drops these: see
    ``test_regenerate_race.py``; they are counted apart.)
``doubtful`` (not an entry: the key goes to :attr:`Lineage.doubtful`)
    saved after the login called ``regenerate()`` (rule 10: a request carrying
    the replaced ID loses its changes), or whose answer was lost: either
    outcome is right, so neither is checked.

Every change of a session that a logout ends is dropped (counted as
``destroyed``); the old cookie must then read as an empty session.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Grade(enum.Enum):
    STRICT = "strict"
    WINDOW = "window"


#: What a delete expects of its key.
ABSENT = None


@dataclass
class Entry:
    """One acknowledged change: ``key`` holds ``value`` (``ABSENT``: is not there)."""

    key: str
    value: str | None
    #: The server's monotonic time after the change was saved.
    committed_at: float
    grade: Grade = Grade.STRICT


@dataclass
class End:
    """How a session ended: a login (``regenerate``) or a logout (``destroy``)."""

    kind: str
    #: Server times: before the lifecycle request loaded the session, and
    #: before it called ``regenerate()``/``destroy()``.
    loaded_at: float
    changed_at: float
    successor: Lineage | None


@dataclass
class Lineage:
    """One session ID (one cookie value) and what it must hold."""

    cookie: str
    entries: dict[str, Entry] = field(default_factory=dict)
    #: Keys that may or may not be there (their outcome is legitimately unknown).
    doubtful: set[str] = field(default_factory=set)
    #: Keys a delete in flight is about to remove (never picked twice at once).
    deleting: set[str] = field(default_factory=set)
    #: Every key a delete was ever sent for: a read cannot tell whether such a
    #: delete, unanswered when the read was sent, came before the read loaded.
    delete_sent: set[str] = field(default_factory=set)
    #: A lifecycle request was sent with this cookie: it is about to end.
    ending: bool = False
    ended: End | None = None


@dataclass
class Violations:
    """What the checks found, by kind (all must stay zero)."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20
    #: (kind, subject) pairs already counted: a lost key read ten times is one loss.
    seen: set[tuple[str, str]] = field(default_factory=set)

    def add(self, kind: str, detail: str, subject: str | None = None) -> None:
        if subject is not None:
            if (kind, subject) in self.seen:
                return
            self.seen.add((kind, subject))
        self.counts[kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{kind}: {detail}")


class Tally:
    """The book of every session's expected content. Not thread-safe: the load
    client calls it under its own lock."""

    def __init__(self) -> None:
        #: Changes that will never be checked, by reason.
        self.unchecked: Counter[str] = Counter()
        self.violations = Violations()

    # -- recording -------------------------------------------------------

    def place(self, lineage: Lineage, entry: Entry) -> None:
        """Record an acknowledged change of ``lineage``, following it into the
        session that a login made of it, if one did meanwhile."""
        while lineage.ended is not None:
            end = lineage.ended
            if end.kind == "destroy":
                self.unchecked["destroyed"] += 1
                return
            assert end.successor is not None
            if entry.committed_at >= end.changed_at:
                self.doubt(end.successor, entry.key, "replaced")
                return
            if entry.committed_at >= end.loaded_at:
                entry.grade = Grade.WINDOW
            lineage = end.successor
        lineage.entries[entry.key] = entry
        lineage.doubtful.discard(entry.key)

    def doubt(self, lineage: Lineage, key: str, reason: str) -> None:
        """A change of ``key`` whose outcome is unknown (no answer, or a new
        session started by a request whose ID had been replaced)."""
        self.unchecked[reason] += 1
        while lineage.ended is not None and lineage.ended.successor is not None:
            lineage = lineage.ended.successor
        lineage.entries.pop(key, None)
        lineage.doubtful.add(key)

    def end(
        self,
        lineage: Lineage,
        kind: str,
        loaded_at: float,
        changed_at: float,
        successor_cookie: str | None,
    ) -> Lineage | None:
        """``lineage`` was ended by a login (with its new cookie) or a logout.

        Returns the new session's lineage (for a login), holding the old one's
        entries, graded by when they were saved.
        """
        successor = Lineage(successor_cookie) if successor_cookie is not None else None
        if successor is not None:
            successor.doubtful |= lineage.doubtful
            # Every delete ever sent, not only those in flight now: one sent two
            # logins ago may still be running (a slow worker thread) and land later.
            successor.delete_sent |= lineage.delete_sent | lineage.deleting
        lineage.ended = End(kind, loaded_at, changed_at, successor)
        entries, lineage.entries = lineage.entries, {}
        for entry in entries.values():
            if kind == "destroy":
                self.unchecked["destroyed"] += 1
            else:
                # Entries already in the book are re-placed: place() grades them.
                self.place(lineage, entry)
        return successor

    # -- checking --------------------------------------------------------

    def check(
        self,
        where: str,
        session: str,
        data: Mapping[str, Any],
        entries: Mapping[str, Entry],
        *,
        doubtful: set[str] | None = None,
    ) -> None:
        """Compare the ``data`` read from ``session`` (its cookie) with the
        ``entries`` it must hold. With ``doubtful`` given (the final check,
        nothing in flight), a key the book does not know of is a violation too.
        Each key of a session is counted once per kind, however often it is read."""
        for entry in entries.values():
            prefix = "" if entry.grade is Grade.STRICT else "window_"
            subject = f"{session}:{entry.key}"
            if entry.value is ABSENT:
                if entry.key in data:
                    self.violations.add(
                        prefix + "resurrected_keys",
                        f"{where}: deleted {entry.key!r} is back",
                        subject,
                    )
            elif data.get(entry.key) != entry.value:
                self.violations.add(
                    prefix + "lost_writes",
                    f"{where}: {entry.key!r} should be {entry.value!r}, "
                    f"is {data.get(entry.key, '<missing>')!r}",
                    subject,
                )
        if doubtful is not None:
            for key in data:
                if key not in entries and key not in doubtful:
                    self.violations.add(
                        "unexpected_keys", f"{where}: {key!r}={data[key]!r}", f"{session}:{key}"
                    )
