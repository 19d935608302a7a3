"""Parallel requests of one session (DESIGN.md rules 10 and 11), for every embedded store.

Threads drive the WSGI application at the same time, each through its own
Werkzeug test client, released together by a barrier. The handlers sleep
between reading and writing the session so that every request reads the same
version and all of them race to write it back.

* Rule 11: requests that change different keys all keep their change (the
  middleware merges key by key, using the store's compare-and-set); requests
  that change the same key end with one of the written values (last writer wins).
* Rule 10: a session destroyed or regenerated while another request of it is in
  flight is never brought back by that request.

No test can hang: barriers and events have timeouts, and a thread that has
not finished after ``TIMEOUT`` seconds fails the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from wsgi_kvsession import KVSessionMiddleware, Session
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import FileStore, MemoryStore, SQLiteStore, Store

from .support import session_app

STORE_KINDS = ["memory", "file", "sqlite"]
PREFIX = "session:"
#: The longest any thread, barrier or event may take before the test fails.
TIMEOUT = 30.0
#: How long a handler waits between reading and writing the session.
RACE_WINDOW = 0.01
N_THREADS = 16
ROUNDS = 3


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    result: Store
    if kind == "memory":
        result = MemoryStore()
    elif kind == "file":
        result = FileStore(tmp_path / "sessions")
    else:
        result = SQLiteStore(tmp_path / "sessions.db")
    yield result
    result.close()


# --------------------------------------------------------------------------- the app


@dataclass
class Gate:
    """Holds a ``/slow`` request between loading its session and writing it."""

    loaded: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def make_app(store: Store, gate: Gate | None = None) -> KVSessionMiddleware:
    gate = gate or Gate()

    def handler(session: Session, request: Request) -> str | None:
        op = request.path.strip("/")
        args = request.args
        if op == "create":
            session["base"] = 1
            for i in range(N_THREADS):
                session[f"l{i}"] = []
        elif op == "set":
            session.get("base")  # load the session now, write it later
            time.sleep(RACE_WINDOW)
            session[args["k"]] = json.loads(args["v"])
        elif op == "append":
            session.get("base")
            time.sleep(RACE_WINDOW)
            session[args["k"]].append(json.loads(args["v"]))
        elif op == "delete":
            session.get("base")
            time.sleep(RACE_WINDOW)
            del session[args["k"]]
        elif op == "read":
            return json.dumps(dict(session), sort_keys=True)
        elif op == "logout":
            session.destroy()
        elif op == "regenerate":
            session.regenerate()
        elif op == "slow":
            session.get("base")
            gate.loaded.set()
            if not gate.release.wait(TIMEOUT):
                raise RuntimeError("the slow request was never released")
            session["late"] = 1
        else:
            raise ValueError(op)
        return None

    return KVSessionMiddleware(session_app(handler), store, cookie_secure=False)


@dataclass
class Reply:
    status: int
    body: str
    set_cookies: list[str]

    def session_id(self) -> str:
        (value,) = self.set_cookies
        return value.split(";", 1)[0].partition("=")[2]


def request(app: Callable[..., Iterable[bytes]], path: str, session_id: str | None) -> Reply:
    """One request through a fresh client that sends exactly the given cookie."""
    client = Client(app, use_cookies=False)
    headers = {"Cookie": f"session={session_id}"} if session_id else {}
    response = client.get(path, headers=headers)
    try:
        body = response.get_data(as_text=True)
    finally:
        response.close()
    cookies = [v for v in response.headers.getlist("Set-Cookie") if v.startswith("session=")]
    return Reply(response.status_code, body, cookies)


def in_parallel(
    app: Callable[..., Iterable[bytes]], paths: list[str], session_id: str
) -> list[Reply]:
    """Send every request of ``paths`` at once, each from its own thread and client."""
    barrier = threading.Barrier(len(paths), timeout=TIMEOUT)
    replies: list[Reply | None] = [None] * len(paths)
    errors: list[BaseException] = []

    def worker(index: int, path: str) -> None:
        try:
            barrier.wait()
            replies[index] = request(app, path, session_id)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=worker, args=(i, path), daemon=True, name=f"request-{i}")
        for i, path in enumerate(paths)
    ]
    for thread in threads:
        thread.start()
    join_all(threads)
    assert errors == [], f"request threads failed: {errors!r}"
    assert all(r is not None for r in replies)
    return [r for r in replies if r is not None]


def join_all(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert stuck == [], f"threads still running after {TIMEOUT} s: {stuck}"


def create(app: KVSessionMiddleware) -> str:
    reply = request(app, "/create", None)
    assert reply.status == 200
    return reply.session_id()


def read(app: KVSessionMiddleware, session_id: str) -> dict[str, Any]:
    reply = request(app, "/read", session_id)
    assert reply.status == 200
    assert reply.set_cookies == []
    data: dict[str, Any] = json.loads(reply.body)
    return data


def assert_plain_updates(replies: list[Reply]) -> None:
    """Every racing request succeeded and none issued a cookie: an update of an
    existing (non-permanent) session keeps its ID."""
    assert [r.status for r in replies] == [200] * len(replies)
    assert [r.set_cookies for r in replies] == [[]] * len(replies)


# --------------------------------------------------------------------------- rule 11


def test_parallel_changes_to_different_keys_are_all_kept(store: Store) -> None:
    app = make_app(store)
    session_id = create(app)
    for round_ in range(1, ROUNDS + 1):
        paths = [f"/set?k=k{i}&v={round_ * 100 + i}" for i in range(N_THREADS)]

        assert_plain_updates(in_parallel(app, paths, session_id))

        data = read(app, session_id)
        assert data["base"] == 1
        lost = [i for i in range(N_THREADS) if data.get(f"k{i}") != round_ * 100 + i]
        assert lost == [], f"round {round_}: changes of threads {lost} were lost"
    assert len(list(store.iter_records())) == 1


def test_parallel_nested_appends_to_different_keys_are_all_kept(store: Store) -> None:
    app = make_app(store)
    session_id = create(app)
    for round_ in range(1, ROUNDS + 1):
        paths = [f"/append?k=l{i}&v={round_}" for i in range(N_THREADS)]

        assert_plain_updates(in_parallel(app, paths, session_id))

        data = read(app, session_id)
        assert data["base"] == 1
        expected = list(range(1, round_ + 1))
        wrong = {f"l{i}": data[f"l{i}"] for i in range(N_THREADS) if data[f"l{i}"] != expected}
        assert wrong == {}, f"round {round_}: expected every list to be {expected}"


def test_parallel_changes_to_the_same_key_last_writer_wins(store: Store) -> None:
    app = make_app(store)
    session_id = create(app)
    assert request(app, "/set?k=other&v=%22kept%22", session_id).status == 200
    for _ in range(ROUNDS):
        paths = [f"/set?k=same&v={i}" for i in range(8)]

        assert_plain_updates(in_parallel(app, paths, session_id))

        data = read(app, session_id)
        assert data["same"] in range(8)
        assert data["base"] == 1
        assert data["other"] == "kept"
        assert data["l0"] == []


def test_parallel_delete_and_set_of_different_keys_both_apply(store: Store) -> None:
    app = make_app(store)
    session_id = create(app)
    for round_ in range(ROUNDS):
        assert request(app, "/set?k=x&v=1", session_id).status == 200
        assert "x" in read(app, session_id)

        replies = in_parallel(app, ["/delete?k=x", f"/set?k=y&v={round_}"], session_id)

        assert_plain_updates(replies)
        data = read(app, session_id)
        assert "x" not in data, f"round {round_}: the deletion was undone"
        assert data.get("y") == round_, f"round {round_}: the change was lost"
        assert data["base"] == 1


# --------------------------------------------------------------------------- rule 10


def start_slow_request(
    app: KVSessionMiddleware, gate: Gate, session_id: str
) -> tuple[threading.Thread, list[Reply], list[BaseException]]:
    """Start ``/slow`` in a thread and return once it has loaded the session."""
    replies: list[Reply] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            replies.append(request(app, "/slow", session_id))
        except BaseException as exc:
            errors.append(exc)
            gate.loaded.set()

    thread = threading.Thread(target=worker, daemon=True, name="slow-request")
    thread.start()
    assert gate.loaded.wait(TIMEOUT), "the slow request never loaded its session"
    assert errors == []
    return thread, replies, errors


def test_destroyed_session_is_not_resurrected_by_a_request_in_flight(store: Store) -> None:
    gate = Gate()
    app = make_app(store, gate)
    session_id = create(app)
    old_key = store_key(PREFIX, session_id)

    thread, replies, errors = start_slow_request(app, gate, session_id)
    try:
        logout = request(app, "/logout", session_id)
        assert logout.status == 200
        assert logout.session_id() == ""  # the cookie is expired
        assert store.load(old_key) is None
    finally:
        gate.release.set()
        join_all([thread])
    assert errors == []
    assert [r.status for r in replies] == [200]

    assert store.load(old_key) is None, "the destroyed session was written back"
    assert list(store.iter_records()) == []
    assert read(app, session_id) == {}
    assert list(store.iter_records()) == []


def test_regenerated_session_old_id_is_not_resurrected_by_a_request_in_flight(
    store: Store,
) -> None:
    gate = Gate()
    app = make_app(store, gate)
    old_id = create(app)
    old_key = store_key(PREFIX, old_id)

    thread, replies, errors = start_slow_request(app, gate, old_id)
    try:
        regenerated = request(app, "/regenerate", old_id)
        assert regenerated.status == 200
        new_id = regenerated.session_id()
        assert new_id
        assert new_id != old_id
        assert store.load(old_key) is None
    finally:
        gate.release.set()
        join_all([thread])
    assert errors == []
    assert [r.status for r in replies] == [200]

    assert store.load(old_key) is None, "the old ID's record was written back"
    new_key = store_key(PREFIX, new_id)
    assert store.load(new_key) is not None
    assert [key for key, _ in store.iter_records()] == [new_key]
    data = read(app, new_id)
    assert data["base"] == 1
    assert data["l0"] == []
    assert read(app, old_id) == {}
    assert [key for key, _ in store.iter_records()] == [new_key]


def test_merge_backoff_grows_to_a_cap_with_jitter() -> None:
    from wsgi_kvsession.session import MAX_MERGE_ATTEMPTS, MAX_MERGE_BACKOFF, merge_backoff

    assert all(0 <= merge_backoff(0) <= 0.0005 for _ in range(100))
    assert max(merge_backoff(4) for _ in range(200)) > 0.0005  # the window grew
    assert all(merge_backoff(n) <= MAX_MERGE_BACKOFF for n in range(MAX_MERGE_ATTEMPTS))
    # The worst case of a whole save stays bounded.
    assert sum(min(MAX_MERGE_BACKOFF, 0.0005 * 2**n) for n in range(MAX_MERGE_ATTEMPTS)) < 2
