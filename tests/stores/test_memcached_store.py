"""MemcacheStore beyond the contract: round trips, outages, nodes, TTLs, keys.

Every server here is a memcached these tests start (tests/servers.py), so its
``stats`` counters are exact and it can be killed and brought back.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Request

from wsgi_kvsession import Session, StoreError
from wsgi_kvsession.stores import store_from_url

from ..servers import ServerProcess, free_port
from ..support import (
    assert_instances_share_records,
    client_for,
    set_cookies,
    write_in_forked_child,
)
from .backend_memcached import start_memcached, url_of

pymemcache = pytest.importorskip("pymemcache")
from pymemcache.client.base import Client, PooledClient  # noqa: E402
from pymemcache.client.hash import HashClient  # noqa: E402
from pymemcache.exceptions import MemcacheUnexpectedCloseError  # noqa: E402

from wsgi_kvsession.stores.memcache import (  # noqa: E402
    MemcacheStore,
    _exptime,
    _memcached_key,
)

DAY = 24 * 3600


def later(seconds: float = 600.0) -> float:
    return time.time() + seconds


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A memcached private to the test (its counters count this test only)."""
    started = start_memcached(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    first = start_memcached(tmp_path)
    try:
        second = start_memcached(tmp_path)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture
def key() -> str:
    return "test:" + secrets.token_hex(8) + ":" + secrets.token_hex(32)


def direct(server: ServerProcess) -> Client:
    """A plain pymemcache client to one node, for looking behind the store."""
    return Client(("127.0.0.1", server.port), connect_timeout=5, timeout=5)


# ------------------------------------------------------------- round trips


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    real = time.time
    c = Clock()
    monkeypatch.setattr(time, "time", lambda: real() + c.offset)
    return c


#: The counters of memcached's ``stats`` that count commands and their outcomes.
COUNTERS = (
    "cmd_get", "cmd_set", "cmd_touch", "cmd_flush", "cmd_meta",
    "get_hits", "get_misses", "get_expired", "get_flushed",
    "delete_hits", "delete_misses", "incr_hits", "incr_misses", "decr_hits", "decr_misses",
    "cas_hits", "cas_misses", "cas_badval", "touch_hits", "touch_misses",
)  # fmt: skip


class Counters:
    """What the server itself counted between two ``stats`` calls.

    The ``stats`` command is not counted in any of these counters, and the
    server is private to the test, so the differences are exactly the commands
    the store sent during the request.
    """

    def __init__(self, server: ServerProcess) -> None:
        self.client = direct(server)
        self.last = self.snapshot()

    def snapshot(self) -> dict[str, int]:
        stats = self.client.stats()
        return {name: int(stats.get(name.encode(), 0)) for name in COUNTERS}

    def since_last(self) -> dict[str, int]:
        now = self.snapshot()
        delta = {name: now[name] - self.last[name] for name in COUNTERS}
        self.last = now
        return {name: n for name, n in delta.items() if n}


def _routes(session: Session, request: Request) -> Any:
    if request.path == "/set":
        for k, v in request.args.items():
            session[k] = v
    elif request.path == "/read":
        return repr(dict(session))
    elif request.path == "/clear":
        session.clear()
    return "nothing"  # "/nothing": the session is never looked at


READ = {"cmd_get": 1, "get_hits": 1}
#: A write after a load: one cas with the CAS unique the load saw (memcached
#: counts a cas under cmd_set too).
CAS_AFTER_READ = {"cmd_get": 1, "get_hits": 1, "cmd_set": 1, "cas_hits": 1}


@pytest.mark.parametrize("nodes", [1, 2], ids=["one-server", "hash-client"])
def test_round_trips_per_request_follow_rules_6_to_9(
    tmp_path: Path, clock: Clock, nodes: int
) -> None:
    servers = [start_memcached(tmp_path) for _ in range(nodes)]
    try:
        store = MemcacheStore(url_of(*servers))
        counters = [Counters(s) for s in servers]

        def counted() -> dict[str, int]:
            total: dict[str, int] = {}
            for c in counters:
                for name, n in c.since_last().items():
                    total[name] = total.get(name, 0) + n
            return total

        client = client_for(_routes, store, idle_timeout=3600, touch_interval=60)
        # Rule 6: a request that never looks at the session sends nothing.
        client.get("/nothing")
        assert counted() == {}
        # Rule 7: a new session left empty (read, nothing stored) sends nothing.
        assert client.get("/read").text == "{}"
        assert counted() == {}
        # Creating the session: one add.
        client.get("/set?a=1")
        assert counted() == {"cmd_set": 1}
        # Rule 8: read only: one read, no write.
        assert client.get("/read").text == "{'a': '1'}"
        assert counted() == READ
        # Rule 8: once touch_interval has passed, one read plus one touch (a
        # cas that rewrites the header's expiry, not memcached's touch).
        clock.advance(120)
        assert client.get("/read").text == "{'a': '1'}"
        assert counted() == CAS_AFTER_READ
        # Rule 9: a change: one read and one write.
        client.get("/set?b=2")
        assert counted() == CAS_AFTER_READ
        # Rule 7: emptied: one read and one delete (a cas to a tombstone).
        response = client.get("/clear")
        assert counted() == CAS_AFTER_READ
        assert set_cookies(response)
        assert client.get("/read").text == "{}"
        store.close()
    finally:
        for s in servers:
            s.stop()


def test_a_write_without_a_remembered_load_reads_again(server: ServerProcess, key: str) -> None:
    # Two store objects, as two worker processes: the second has not loaded
    # what the first wrote, so its writes fall back to gets + cas.
    one = MemcacheStore(url_of(server))
    two = MemcacheStore(url_of(server))
    assert_instances_share_records(one, two, key)
    counters = Counters(server)
    assert one.insert(key, b"v", later()) is True
    version = one.load(key)
    assert version is not None
    counters.since_last()
    assert two.update(key, b"w", later(), version=version.version) is True
    assert counters.since_last() == {"cmd_get": 1, "get_hits": 1, "cmd_set": 1, "cas_hits": 1}
    # The first store remembers a load whose CAS unique is now stale: its cas
    # fails, it reads again and finds the version changed.
    assert one.update(key, b"lost", later(), version=version.version) is False
    assert counters.since_last() == {
        "cmd_get": 1, "get_hits": 1, "cmd_set": 1, "cas_badval": 1,
    }  # fmt: skip
    loaded = two.load(key)
    assert loaded is not None
    assert loaded.value == b"w"


def test_a_touch_by_another_process_does_not_defeat_the_version(
    server: ServerProcess, key: str
) -> None:
    one = MemcacheStore(url_of(server))
    two = MemcacheStore(url_of(server))
    assert one.insert(key, b"v", later()) is True
    read = one.load(key)
    assert read is not None
    assert two.touch(key, later(1200)) is True  # new CAS unique, same token
    assert one.update(key, b"w", later(), version=read.version) is True
    after = two.load(key)
    assert after is not None
    assert after.value == b"w"
    assert after.version != read.version


# -------------------------------------------------------------------- outages


def _every_operation(store: MemcacheStore) -> list[Callable[[], object]]:
    return [
        lambda: store.load("k"),
        lambda: store.insert("k", b"v", later()),
        lambda: store.update("k", b"v", later()),
        lambda: store.touch("k", later()),
        lambda: store.delete("k"),
    ]


def test_store_down_raises_store_error_within_the_timeout() -> None:
    port = free_port()  # nothing listens there
    store = MemcacheStore(f"memcached://127.0.0.1:{port}", timeout=1)  # never connects yet
    for operation in _every_operation(store):
        start = time.monotonic()
        with pytest.raises(StoreError) as raised:
            operation()
        assert time.monotonic() - start < 1 + 1.5
        assert f"MemcacheStore('memcached://127.0.0.1:{port}')" in str(raised.value)


def test_a_server_that_never_answers_fails_within_the_timeout() -> None:
    # The kernel completes the connection (the listener's backlog) but nothing
    # ever reads the command: every operation waits out its one timeout, and
    # a timeout is not retried (the command may be running on a slow server).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        store = MemcacheStore(f"memcached://127.0.0.1:{port}", timeout=1)
        for operation in _every_operation(store):
            start = time.monotonic()
            with pytest.raises(StoreError, match="MemcacheStore") as raised:
                operation()
            elapsed = time.monotonic() - start
            assert 1 <= elapsed < 1 + 1.5, elapsed
            assert "timed out" in str(raised.value)
        store.close()


def test_a_password_in_the_url_is_refused_and_masked() -> None:
    # memcached's text protocol has no authentication: a password would be
    # silently ignored, so the store refuses it (and never shows it).
    with pytest.raises(ValueError, match="no password") as raised:
        MemcacheStore(f"memcached://user:s3cret@127.0.0.1:{free_port()}")
    assert "s3cret" not in str(raised.value)
    assert "***" in str(raised.value)


def test_the_same_store_works_again_after_a_restart(
    server: ServerProcess, tmp_path: Path, key: str
) -> None:
    store = MemcacheStore(url_of(server), timeout=1)
    assert store.insert(key, b"v", later()) is True
    server.kill()
    with pytest.raises(StoreError, match="MemcacheStore"):
        store.load(key)
    server.start()  # same port
    assert store.load(key) is None  # memcached keeps nothing across a restart
    assert store.insert(key, b"again", later()) is True
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.value == b"again"


def test_idle_pooled_connections_survive_a_restart(server: ServerProcess, key: str) -> None:
    # No call while the server is down, so the pooled connection is stale when
    # it is next used: the store notices and reconnects, no error surfaces.
    store = MemcacheStore(url_of(server), timeout=1)
    assert store.insert(key, b"v", later()) is True
    server.kill()
    server.start()
    assert store.load(key) is None
    assert store.insert(key, b"v", later()) is True
    assert store.touch(key, later()) is True


def _holder(servers: list[ServerProcess], k: str) -> ServerProcess:
    """The one server that holds ``k``."""
    holding = [s for s in servers if direct(s).get(k) is not None]
    assert len(holding) == 1
    return holding[0]


def _pool_of(store: MemcacheStore, k: str) -> Any:
    """The connection pool of the ``PooledClient`` that serves ``k``."""
    client = store._client
    if isinstance(client, HashClient):
        client = client.clients[client.hasher.get_node(k)]
    return client.client_pool


@pytest.mark.parametrize("nodes", [1, 2], ids=["one-server", "hash-client"])
def test_a_restart_drops_every_stale_pooled_connection_before_the_retry(
    tmp_path: Path, nodes: int
) -> None:
    servers = [start_memcached(tmp_path) for _ in range(nodes)]
    try:
        store = MemcacheStore(url_of(*servers), timeout=1)
        k = "test:" + secrets.token_hex(32)
        assert store.insert(k, b"v", later()) is True
        # Four connections open at once, as four concurrent requests leave
        # them: all connected, then idle in the pool.
        pool = _pool_of(store, k)
        held = [pool.get() for _ in range(4)]
        for connection in held:
            connection.version()  # connects
        for connection in held:
            pool.release(connection)
        assert len(pool.free) >= 4
        assert all(c.sock is not None for c in pool.free)
        node = _holder(servers, k)
        node.kill()
        node.start()  # same port: every pooled connection is now stale
        # The very first call succeeds: the first stale connection fails, the
        # others are dropped with it, and the retry connects anew.
        assert store.load(k) is None  # memcached keeps nothing across a restart
        assert store.insert(k, b"again", later()) is True
        record = store.load(k)
        assert record is not None
        assert record.value == b"again"
    finally:
        for s in servers:
            s.stop()


def _keys_by_node(
    store: MemcacheStore, pair: tuple[ServerProcess, ServerProcess], count: int = 40
) -> tuple[list[str], list[str]]:
    """Insert keys through the store and sort them by the node that holds them."""
    first, second = direct(pair[0]), direct(pair[1])
    on_first: list[str] = []
    on_second: list[str] = []
    for _ in range(count):
        k = "test:" + secrets.token_hex(32)
        assert store.insert(k, b"value", later()) is True
        assert (first.get(k) is None) != (second.get(k) is None)  # on exactly one
        (on_first if first.get(k) is not None else on_second).append(k)
    assert on_first
    assert on_second
    return on_first, on_second


def test_a_node_going_away_fails_its_keys_loudly_and_spares_the_others(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    store = MemcacheStore(url_of(*pair), timeout=1)
    on_dead, on_live = _keys_by_node(store, pair)
    dead = pair[0]
    dead.kill()
    # Many times, and over more than pymemcache's default retry_timeout (1 s):
    # never a miss that looks like "no session", never a key moved to the
    # other node.
    deadline = time.monotonic() + 1.5
    rounds = 0
    while rounds < 3 or time.monotonic() < deadline:
        rounds += 1
        assert rounds < 1000
        for k in on_dead[:5]:
            for operation in (
                lambda k=k: store.load(k),
                lambda k=k: store.insert(k, b"elsewhere", later()),
                lambda k=k: store.update(k, b"new", later()),
                lambda k=k: store.touch(k, later()),
                lambda k=k: store.delete(k),
            ):
                with pytest.raises(StoreError, match=f"node 127.0.0.1:{dead.port}"):
                    operation()
        for k in on_live[:5]:
            record = store.load(k)
            assert record is not None
            assert store.update(k, b"value", later(), version=record.version) is True
        time.sleep(0.05)
    # Nothing landed on the surviving node for the dead node's keys.
    survivor = direct(pair[1])
    assert all(survivor.get(k) is None for k in on_dead)

    dead.start()  # same port; memcached comes back empty
    for k in on_dead[:5]:
        assert store.load(k) is None
        assert store.insert(k, b"back", later()) is True
    assert direct(dead).get(on_dead[0]) is not None
    for k in on_live:
        assert store.load(k) is not None


def test_threads_see_only_store_errors_while_a_node_restarts(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    # pymemcache's HashClient keeps a map of failing nodes that its threads
    # race on (KeyError from _failed_clients.pop when a node recovers) and
    # that turns a failing node into misses: the store must bypass all of it.
    store = MemcacheStore(url_of(*pair), timeout=1)
    on_dead, on_live = _keys_by_node(store, pair)
    dead_keys = set(on_dead)
    dead = pair[0]
    keys = on_dead + on_live
    inf = float("inf")
    phase = {"killed": inf, "down": inf, "restarting": inf, "restarted": inf}
    # (start, end, key, error) of every failed call, (start, end) of every
    # call on the stopped node's keys that succeeded.
    errors: list[tuple[float, float, str, BaseException]] = []
    dead_ok: list[tuple[float, float]] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        # No pause between calls: the race needs several threads calling the
        # node at the moment it comes back. Bounded in count and time.
        deadline = time.monotonic() + 30
        for i in range(200_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            k = keys[(seed * 7 + i) % len(keys)]
            start = time.monotonic()
            try:
                record = store.load(k)
                if record is None:
                    store.insert(k, b"back", later())
                else:
                    store.update(k, b"value", later(), version=record.version)
            except BaseException as exc:  # every kind, to be checked below
                errors.append((start, time.monotonic(), k, exc))
            else:
                if k in dead_keys:
                    dead_ok.append((start, time.monotonic()))

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(12)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        phase["killed"] = time.monotonic()
        dead.kill()
        phase["down"] = time.monotonic()  # kill() returns once the process is gone
        time.sleep(0.7)
        phase["restarting"] = time.monotonic()
        dead.start()  # same port; returns once it accepts connections
        phase["restarted"] = time.monotonic()
        time.sleep(0.7)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not any(t.is_alive() for t in threads)

    assert errors  # the outage was seen
    assert [e for *_, e in errors if not isinstance(e, StoreError)] == []
    # Each a connection failure (the store wraps every error in StoreError:
    # its cause tells a refused connection from pymemcache's own KeyError).
    assert [
        e for *_, e in errors if not isinstance(e.__cause__, OSError | MemcacheUnexpectedCloseError)
    ] == []
    # Only the stopped node's keys fail, each with an error naming the node,
    # and only while it is down: once it answers again, every call works.
    assert [k for _, _, k, _ in errors if k not in dead_keys] == []
    for start, end, _, e in errors:
        assert f"node 127.0.0.1:{dead.port}" in str(e)
        assert end >= phase["killed"]
        assert start < phase["restarted"], f"failed after the restart: {e}"
    # Never a miss, never a key served elsewhere: no call on the stopped
    # node's keys succeeded while it was down...
    assert [c for c in dead_ok if phase["down"] < c[0] and c[1] < phase["restarting"]] == []
    # ...and the threads did use the node again once it was back.
    assert [c for c in dead_ok if c[0] > phase["restarted"]]
    survivor = direct(pair[1])
    assert all(survivor.get(k) is None for k in on_dead)
    for k in keys:
        assert store.load(k) is not None


# ----------------------------------------------------------- CAS and retries


def test_a_server_without_cas_is_refused_with_a_clear_error(tmp_path: Path, key: str) -> None:
    nocas = start_memcached(tmp_path, "-C")  # CAS disabled: every CAS unique is 0
    try:
        store = MemcacheStore(url_of(nocas), timeout=1)
        assert store.insert(key, b"v", later()) is True  # add needs no CAS unique
        for operation in (
            lambda: store.load(key),
            lambda: store.insert(key, b"again", later()),
            lambda: store.update(key, b"w", later()),
            lambda: store.touch(key, later()),
            lambda: store.delete(key),
        ):
            with pytest.raises(StoreError, match="CAS is disabled") as raised:
                operation()
            assert "without -C" in str(raised.value)
            assert repr(store) in str(raised.value)
        # Nothing was changed by the refused writes.
        value, _ = direct(nocas).gets(key)
        assert value is not None
        assert value.endswith(b"v")
    finally:
        nocas.stop()


class LoseFirstReply:
    """Wraps a client method: the first call runs on the server, then its
    reply is lost as a connection the server dropped would lose it."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.lost = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.real(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise MemcacheUnexpectedCloseError()
        return result


def _lose_first_reply(
    monkeypatch: pytest.MonkeyPatch, store: MemcacheStore, method: str
) -> LoseFirstReply:
    wrapper = LoseFirstReply(getattr(store._client, method))
    monkeypatch.setattr(store._client, method, wrapper)
    return wrapper


@pytest.mark.parametrize("loaded", [True, False], ids=["after-a-load", "cold"])
@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "unversioned"])
def test_a_delete_whose_reply_was_lost_still_reports_the_delete(
    server: ServerProcess,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
    loaded: bool,
    versioned: bool,
) -> None:
    writer = MemcacheStore(url_of(server))
    assert writer.insert(key, b"v", later()) is True
    record = writer.load(key)
    assert record is not None
    # "cold": a store that did not load the record first (another worker).
    store = writer if loaded else MemcacheStore(url_of(server))
    lossy = _lose_first_reply(monkeypatch, store, "cas")
    assert store.delete(key, version=record.version if versioned else None) is True
    assert lossy.lost == 1  # the tombstone was written, its answer lost, and retried
    assert store.load(key) is None
    assert store.delete(key) is False  # a second delete finds nothing
    assert store.insert(key, b"new", later()) is True


def test_an_insert_whose_reply_was_lost_still_reports_the_insert(
    server: ServerProcess, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemcacheStore(url_of(server))
    lossy = _lose_first_reply(monkeypatch, store, "add")
    assert store.insert(key, b"mine", later()) is True
    assert lossy.lost == 1
    record = store.load(key)
    assert record is not None
    assert record.value == b"mine"
    assert store.insert(key, b"other", later()) is False  # a real conflict stays one


def test_an_update_whose_reply_was_lost_still_reports_the_update(
    server: ServerProcess, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemcacheStore(url_of(server))
    assert store.insert(key, b"v", later()) is True
    record = store.load(key)
    assert record is not None
    lossy = _lose_first_reply(monkeypatch, store, "cas")
    assert store.update(key, b"w", later(), version=record.version) is True
    assert lossy.lost == 1
    after = store.load(key)
    assert after is not None
    assert after.value == b"w"


# ------------------------------------------------------------------- fork


def _total_connections(watchers: list[Client]) -> int:
    return sum(int(w.stats()[b"total_connections"]) for w in watchers)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
@pytest.mark.parametrize("kind", ["one-server", "hash-client", "given-client"])
def test_a_forked_child_uses_its_own_connections(tmp_path: Path, kind: str) -> None:
    servers = [start_memcached(tmp_path) for _ in range(2 if kind == "hash-client" else 1)]
    try:
        if kind == "given-client":
            given = PooledClient(("127.0.0.1", servers[0].port), no_delay=True, timeout=5)
            store = MemcacheStore(client=given)
        else:
            store = MemcacheStore(url_of(*servers))
        key = "test:" + secrets.token_hex(32)
        child_key = "test:" + secrets.token_hex(32)
        assert store.insert(key, b"parent", later()) is True  # a pooled connection
        # ...and one to child_key's node too (it may be another node): with the
        # parent's connections at hand, only fork handling makes the child connect.
        assert store.load(child_key) is None
        # Open (and count) the watchers' own connections before the baseline.
        watchers = [direct(s) for s in servers]
        before = _total_connections(watchers)
        write_in_forked_child(store, key, child_key, later())
        # The child opened connections of its own instead of using the parent's.
        after_child = _total_connections(watchers)
        assert after_child > before
        # The parent's pooled connection is intact: used again, no new one.
        record = store.load(key)
        assert record is not None
        assert record.value == b"child"
        assert _total_connections(watchers) == after_child
        assert store.load(child_key) is not None
    finally:
        for s in servers:
            s.stop()


def test_threads_that_find_the_store_forked_build_one_client(
    server: ServerProcess, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemcacheStore(url_of(server))
    assert store.insert(key, b"v", later()) is True
    parent_client = store._client
    builds: list[int] = []
    real_build = store._build_client

    def slow_build(servers: list[tuple[str, int]]) -> Any:
        builds.append(threading.get_ident())
        time.sleep(0.2)  # a wide window for a second thread to build as well
        return real_build(servers)

    monkeypatch.setattr(store, "_build_client", slow_build)
    store._pid = -1  # as in a forked child: the client belongs to another process
    barrier = threading.Barrier(8)
    values: list[bytes] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(10)
            record = store.load(key)
            values.append(b"" if record is None else record.value)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert values == [b"v"] * 8
    assert len(builds) == 1
    assert store._client is not parent_client
    assert store._pid == os.getpid()


# ----------------------------------------------------------------- expiry/TTL


def test_exptime_follows_memcacheds_30_day_rule() -> None:
    now = 1_700_000_000.25
    assert _exptime(now + 0.3, now) == 2  # rounded up, plus a second of slack
    assert _exptime(now + 60, now) == 61
    assert _exptime(now + 30 * DAY - 1, now) == 30 * DAY  # still relative
    beyond = _exptime(now + 40 * DAY, now)
    assert beyond == math.ceil(now + 40 * DAY) + 1  # an absolute Unix time
    assert _exptime(now, now) == -1  # expired: memcached drops it at once
    assert _exptime(now - 5, now) == -1
    assert 0 not in {_exptime(now + d, now) for d in (0.0, 1e-9, 0.5, 1.0, 30 * DAY + 0.5)}


@pytest.mark.parametrize("days", [10, 40])
def test_memcached_keeps_the_item_as_long_as_the_header_says(
    server: ServerProcess, key: str, days: int
) -> None:
    store = MemcacheStore(url_of(server))
    expires_at = later(days * DAY)
    assert store.insert(key, b"long", expires_at) is True
    record = store.load(key)
    assert record is not None
    assert record.expires_at == pytest.approx(expires_at, abs=1e-6)
    # memcached's own remaining TTL (meta get, flag t), in whole seconds.
    answer = direct(server).raw_command(f"mg {key} t")
    ttl = int(answer.split()[1][1:])
    assert expires_at - time.time() <= ttl <= expires_at - time.time() + 5


def test_touch_rewrites_the_header_and_memcacheds_expiry(server: ServerProcess, key: str) -> None:
    store = MemcacheStore(url_of(server))
    assert store.insert(key, b"v", later(60)) is True
    before = store.load(key)
    assert before is not None
    assert store.touch(key, later(3 * DAY)) is True
    after = store.load(key)
    assert after is not None
    assert (after.value, after.version) == (before.value, before.version)
    assert after.expires_at == pytest.approx(later(3 * DAY), abs=1)
    ttl = int(direct(server).raw_command(f"mg {key} t").split()[1][1:])
    assert 3 * DAY - 5 <= ttl <= 3 * DAY + 5


def test_records_expire_by_the_header_not_by_memcacheds_second(
    server: ServerProcess, key: str
) -> None:
    store = MemcacheStore(url_of(server))
    assert store.insert(key, b"v", later(0.3)) is True
    time.sleep(0.5)
    # memcached may still hold the item (whole seconds); the store does not see it.
    assert store.load(key) is None
    assert store.touch(key, later()) is False
    assert store.update(key, b"w", later()) is False
    assert store.delete(key) is False
    assert store.insert(key, b"new", later()) is True


# ----------------------------------------------------------------------- keys


def test_keys_map_injectively_to_valid_memcached_keys() -> None:
    safe = "session:" + "ab" * 32
    assert _memcached_key(safe, 250) == safe  # readable in memcached's tools
    assert _memcached_key("a%20b/..:x~", 250) == "a%20b/..:x~"
    odd = [
        "a b", "\u00fcber:x", "tab\tx", "x" * 251, "~" + "0" * 64, "~x", "",
        "a\x7fb", safe + "\n",
    ]  # fmt: skip
    mapped = {k: _memcached_key(k, 250) for k in [safe, *odd]}
    assert len(set(mapped.values())) == len(mapped)
    for k in odd:
        m = mapped[k]
        assert m.startswith("~")
        assert len(m) == 65
    for m in mapped.values():
        assert len(m.encode("ascii")) <= 250
        assert all(0x21 <= ord(c) <= 0x7E for c in m)
    # A key that is itself "~" + a hash is hashed again, so it cannot collide.
    assert _memcached_key(mapped["a b"], 250) != mapped["a b"]
    # The client's own key prefix counts against the 250 bytes.
    assert _memcached_key("x" * 240, 240) == "x" * 240
    assert _memcached_key("x" * 241, 240).startswith("~")


# --------------------------------------------------------- limits, listing


def test_a_value_over_memcacheds_item_size_says_what_to_do(tmp_path: Path, key: str) -> None:
    small = start_memcached(tmp_path, "-I", "1m")  # memcached's default
    try:
        store = MemcacheStore(url_of(small))
        with pytest.raises(StoreError, match="-I") as raised:
            store.insert(key, bytes(1024 * 1024), later())
        assert "too large" in str(raised.value)
        assert store.insert(key, bytes(1000), later()) is True
    finally:
        small.stop()


def test_listing_is_not_possible_and_cleanup_is_native() -> None:
    store = MemcacheStore(f"memcached://127.0.0.1:{free_port()}")
    with pytest.raises(NotImplementedError, match="lists keys"):
        list(store.iter_records())
    assert store.cleanup() == 0


# -------------------------------------------------------------- construction


def test_one_server_gets_a_pooled_client_several_a_pooling_hash_client() -> None:
    one = MemcacheStore("memcached://127.0.0.1:11311", timeout=2)
    client = one._client
    assert type(client) is PooledClient
    assert client.no_delay is True
    assert (client.connect_timeout, client.timeout) == (2.0, 2.0)
    two = MemcacheStore(servers=[("127.0.0.1", 11311), "localhost:11312"], timeout=3)
    hashed = two._client
    assert isinstance(hashed, HashClient)
    assert hashed.use_pooling is True
    assert hashed.ignore_exc is False
    assert hashed.default_kwargs["no_delay"] is True
    assert hashed.default_kwargs["timeout"] == 3.0
    assert all(type(c) is PooledClient for c in hashed.clients.values())
    assert repr(two) == "MemcacheStore('memcached://127.0.0.1:11311,localhost:11312')"


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("memcached://h1", ["h1:11211"]),
        ("memcached://h1:1,h2:2/", ["h1:1", "h2:2"]),
        ("memcached://[::1]:11212,h2", ["[::1]:11212", "h2:11211"]),
        ("MEMCACHED://h1:11211", ["h1:11211"]),
    ],
)
def test_url_forms(url: str, servers: list[str]) -> None:
    assert MemcacheStore(url)._servers == servers


@pytest.mark.parametrize(
    "url",
    [
        "redis://h1",
        "memcached://",
        "memcached://h1:0",
        "memcached://h1:http",
        "memcached://h1/db",
        "memcached://h1?timeout=3",
        "memcached://h1,,h2",
        "memcached://[::1",
    ],
)
def test_bad_urls_fail_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="MemcacheStore"):
        MemcacheStore(url)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"url": "memcached://h1", "servers": [("h1", 1)]},
        {"servers": []},
        {"servers": [("h1", "11211")]},
        {"servers": "h1:11211"},
        {"url": "memcached://h1", "timeout": 0},
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="MemcacheStore"):
        MemcacheStore(**kwargs)


def test_store_from_url_builds_a_memcache_store() -> None:
    store = store_from_url("memcached://127.0.0.1:11311,127.0.0.1:11312")
    assert isinstance(store, MemcacheStore)


def test_a_ready_client_is_used_and_a_plain_client_is_serialised(
    server: ServerProcess, key: str
) -> None:
    plain = Client(("127.0.0.1", server.port), no_delay=True)
    store = MemcacheStore(client=plain)
    assert repr(store) == f"MemcacheStore('memcached://127.0.0.1:{server.port}')"
    assert store.insert(key, b"v", later()) is True
    record = store.load(key)
    assert record is not None
    assert store.update(key, b"w", later(), version=record.version) is True
    hashed = HashClient(
        [("127.0.0.1", server.port)],
        use_pooling=True,
        retry_attempts=2**63,
        retry_timeout=float("-inf"),
    )
    assert MemcacheStore(client=hashed).load(key) is not None


def test_a_given_plain_client_is_shared_safely_between_threads(server: ServerProcess) -> None:
    # A plain Client is one socket: unless the store serialises its calls,
    # threads interleave commands and read each other's replies.
    plain = Client(("127.0.0.1", server.port), no_delay=True, connect_timeout=5, timeout=5)
    store = MemcacheStore(client=plain)
    barrier = threading.Barrier(8)
    problems: list[object] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(10)
            for i in range(40):
                k = f"test:{n}:{i}:" + secrets.token_hex(8)
                value = f"{n}-{i}".encode() * 50
                if store.insert(k, value, later()) is not True:
                    problems.append(("insert", k))
                record = store.load(k)
                if record is None or record.value != value:
                    problems.append(("load", k, record))
                    continue
                if store.update(k, value[::-1], later(), version=record.version) is not True:
                    problems.append(("update", k))
                again = store.load(k)
                if again is None or again.value != value[::-1]:
                    problems.append(("reload", k, again))
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert problems == []


@pytest.mark.parametrize(
    "make",
    [
        lambda port: Client(("127.0.0.1", port), ignore_exc=True),
        lambda port: PooledClient(("127.0.0.1", port), ignore_exc=True),
        lambda port: HashClient([("127.0.0.1", port)], use_pooling=True),  # default retries
        lambda port: Client(
            ("127.0.0.1", port), serializer=lambda k, v: (v, 0), deserializer=lambda k, v, f: v
        ),
        lambda port: object(),
    ],
    ids=["ignore_exc", "pooled-ignore_exc", "hash-default-retries", "serde", "not-a-client"],
)
def test_risky_clients_are_refused(make: Callable[[int], Any]) -> None:
    with pytest.raises(ValueError, match="MemcacheStore"):
        MemcacheStore(client=make(free_port()))
