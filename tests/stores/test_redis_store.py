"""RedisStore beyond the contract: URLs, round trips, failures and recovery.

The contract suite (test_contract.py) already runs on the shared Redis, on a
3-node Cluster and through a Sentinel (backend_redis.py). These tests need a
Redis of their own, started on a free port, so that they can count every
command it receives (``INFO commandstats``) and kill and restart it.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wsgi_kvsession import Session, StoreError
from wsgi_kvsession.stores import Store, store_from_url

from ..servers import ServerProcess, free_port
from ..support import Clock, client_for
from .backend_redis import (
    Cluster,
    RedisServers,
    redis_cli,
    redis_server_argv,
    redis_store,
    start_sentinel,
    wait_for,
)

redis = pytest.importorskip("redis", reason="redis-py is not installed")

from wsgi_kvsession.stores.redis import RedisStore  # noqa: E402 - after the importorskip


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A Redis only this module talks to (so its command counts are ours alone)."""
    directory = tmp_path_factory.mktemp("own-redis")
    port = free_port()
    server = ServerProcess(redis_server_argv(port, directory), port, directory / "redis.log")
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        from .registry import skip_or_fail

        skip_or_fail(f"could not start redis-server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def own_store(own_redis: ServerProcess) -> Iterator[Store]:
    if own_redis.process is None:  # a test stopped it and failed before restarting
        own_redis.start()
    store = redis_store(f"redis://127.0.0.1:{own_redis.port}/0", timeout=2.0)
    yield store
    store.close()


def command_counts(port: int) -> dict[str, int]:
    """``{command: calls}`` from ``INFO commandstats`` (INFO's own calls left out)."""
    counts: dict[str, int] = {}
    for line in redis_cli("-p", str(port), "info", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_") :].partition(":")
            calls = dict(f.split("=", 1) for f in fields.split(","))["calls"]
            counts[name] = int(calls)
    counts.pop("info", None)
    return counts


class CommandCounter:
    """The commands a Redis received between two calls of :meth:`take`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.before = command_counts(port)

    def take(self) -> dict[str, int]:
        after = command_counts(self.port)
        delta = {k: v - self.before.get(k, 0) for k, v in after.items()}
        self.before = after
        return {k: v for k, v in delta.items() if v}


def _routes(session: Session, request: Any) -> Any:
    if request.path == "/set":
        session.update(request.args.items())
    elif request.path == "/read":
        return dict(session)
    elif request.path == "/new-empty":
        session.get("nothing")
    return None


# ---------------------------------------------------------------- round trips


def test_round_trips_follow_rules_6_to_9(
    own_redis: ServerProcess, own_store: Store, clock: Clock
) -> None:
    """Count the commands Redis really receives for each kind of request.

    ``INFO commandstats`` counts every command, including those a Lua script
    runs: an ``evalsha`` and the ``getrange``/``set`` inside it are ONE round
    trip. Each request below is checked against the exact command set.
    """
    client = client_for(_routes, own_store, idle_timeout=3600, touch_interval=60)
    client.get("/set?warm=up")  # loads the scripts into Redis: not part of any count
    client.get("/set?warm=again")
    client.get("/read")
    clock.advance(61)
    client.get("/read")
    client = client_for(_routes, own_store, idle_timeout=3600, touch_interval=60)  # no cookie
    counter = CommandCounter(own_redis.port)

    client.get("/nothing")  # rule 6: the session is never looked at
    assert counter.take() == {}

    client.get("/new-empty")  # rule 7: a new session left empty is never stored
    assert counter.take() == {}

    client.get("/set?a=1")  # a new session: one insert
    assert counter.take() == {"set": 1}

    client.get("/read")  # rule 8: read-only, one read
    assert counter.take() == {"get": 1}

    clock.advance(61)  # past touch_interval: one read, one touch (a script)
    client.get("/read")
    assert counter.take() == {"get": 1, "evalsha": 1, "getrange": 1, "setrange": 1, "pexpire": 1}

    client.get("/set?b=2")  # rule 9: one read, one versioned write (a script)
    assert counter.take() == {"get": 1, "evalsha": 1, "getrange": 1, "set": 1}
    assert client.get("/read").text == "{'a': '1', 'b': '2'}"


def test_iter_records_uses_scan_never_keys(own_redis: ServerProcess, own_store: Store) -> None:
    assert isinstance(own_store, RedisStore)
    prefix = f"scan:{secrets.token_hex(4)}:"
    for i in range(1200):  # more than one SCAN batch and one GET pipeline
        own_store.insert(f"{prefix}{i}", b"v", time.time() + 60)
    counter = CommandCounter(own_redis.port)
    listed = dict(own_store.iter_records(prefix))
    assert len(listed) == 1200
    commands = counter.take()
    assert "keys" not in commands
    assert commands["scan"] >= 1


def test_iter_records_skips_what_is_not_a_session(
    own_redis: ServerProcess, own_store: Store
) -> None:
    assert isinstance(own_store, RedisStore)
    prefix = f"foreign:{secrets.token_hex(4)}:"
    raw = redis.Redis(port=own_redis.port)
    raw.set(prefix + "plain", b"another application's string")
    raw.hset(prefix + "hash", "field", "value")
    raw.set(prefix + "short", b"\x01abc")
    own_store.insert(prefix + "ours", b"session", time.time() + 60)
    assert [k for k, _ in own_store.iter_records(prefix)] == [prefix + "ours"]
    # Foreign data under a session key reads as "no record", not an error, and
    # is never changed: not a plain string, not a short one that starts like
    # a record, not another type.
    for name in ("plain", "short", "hash"):
        assert own_store.load(prefix + name) is None
        assert own_store.touch(prefix + name, time.time() + 60) is False
        assert own_store.update(prefix + name, b"x", time.time() + 60) is False
        assert own_store.delete(prefix + name) is False
        assert own_store.insert(prefix + name, b"x", time.time() + 60) is False
    assert raw.get(prefix + "short") == b"\x01abc"
    assert raw.get(prefix + "plain") == b"another application's string"
    assert raw.hgetall(prefix + "hash") == {b"field": b"value"}
    raw.close()


def test_glob_characters_in_a_prefix_are_literal(own_store: Store) -> None:
    assert isinstance(own_store, RedisStore)
    tag = secrets.token_hex(4)
    own_store.insert(f"a*[b]?\\{tag}:1", b"one", time.time() + 60)
    own_store.insert(f"aX[b]?\\{tag}:2", b"two", time.time() + 60)
    listed = dict(own_store.iter_records(f"a*[b]?\\{tag}:"))
    assert list(listed) == [f"a*[b]?\\{tag}:1"]


def test_native_ttl_is_set_from_the_expiry(own_redis: ServerProcess, own_store: Store) -> None:
    raw = redis.Redis(port=own_redis.port)
    key = "ttl:" + secrets.token_hex(8)
    own_store.insert(key, b"v", time.time() + 100)
    assert 98_000 <= raw.pttl(key) <= 100_000
    own_store.touch(key, time.time() + 5000)
    assert 4_998_000 <= raw.pttl(key) <= 5_000_000
    record = own_store.load(key)
    assert record is not None
    assert record.expires_at == pytest.approx(time.time() + 5000, abs=2)
    raw.close()


# ------------------------------------------------------------------- failures


def test_a_closed_port_is_a_store_error_naming_the_store_without_the_password() -> None:
    port = free_port()  # nothing listens there
    store = RedisStore(f"redis://:s3cret-pw@127.0.0.1:{port}/0", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        store.load("any")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"RedisStore('redis://:***@127.0.0.1:{port}/0')" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(store)


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_hung_server_fails_within_the_timeout() -> None:
    with silent_server() as port:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=2.0)
        started = time.monotonic()
        with pytest.raises(StoreError, match="Timeout"):
            store.load("any")
        # One attempt: a timeout is not retried (only a broken connection is),
        # so this stays under two timeouts even on a busy machine.
        assert time.monotonic() - started < 3.9


def test_a_hung_sentinel_fails_within_two_timeouts() -> None:
    """redis-py would retry a Sentinel ten times with backoff (~50 timeouts)."""
    with silent_server() as port:
        store = RedisStore(f"redis+sentinel://127.0.0.1:{port}/mymaster/0", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(StoreError):
            store.load("any")
        # The primary's lookup is tried twice (the retry for a broken
        # connection), each bounded by the timeout.
        assert time.monotonic() - started < 3.5


def test_a_record_in_the_gap_after_its_expiry_cannot_be_written_or_touched(
    own_store: Store,
) -> None:
    """Redis's TTL may outlive the header's expiry by a millisecond or more;
    a write, a touch or a delete in that gap must find no record."""
    assert isinstance(own_store, RedisStore)
    for _ in range(30):
        key = "gap:" + secrets.token_hex(8)
        expires_at = time.time() + 0.02
        assert own_store.insert(key, b"v", expires_at)
        version = own_store.load(key).version  # type: ignore[union-attr]
        while time.time() < expires_at:
            pass
        assert own_store.update(key, b"back", time.time() + 60, version=version) is False
        assert own_store.update(key, b"back", time.time() + 60) is False
        assert own_store.touch(key, time.time() + 60) is False
        assert own_store.delete(key, version=version) is False
        assert own_store.load(key) is None


def test_the_pool_recovers_when_redis_comes_back(own_redis: ServerProcess) -> None:
    store = redis_store(f"redis://127.0.0.1:{own_redis.port}/0", timeout=1.0)
    key = "recover:" + secrets.token_hex(8)
    assert store.insert(key, b"before", time.time() + 60)
    own_redis.kill()
    with pytest.raises(StoreError, match=r"RedisStore\('redis://127\.0\.0\.1"):
        store.load(key)
    own_redis.start()  # same port, empty (no persistence): the record is gone
    # The pooled connection is dead; the store retries once on a new one.
    assert store.load(key) is None
    assert store.insert(key, b"after", time.time() + 60)
    record = store.load(key)
    assert record is not None
    assert record.value == b"after"
    store.close()


def test_a_restart_between_requests_costs_no_error(own_redis: ServerProcess) -> None:
    store = redis_store(f"redis://127.0.0.1:{own_redis.port}/0", timeout=1.0)
    key = "restart:" + secrets.token_hex(8)
    store.insert(key, b"v", time.time() + 60)
    own_redis.stop()
    own_redis.start()
    # No StoreError: the stale pooled connection is replaced transparently.
    assert store.load(key) is None
    store.close()


# ----------------------------------------------------------- cluster, sentinel


def test_cluster_spreads_keys_over_all_nodes_and_lists_them(redis_cluster: Cluster) -> None:
    store = redis_store(redis_cluster.url)
    assert isinstance(store, RedisStore)
    prefix = f"spread:{secrets.token_hex(4)}:"
    keys = [f"{prefix}{secrets.token_hex(32)}" for _ in range(60)]
    for key in keys:
        assert store.insert(key, key.encode(), time.time() + 60)
    per_node = [
        int(redis_cli("-p", str(port), "dbsize").strip()) for port in redis_cluster.ports
    ]
    assert all(n > 0 for n in per_node), per_node
    listed = dict(store.iter_records(prefix))
    assert sorted(listed) == sorted(keys)
    assert all(record.value == key.encode() for key, record in listed.items())
    store.close()


def test_sentinel_follows_a_failover(tmp_path: Path) -> None:
    """After the Sentinel promotes a replica, the same store writes to the new primary.

    A primary, a replica and a Sentinel of this test's own (the failover would
    disturb the session-wide Sentinel the contract suite uses).
    """
    servers = RedisServers()
    try:
        setup = start_sentinel(tmp_path, servers)
        sentinel_port = str(setup.sentinel.port)
        port = free_port()
        servers.start(
            ServerProcess(
                redis_server_argv(
                    port, tmp_path, "--replicaof", "127.0.0.1", str(setup.primary.port)
                ),
                port,
                tmp_path / "replica.log",
            )
        )
        wait_for(
            "the replica to sync",
            lambda: "master_link_status:up" in redis_cli("-p", str(port), "info", "replication"),
        )
        wait_for(
            "the Sentinel to see the replica",
            lambda: str(port)
            in redis_cli("-p", sentinel_port, "sentinel", "replicas", "kvsession-primary"),
        )
        store = redis_store(setup.url, timeout=2.0)
        key = "failover:" + secrets.token_hex(8)
        assert store.insert(key, b"before", time.time() + 60)
        redis_cli("-p", str(setup.primary.port), "wait", "1", "5000")  # replicated

        def failed_over() -> bool:
            # SENTINEL FAILOVER answers NOGOODSLAVE until the Sentinel has fresh
            # INFO from the replica: ask again until the replica is the primary.
            where = redis_cli(
                "-p", sentinel_port, "sentinel", "get-master-addr-by-name", "kvsession-primary"
            )
            if str(port) in where:
                return True
            redis_cli("-p", sentinel_port, "sentinel", "failover", "kvsession-primary")
            return False

        wait_for("the failover", failed_over, timeout=60)
        # Until the old primary is demoted it still takes writes, which its
        # demotion then throws away (asynchronous replication): wait for that.
        wait_for(
            "the old primary to become a replica",
            lambda: "role:slave"
            in redis_cli("-p", str(setup.primary.port), "info", "replication"),
        )

        def written_to_the_new_primary() -> bool:
            try:
                record = store.load(key)
                assert record is not None
                return store.update(key, b"after", time.time() + 60, version=record.version)
            except StoreError:  # the old primary refusing writes while it is demoted
                return False

        wait_for("the store to write to the new primary", written_to_the_new_primary)
        new_primary = redis.Redis(port=port)
        assert (new_primary.get(key) or b"").endswith(b"after")
        new_primary.close()
        store.close()
    finally:
        servers.stop()


# ------------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://localhost:6379/0", "Redis"),
        ("rediss://:pw@localhost:6380/1", "Redis"),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "RedisCluster"),
        ("redis+cluster://[::1]:7000", "RedisCluster"),
        ("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2", "Redis"),
    ],
)
def test_urls_build_a_client_without_connecting(url: str, kind: str) -> None:
    store = store_from_url(url)
    assert isinstance(store, RedisStore)
    assert store._connected is None or type(store._connected.redis).__name__ == kind
    if kind == "RedisCluster":
        # A RedisCluster connects as it is built, so it is built on first use.
        assert store._connected is None
    else:
        assert type(store._client.redis).__name__ == kind
    assert "pw" not in repr(store)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
        ("redis+cluster://", "names no host"),
        ("redis+cluster://h:notaport", "bad host:port"),
        ("redis+sentinel://127.0.0.1:26379", "/service_name"),
        ("redis+sentinel://127.0.0.1:26379/a/b/c", "/service_name"),
        ("redis+sentinel://127.0.0.1:26379/svc?x=1", "no query options"),
        ("redis://localhost/0?decode_responses=True", "decode_responses"),
    ],
)
def test_bad_urls_fail_at_construction(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisStore(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://:hunter2@h:notaport",
        "redis://:hunter2/with+slash@h1:6379/0",
        "redis+cluster://:hunter2/with+slash@h1:7000/4",
        "redis+sentinel://user:hunter2?x#y@h1:26379",
    ],
)
def test_a_bad_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        RedisStore(url)
    assert "hunter2" not in str(caught.value)
    assert "RedisStore" in str(caught.value)


def test_a_password_with_a_slash_is_the_password() -> None:
    store = RedisStore("redis+sentinel://user:pw/with?odd#chars@h1:26379/mymaster/2")
    assert repr(store) == "RedisStore('redis+sentinel://user:***@h1:26379/mymaster/2')"


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RedisStore()
    with pytest.raises(ValueError, match="exactly one"):
        RedisStore("redis://localhost", client=redis.Redis())
    with pytest.raises(ValueError, match="timeout"):
        RedisStore("redis://localhost", timeout=0)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStore(client=redis.Redis(decode_responses=True))


def test_a_client_passed_in_is_used_and_left_open(own_redis: ServerProcess) -> None:
    client = redis.Redis(port=own_redis.port)
    store = RedisStore(client=client)
    key = "client:" + secrets.token_hex(8)
    assert store.insert(key, b"v", time.time() + 60)
    store.close()
    assert client.ping()
    assert repr(store) == "RedisStore(client=Redis)"
    client.close()
