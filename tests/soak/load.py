"""The soak's load client: bounded threads mixing session operations over many sessions.

Each client thread loops until the deadline (and at most ``max_requests``
times): it picks a session ("slot"), a few of them hot so that requests of one
session often run at once, and an operation, both with its own seeded RNG, and
sends it over a fresh HTTP connection:

* ``untouched``, ``read``, ``write`` (a key unique to the request), ``del`` (a
  key an earlier write set), up to ``max_per_session`` at once on a session;
* ``regenerate`` (a login) and ``destroy`` (a logout), one at a time per
  session but racing the other operations of that session;
* ``create``: a session without a cookie gets its first write, alone.

What was acknowledged goes into the :class:`~tests.soak.model.Tally`; reads are
checked against it as they come back, and :meth:`Soak.verify` checks every
session once the load has stopped. Nothing is retried: a 5xx or a transport
error is counted, never hidden.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from ..http.harness import REQUEST_TIMEOUT, HarnessError, Reply, http_get
from .app import COMMITTED_HEADER, PID_HEADER
from .model import ABSENT, Entry, Grade, Lineage, Tally

#: The operations and how often each is picked (the rest of the mix follows
#: from what a session allows at the moment: see Soak._reserve).
WEIGHTS: dict[str, int] = {
    "untouched": 15,
    "read": 30,
    "write": 33,
    "del": 8,
    "regenerate": 8,
    "destroy": 6,
}
#: Bound on the final verification (it reads every session once more).
VERIFY_TIMEOUT = 120.0
#: How many picks a thread tries before pausing (every session it drew was busy).
PICK_ATTEMPTS = 20


@dataclass(frozen=True)
class Profile:
    """The shape of the load."""

    sessions: int = 100
    #: The first ``hot_sessions`` sessions get ``hot_share`` of the picks, so
    #: that requests of one session overlap often.
    hot_sessions: int = 8
    hot_share: float = 0.3
    client_threads: int = 8
    #: Plain (non-lifecycle) requests in flight on one session at most.
    max_per_session: int = 2
    #: Share of writes/deletes that wait between load and save, and how long at most.
    delay_share: float = 0.3
    max_delay: float = 0.01
    #: How long a login "checks the password" at most.
    max_login_delay: float = 0.02
    weights: tuple[tuple[str, int], ...] = tuple(WEIGHTS.items())


@dataclass
class Answer:
    """A response, with what the app reports about the server's side."""

    reply: Reply
    committed_at: float | None
    pid: int | None

    @property
    def status(self) -> int:
        return self.reply.status

    def json(self) -> Any:
        return self.reply.json()


def call(port: int, path: str, cookie: str | None, timeout: float = REQUEST_TIMEOUT) -> Answer:
    """:func:`tests.http.harness.http_get`, with the app's timing headers read."""
    reply = http_get(port, path, cookie, timeout=timeout)
    committed = reply.headers.get(COMMITTED_HEADER)
    pid = reply.headers.get(PID_HEADER)
    return Answer(reply, float(committed) if committed else None, int(pid) if pid else None)


@dataclass
class Slot:
    """One simulated browser: its current session and what is in flight on it."""

    index: int
    lineage: Lineage | None = None
    shared: int = 0
    lifecycle: bool = False
    creating: bool = False


@dataclass
class Op:
    kind: str
    slot: Slot
    lineage: Lineage | None
    path: str
    key: str = ""
    value: str = ""
    #: For a read: the entries acknowledged before it was sent.
    snapshot: dict[str, Entry] = field(default_factory=dict)


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    #: "kind status" -> count, e.g. "write 200".
    statuses: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    #: Coverage: how often the interesting overlaps happened.
    overlaps: Counter[str] = field(default_factory=Counter)
    reads_checked: int = 0
    reads_skipped: int = 0
    pids: set[int] = field(default_factory=set)

    @property
    def server_errors(self) -> int:
        return sum(n for key, n in self.statuses.items() if key.split()[-1].startswith("5"))


class Soak:
    """The load, its book and its checks, against gunicorn on ``port``."""

    def __init__(self, port: int, profile: Profile, seed: int) -> None:
        self.port = port
        self.profile = profile
        self.seed = seed
        self.slots = [Slot(i) for i in range(profile.sessions)]
        self.tally = Tally()
        self.stats = Stats()
        #: Sessions that ended (logins, logouts): their old cookies must read empty.
        self.ended: list[Lineage] = []
        #: Cookies of sessions started by writes whose ID had been replaced.
        self.orphans: list[str] = []
        #: Every answered request, in the order the answers were booked.
        self.history: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counter = 0
        kinds, weights = zip(*profile.weights, strict=True)
        self._kinds: Sequence[str] = kinds
        self._weights: Sequence[int] = weights

    # -- running -----------------------------------------------------------

    def run(
        self,
        seconds: float,
        *,
        warm_up: float = 0.0,
        on_warm: Callable[[], None] | None = None,
        max_requests: int | None = None,
    ) -> float:
        """Run the load for ``warm_up + seconds``; call ``on_warm`` in between.

        Returns the measured seconds (after the warm-up). Raises
        :class:`HarnessError` if a thread outlives its deadline.
        """
        start = time.monotonic()
        deadline = start + warm_up + seconds
        limit = max_requests or int((warm_up + seconds) * 1000) + 100
        errors: list[BaseException] = []

        def thread_main(index: int) -> None:
            rng = random.Random(self.seed * 1000 + index)
            try:
                for _ in range(limit):
                    if time.monotonic() >= deadline:
                        return
                    op = self._reserve(rng)
                    if op is None:
                        time.sleep(0.001)
                        continue
                    self._send(op)
            except BaseException as exc:  # a bug of the client: fail the test with it
                errors.append(exc)

        threads = [
            threading.Thread(target=thread_main, args=(i,), name=f"soak-{i}", daemon=True)
            for i in range(self.profile.client_threads)
        ]
        for thread in threads:
            thread.start()
        if on_warm is not None:
            time.sleep(max(0.0, start + warm_up - time.monotonic()))
            on_warm()
        measured_from = time.monotonic()
        join_by = deadline + REQUEST_TIMEOUT + 5
        for thread in threads:
            thread.join(max(0.0, join_by - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            raise HarnessError(f"soak threads still running {REQUEST_TIMEOUT + 5}s after the end")
        if errors:
            raise HarnessError(f"the load client failed: {errors[0]!r}") from errors[0]
        return time.monotonic() - measured_from

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _pick_slot(self, rng: random.Random) -> Slot:
        profile = self.profile
        if rng.random() < profile.hot_share:
            return self.slots[rng.randrange(profile.hot_sessions)]
        return self.slots[rng.randrange(profile.sessions)]

    def _delay(self, rng: random.Random, share: float, longest: float) -> dict[str, str]:
        if longest > 0 and rng.random() < share:
            return {"delay": f"{rng.uniform(0, longest):.4f}"}
        return {}

    def _reserve(self, rng: random.Random) -> Op | None:
        """Pick a session and an operation it allows now, and mark it in flight."""
        profile = self.profile
        with self._lock:
            for _ in range(PICK_ATTEMPTS):
                slot = self._pick_slot(rng)
                kind = rng.choices(self._kinds, self._weights)[0]
                lineage = slot.lineage
                if slot.creating:
                    continue
                if lineage is None:
                    if slot.lifecycle:
                        continue
                    slot.creating = True
                    n = self._next()
                    query = {"k": "anchor", "v": f"a{n}"}
                    return Op("create", slot, None, "/write?" + urlencode(query), "anchor", f"a{n}")
                busy = slot.shared > 0 or slot.lifecycle
                if kind in ("regenerate", "destroy"):
                    if slot.lifecycle:
                        continue
                    slot.lifecycle = True
                    lineage.ending = True
                    if busy:
                        self.stats.overlaps["lifecycle_during_requests"] += 1
                    if kind == "destroy":
                        return Op(kind, slot, lineage, "/destroy")
                    n = self._next()
                    query = {"k": "login", "v": f"L{n}"}
                    query.update(self._delay(rng, 1.0, profile.max_login_delay))
                    path = "/regenerate?" + urlencode(query)
                    return Op(kind, slot, lineage, path, "login", f"L{n}")
                if slot.shared >= profile.max_per_session:
                    continue
                if busy:
                    self.stats.overlaps["same_session_in_flight"] += 1
                if slot.lifecycle:
                    self.stats.overlaps["request_during_lifecycle"] += 1
                slot.shared += 1
                if kind == "del":
                    candidates = [
                        key
                        for key, entry in lineage.entries.items()
                        if key.startswith("w")
                        and entry.value is not ABSENT
                        and entry.grade is Grade.STRICT
                        and key not in lineage.delete_sent
                    ]
                    if candidates:
                        key = rng.choice(sorted(candidates))
                        lineage.deleting.add(key)
                        lineage.delete_sent.add(key)
                        query = {"k": key}
                        query.update(self._delay(rng, profile.delay_share, profile.max_delay))
                        return Op(kind, slot, lineage, "/del?" + urlencode(query), key)
                    kind = "write"
                if kind == "write":
                    n = self._next()
                    key, value = f"w{n}", f"v{n}"
                    query = {"k": key, "v": value}
                    query.update(self._delay(rng, profile.delay_share, profile.max_delay))
                    return Op(kind, slot, lineage, "/write?" + urlencode(query), key, value)
                if kind == "read":
                    # Not the keys a delete in flight may remove before this read loads.
                    snapshot = {
                        key: entry
                        for key, entry in lineage.entries.items()
                        if key not in lineage.deleting and not lineage.ending
                    }
                    return Op(kind, slot, lineage, "/read", snapshot=snapshot)
                return Op(kind, slot, lineage, "/untouched")
        return None

    def _send(self, op: Op) -> None:
        cookie = op.lineage.cookie if op.lineage is not None else None
        try:
            answer: Answer | BaseException = call(self.port, op.path, cookie)
        except (OSError, http.client.HTTPException) as exc:
            answer = exc
        with self._lock:
            try:
                self._complete(op, answer)
            finally:
                self._release(op)

    def _release(self, op: Op) -> None:
        slot = op.slot
        if op.kind == "create":
            slot.creating = False
        elif op.kind in ("regenerate", "destroy"):
            slot.lifecycle = False
        else:
            slot.shared -= 1
        if op.kind == "del" and op.lineage is not None:
            op.lineage.deleting.discard(op.key)

    # -- the book ----------------------------------------------------------

    def _complete(self, op: Op, answer: Answer | BaseException) -> None:
        self._record(op, answer)
        stats, tally = self.stats, self.tally
        stats.requests[op.kind] += 1
        if isinstance(answer, BaseException):
            stats.transport_errors[f"{op.kind} {type(answer).__name__}"] += 1
            self._unknown_outcome(op, "no_answer")
            return
        stats.statuses[f"{op.kind} {answer.status}"] += 1
        if answer.pid is not None:
            stats.pids.add(answer.pid)
        if answer.status != 200 or answer.committed_at is None:
            self._unknown_outcome(op, "failed")
            return
        where = f"{op.kind} on session slot {op.slot.index}"
        cookie = answer.reply.cookie()
        lineage = op.lineage
        if op.kind == "create":
            if not cookie:
                tally.violations.add("create_without_cookie", where)
                return
            op.slot.lineage = Lineage(cookie)
            tally.place(op.slot.lineage, Entry(op.key, op.value, answer.committed_at))
            return
        assert lineage is not None
        if op.kind == "untouched":
            if answer.reply.set_cookies:
                tally.violations.add("untouched_set_cookie", where)
        elif op.kind == "read":
            if lineage.ending or lineage.ended is not None:
                stats.reads_skipped += 1  # a login or logout may have come first
            else:
                stats.reads_checked += 1
                # A key whose delete was sent after this read may be gone already.
                expected = {
                    key: entry
                    for key, entry in op.snapshot.items()
                    if entry.value is ABSENT or key not in lineage.delete_sent
                }
                tally.check(where, lineage.cookie, answer.json()["data"], expected)
        elif op.kind in ("write", "del"):
            if cookie:  # the request started a new session: its ID was not found
                if lineage.ending or lineage.ended is not None:
                    self.orphans.append(cookie)
                    tally.doubt(lineage, op.key, "orphaned")
                else:
                    tally.violations.add("session_lost", f"{where}: a new session was started")
                    tally.doubt(lineage, op.key, "orphaned")
                return
            value = op.value if op.kind == "write" else ABSENT
            tally.place(lineage, Entry(op.key, value, answer.committed_at))
        else:
            body = answer.json()
            kind, new_cookie = op.kind, None
            if op.kind == "regenerate":
                if cookie and cookie != lineage.cookie:
                    new_cookie = cookie
                else:
                    tally.violations.add("regenerate_without_new_cookie", where)
                    kind = "destroy"  # the browser has no session now: book it as a logout
            elif cookie != "":
                tally.violations.add("destroy_without_expired_cookie", where)
            successor = tally.end(lineage, kind, body["loaded_at"], body["changed_at"], new_cookie)
            self.ended.append(lineage)
            op.slot.lineage = successor
            if successor is not None:
                tally.place(successor, Entry(op.key, op.value, answer.committed_at))

    def _record(self, op: Op, answer: Answer | BaseException) -> None:
        """Keep what happened, for the history file a failure is explained with."""
        event: dict[str, Any] = {
            "slot": op.slot.index,
            "kind": op.kind,
            "cookie": op.lineage.cookie[:10] if op.lineage else None,
            "key": op.key,
            "value": op.value,
            "at": time.monotonic(),
        }
        if isinstance(answer, BaseException):
            event["error"] = repr(answer)
        else:
            event.update(status=answer.status, committed_at=answer.committed_at, pid=answer.pid)
            cookie = answer.reply.cookie()
            if cookie is not None:
                event["set_cookie"] = cookie[:10]
            if op.kind in ("regenerate", "destroy") and answer.status == 200:
                body = answer.json()
                event.update(loaded_at=body["loaded_at"], changed_at=body["changed_at"])
            if op.kind == "read" and answer.status == 200:
                event["data"] = sorted(answer.json()["data"])
        self.history.append(event)

    def _unknown_outcome(self, op: Op, reason: str) -> None:
        """A request without a usable answer: its change may or may not be there."""
        if op.kind in ("write", "del") and op.lineage is not None:
            self.tally.doubt(op.lineage, op.key, reason)
        elif op.kind in ("regenerate", "destroy"):
            # Which session the browser has now is unknown: forget the slot's
            # session, whose record may still be there (the failure itself
            # fails the test).
            if op.lineage is not None:
                self.orphans.append(op.lineage.cookie)
            op.slot.lineage = None

    # -- the final check -----------------------------------------------------

    def verify(self) -> None:
        """Read every session back (nothing is in flight any more): each live one
        holds exactly its book; each ended one reads as empty."""
        live = [slot.lineage for slot in self.slots if slot.lineage is not None]
        jobs: list[tuple[str, Lineage]] = [("live", lineage) for lineage in live]
        jobs += [("ended", lineage) for lineage in self.ended]

        def read(job: tuple[str, Lineage]) -> tuple[str, Lineage, Answer | BaseException]:
            try:
                return job[0], job[1], call(self.port, "/read", job[1].cookie)
            except (OSError, http.client.HTTPException) as exc:
                return job[0], job[1], exc

        pool = concurrent.futures.ThreadPoolExecutor(
            self.profile.client_threads, thread_name_prefix="verify"
        )
        try:
            futures = [pool.submit(read, job) for job in jobs]
            _done, pending = concurrent.futures.wait(futures, timeout=VERIFY_TIMEOUT)
            if pending:
                raise HarnessError(
                    f"verification: {len(pending)} reads pending after {VERIFY_TIMEOUT}s"
                )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for future in futures:
            state, lineage, answer = future.result()
            kind = f"verify_{state}"
            self.stats.requests[kind] += 1
            if isinstance(answer, BaseException):
                self.stats.transport_errors[f"{kind} {type(answer).__name__}"] += 1
                continue
            self.stats.statuses[f"{kind} {answer.status}"] += 1
            if answer.status != 200:
                continue
            data = answer.json()["data"]
            if state == "live":
                self.tally.check(
                    f"final read of {lineage.cookie[:8]}…",
                    lineage.cookie,
                    data,
                    lineage.entries,
                    doubtful=lineage.doubtful,
                )
            elif data:
                self.tally.violations.add(
                    "ended_session_readable",
                    f"the old cookie {lineage.cookie[:8]}… of a session ended by "
                    f"{lineage.ended and lineage.ended.kind} reads {sorted(data)}",
                )

    def live_cookies(self) -> list[str]:
        """Cookies whose sessions must have a record: the live ones and the orphans."""
        return [s.lineage.cookie for s in self.slots if s.lineage is not None] + self.orphans

    def summary(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "requests": dict(sorted(stats.requests.items())),
            "requests_total": sum(stats.requests.values()),
            "statuses": dict(sorted(stats.statuses.items())),
            "server_errors_5xx": stats.server_errors,
            "transport_errors": dict(stats.transport_errors),
            "violations": dict(sorted(self.tally.violations.counts.items())),
            "violation_examples": list(self.tally.violations.examples),
            "unchecked_changes": dict(sorted(self.tally.unchecked.items())),
            "reads_checked": stats.reads_checked,
            "reads_skipped": stats.reads_skipped,
            "overlaps": dict(sorted(stats.overlaps.items())),
            "sessions_ended": len(self.ended),
            "orphan_sessions": len(self.orphans),
            "entries_verified": sum(
                len(s.lineage.entries) for s in self.slots if s.lineage is not None
            ),
        }


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False, default=str)
