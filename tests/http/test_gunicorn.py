"""Rules 10 and 11 over real HTTP: gunicorn, four worker processes of four threads.

The in-process tests (``tests/test_concurrency.py``) race threads of one
process on one store object. Here the racers are separate processes, each
with its own store client and connection pool, behind a real HTTP server, on
every server store and the embedded ones on disk:

* 40 parallel requests on ONE session, each setting a key of its own: all 40
  keys survive (key-level merge on save over the store's compare-and-set).
* A slow request that has loaded the session while a logout destroys it: after
  both, the session stays gone (update-if-exists), in the store and for the
  browser that still sends the old cookie.
* A logout in the middle of such a burst: the old session stays gone, and the
  requests that came after it start new sessions holding nothing of the old one.

Both run on the raw WSGI middleware and on Flask through ``init_app``. Two
self-checks run the same scenarios with the app's store broken on purpose
(``BrokenStore``: blind writes, upserts) and show that they catch lost updates
and resurrection.

Nothing here measures speed; every wait has a bound (the harness's request
timeout and scenario deadline, the signal timeouts below).
"""

from __future__ import annotations

import concurrent.futures
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from wsgi_kvsession.ids import store_key

from .app_under_test import SIGNAL_TIMEOUT
from .conftest import STORE_KINDS, VARIANTS, StoreSetup, signal_dir_of
from .harness import (
    N_PARALLEL,
    REQUEST_TIMEOUT,
    GunicornServer,
    HarnessError,
    LostUpdateRun,
    Reply,
    fire_parallel,
    http_get,
    lost_update_run,
)

pytestmark = pytest.mark.server

Serve = Callable[..., GunicornServer]

#: Each ``/set`` loads the session, waits this long, then writes: the requests
#: of a wave then hold the same version, so their writes do collide and must merge.
RACE_WINDOW = 0.02
#: The self-check tries the broken store this many times before concluding
#: that the scenario cannot see lost updates (one run is nearly always enough).
SELF_CHECK_RUNS = 3


def run_burst(server: GunicornServer) -> LostUpdateRun:
    try:
        return lost_update_run(server.port, delay=RACE_WINDOW)
    except HarnessError as exc:
        pytest.fail(f"{exc}\n{server.log_tail()}", pytrace=False)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("http_store", STORE_KINDS, indirect=True)
def test_parallel_requests_on_one_session_keep_every_key(
    http_store: StoreSetup, variant: str, serve: Serve
) -> None:
    server = serve(variant, http_store)
    run = run_burst(server)
    context = f"{run.describe()}\n{server.log_tail()}"

    assert run.statuses == Counter({"200": N_PARALLEL}), context
    assert run.missing == [], context
    assert run.final.get("init") == "0", context
    # The burst really ran in several processes (not one worker doing it all).
    assert len(run.pids) >= 2, context
    # What the app read back is what the store holds, under this session's key.
    assert http_store.store.load(store_key(http_store.key_prefix, run.session_id)), context


@pytest.mark.parametrize("http_store", ["sqlite"], indirect=True)
def test_self_check_the_burst_sees_lost_updates_of_blind_writes(
    http_store: StoreSetup, serve: Serve
) -> None:
    """With updates that ignore the version, the same burst loses keys: the
    test above can fail."""
    server = serve("wsgi", http_store, broken="blind-writes")
    runs = []
    for _ in range(SELF_CHECK_RUNS):
        runs.append(run_burst(server))
        if runs[-1].lost:
            break
    assert runs[-1].lost, "\n".join(run.describe() for run in runs)


@dataclass
class LogoutRace:
    """What a slow request and a logout racing on one session left behind."""

    key: str
    logout: Reply
    slow: Reply
    #: After both: the record under the session's key, and the keys under the prefix.
    record_after_race: object
    records_after_race: list[str] | None
    #: The old cookie sent again.
    after: Reply
    record_after_get: object
    log: str

    def describe(self) -> str:
        return (
            f"logout: {self.logout.status} {self.logout.set_cookies}; slow request: "
            f"{self.slow.status} {self.slow.set_cookies} {self.slow.body[:300]!r}; "
            f"record after the race: {self.record_after_race!r}; records under the prefix: "
            f"{self.records_after_race}; old cookie again: {self.after.status} "
            f"{self.after.body[:300]!r} {self.after.set_cookies}\n{self.log}"
        )


def _wait_for(path: Path, pending: concurrent.futures.Future[Reply], what: str) -> None:
    """Wait (bounded) until ``path`` exists; fail early if the request already ended."""
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while not path.exists():
        if pending.done():
            pytest.fail(f"{what}: the request ended first: {pending.result()!r}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {SIGNAL_TIMEOUT}s", pytrace=False)
        time.sleep(0.01)


def logout_race(server: GunicornServer, setup: StoreSetup) -> LogoutRace:
    """A (``/slow-set``) loads the session and waits; B (``/logout``) destroys
    it; then A sets a key. The signal files order the three steps exactly."""
    store, signals = setup.store, signal_dir_of(server.work_dir)
    first = server.get("/set?k=user&v=alice")
    session_id = first.cookie()
    assert first.status == 200, server.log_tail()
    assert session_id, first.set_cookies
    key = store_key(setup.key_prefix, session_id)
    assert store.load(key) is not None

    token = secrets.token_hex(8)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http_get, server.port, f"/slow-set?k=late&v=1&token={token}", session_id)
        try:
            _wait_for(signals / f"loaded-{token}", slow, "the slow request loading the session")
            logout = server.get("/logout", session_id)
        finally:
            (signals / f"go-{token}").touch()  # A goes on (also when B failed)
        slow_reply = slow.result(timeout=SIGNAL_TIMEOUT + REQUEST_TIMEOUT)
    record_after_race = store.load(key)
    records_after_race = setup.records()
    after = server.get("/get", session_id)
    return LogoutRace(
        key=key,
        logout=logout,
        slow=slow_reply,
        record_after_race=record_after_race,
        records_after_race=records_after_race,
        after=after,
        record_after_get=store.load(key),
        log=server.log_tail(),
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("http_store", STORE_KINDS, indirect=True)
def test_slow_request_racing_a_logout_leaves_the_session_gone(
    http_store: StoreSetup, variant: str, serve: Serve
) -> None:
    race = logout_race(serve(variant, http_store), http_store)
    context = race.describe()

    assert race.logout.status == 200, context
    assert race.logout.cookie() == "", context  # the browser is told to drop the cookie
    # A finished normally: its late write was refused, not failed with a 5xx
    # (which persists nothing anyway, and would prove nothing).
    assert race.slow.status == 200, context
    # ... and it handed out no session: neither the old one nor a new one.
    assert not race.slow.cookie(), context
    assert race.record_after_race is None, context
    assert race.records_after_race in (None, []), context  # None: memcached cannot list
    # The old cookie, sent again, finds an empty session and brings nothing back.
    assert race.after.status == 200, context
    assert race.after.json()["data"] == {}, context
    assert not race.after.cookie(), context
    assert race.record_after_get is None, context
    assert http_store.records() in (None, []), context


@pytest.mark.parametrize("http_store", ["sqlite"], indirect=True)
def test_self_check_the_logout_race_sees_an_upsert_resurrect_the_session(
    http_store: StoreSetup, serve: Serve
) -> None:
    """With an update that creates a missing record, the slow request brings the
    destroyed session back: the test above can fail."""
    race = logout_race(serve("wsgi", http_store, broken="upsert"), http_store)
    assert race.logout.status == 200, race.describe()
    assert race.slow.status == 200, race.describe()
    assert race.record_after_race is not None, race.describe()
    assert race.after.json()["data"].get("late") == "1", race.describe()


@pytest.mark.parametrize("http_store", STORE_KINDS, indirect=True)
def test_logout_in_the_middle_of_a_burst_keeps_the_old_session_gone(
    http_store: StoreSetup, serve: Serve
) -> None:
    """The requests that loaded the session before the logout cannot write it
    back; those that load it after find none and start a session of their own
    (strict mode, rule 3), which holds their key and nothing else."""
    server = serve("wsgi", http_store)
    first = server.get("/set?k=init&v=0")
    session_id = first.cookie()
    assert first.status == 200, server.log_tail()
    assert session_id, first.set_cookies
    key = store_key(http_store.key_prefix, session_id)
    logout_at = N_PARALLEL // 2
    paths = [f"/set?k=key{i}&v={i}&delay={RACE_WINDOW}" for i in range(N_PARALLEL)]
    paths[logout_at] = "/logout"
    try:
        replies = fire_parallel(server.port, paths, session_id)
    except HarnessError as exc:
        pytest.fail(f"{exc}\n{server.log_tail()}", pytrace=False)
    statuses = Counter(r.status if isinstance(r, Reply) else repr(r) for r in replies)
    context = f"statuses {dict(statuses)}\n{server.log_tail()}"
    assert statuses == Counter({200: N_PARALLEL}), context
    logout = replies[logout_at]
    assert isinstance(logout, Reply), context
    assert logout.cookie() == "", context

    assert http_store.store.load(key) is None, context
    after = server.get("/get", session_id)
    assert after.json()["data"] == {}, context
    assert http_store.store.load(key) is None, context
    # Every new session is one request's own: its key, nothing of the old session.
    new_sessions = {
        i: reply.cookie()
        for i, reply in enumerate(replies)
        if isinstance(reply, Reply) and reply.cookie()
    }
    for i, new_id in new_sessions.items():
        data = server.get("/get", new_id).json()["data"]
        assert data == {f"key{i}": str(i)}, f"new session of request {i}: {data}\n{context}"
    records = http_store.records()
    if records is not None:  # memcached cannot list
        assert len(records) == len(new_sessions), f"{records}\n{context}"
