"""SimpleKVStore beyond the shared contract: key mapping, TTL, round trips,
errors, foreign bytes, and what check-then-act means."""

from __future__ import annotations

import logging
import math
import pickle
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Request

from tests.servers import ServerProcess, executable, free_port
from tests.support import client_for
from wsgi_kvsession import Session, StoreError
from wsgi_kvsession.stores import Store
from wsgi_kvsession.stores.simplekv import SimpleKVStore, decode_key, encode_key

from .backend_simplekv import delete_prefixed, import_or_skip, redis_client
from .test_contract import KEY_FORMS

TTL = 60.0


def later(seconds: float = TTL) -> float:
    return time.time() + seconds


def hex_key(prefix: str = "session:") -> str:
    return prefix + secrets.token_hex(32)


@pytest.fixture
def simplekv() -> Any:
    return import_or_skip("simplekv")


@pytest.fixture
def dict_store(simplekv: Any) -> Any:
    return import_or_skip("simplekv.memory").DictStore()


@pytest.fixture
def store(dict_store: Any) -> SimpleKVStore:
    return SimpleKVStore(dict_store)


class CountingKV:
    """A KeyValueStore wrapper that records every call made on the wrapped store.

    This is how the round-trip budget is counted: each entry is one call the
    adapter made on the user's store (one round trip for a network store).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ttl_support = getattr(inner, "ttl_support", False)

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def get(self, key: str) -> bytes:
        self.calls.append(("get", {}))
        return bytes(self.inner.get(key))

    def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        self.calls.append(("put", kwargs))
        return str(self.inner.put(key, data, **kwargs))

    def delete(self, key: str) -> None:
        self.calls.append(("delete", {}))
        self.inner.delete(key)

    def keys(self) -> list[str]:
        self.calls.append(("keys", {}))
        return list(self.inner.keys())


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


def _routes(session: Session, request: Request) -> Any:
    if request.path == "/set":
        for k, v in request.args.items():
            session[k] = v
    elif request.path == "/read":
        return repr(dict(session))
    elif request.path == "/destroy":
        session.destroy()
    return None


# ------------------------------------------------------------------ key mapping


def test_common_key_stays_readable() -> None:
    digest = secrets.token_hex(32)
    assert encode_key("session:" + digest) == "session." + digest
    assert encode_key("sessions_" + digest) == "sessions_" + digest


ODD_KEYS = [
    *(f + "ab" * 32 for f in KEY_FORMS),
    ":leading-colon",
    "::",
    ":",
    ".",
    "..",
    "~",
    "~41",
    "a.b",
    "a:b",
    "\ud800lone-surrogate",
    "\U0001f600",
    "tab\there",
]


@pytest.mark.parametrize("key", ODD_KEYS, ids=[repr(k) for k in ODD_KEYS])
def test_mapping_is_valid_for_both_libraries_and_reversible(key: str) -> None:
    simplekv = import_or_skip("simplekv")
    minimalkv = import_or_skip("minimalkv")
    name = encode_key(key)
    assert simplekv.VALID_KEY_RE.match(name)
    assert minimalkv.VALID_KEY_RE.match(name)
    assert not name.startswith(".")
    assert "/" not in name
    assert decode_key(name) == key


def test_mapping_is_injective() -> None:
    keys = set(ODD_KEYS) | {"a/b:", "a%2Fb:", "a~2Fb:", "x.y:", "x:y:", "x~2Ey:", "x_y:"}
    names = {encode_key(k) for k in keys}
    assert len(names) == len(keys)


@pytest.mark.parametrize(
    "name", ["~4", "~zz", "~41", "~2e", "a:b", "x/y", "\u00fc", "~C3", "~FF", "~~" + "0" * 64]
)
def test_foreign_names_do_not_decode(name: str) -> None:
    # Non-canonical or impossible spellings: names some other program wrote.
    assert decode_key(name) is None


@pytest.mark.parametrize("lib", ["simplekv", "minimalkv"])
def test_long_keys_are_hashed_and_listed_with_their_original_key(lib: str, tmp_path: Path) -> None:
    fs = import_or_skip(f"{lib}.fs")
    kv = fs.FilesystemStore(str(tmp_path / "kv"))
    store = SimpleKVStore(kv)
    long_key = hex_key("\u00fc" * 100 + ":")  # 600 characters once escaped
    short_key = hex_key()
    assert store.insert(long_key, b"long", later()) is True
    assert store.insert(short_key, b"short", later()) is True
    names = sorted(kv.keys())
    assert all(len(n.encode()) <= 250 for n in names)
    assert any(n.startswith("~~") for n in names)
    assert dict((k, r.value) for k, r in store.iter_records()) == {
        long_key: b"long",
        short_key: b"short",
    }
    assert store.update(long_key, b"longer", later()) is True
    record = store.load(long_key)
    assert record is not None
    assert record.value == b"longer"
    assert store.delete(long_key) is True
    assert store.load(long_key) is None


def test_max_key_length_is_configurable(dict_store: Any) -> None:
    store = SimpleKVStore(dict_store, max_key_length=80)
    key = hex_key("x" * 20 + ":")
    assert store.insert(key, b"v", later()) is True
    (name,) = dict_store.keys()
    assert name.startswith("~~")
    assert [k for k, _ in store.iter_records()] == [key]
    with pytest.raises(ValueError, match="max_key_length"):
        SimpleKVStore(dict_store, max_key_length=40)


# ---------------------------------------------------------------- construction


class PasswordInRepr:
    """A store whose repr holds a credential, as some minimalkv stores' do."""

    def __init__(self) -> None:
        self.d: dict[str, bytes] = {}
        self.calls = 0

    def __repr__(self) -> str:
        return "PasswordInRepr(s3://AKIA:very-secret@bucket)"

    def get(self, key: str) -> bytes:
        self.calls += 1
        return self.d[key]

    def put(self, key: str, data: bytes) -> str:
        self.calls += 1
        self.d[key] = data
        return key

    def delete(self, key: str) -> None:
        self.calls += 1
        self.d.pop(key, None)

    def keys(self) -> list[str]:
        self.calls += 1
        return list(self.d)


def test_construction_touches_nothing_and_repr_names_only_classes() -> None:
    kv = PasswordInRepr()
    store = SimpleKVStore(kv)
    assert kv.calls == 0
    assert repr(store) == "SimpleKVStore(tests.PasswordInRepr)"
    assert "secret" not in repr(store)


def test_repr_names_the_decorated_store() -> None:
    decorator = import_or_skip("simplekv.decorator")
    redisstore = import_or_skip("simplekv.memory.redisstore")
    redis = import_or_skip("redis")
    client = redis.Redis(host="127.0.0.1", port=free_port(), password="pw-in-client")
    store = SimpleKVStore(decorator.PrefixDecorator("p_", redisstore.RedisStore(client)))
    assert repr(store) == "SimpleKVStore(simplekv.PrefixDecorator(simplekv.RedisStore))"


@pytest.mark.parametrize("bad", ["redis://127.0.0.1:6379/0", b"x", Path("/tmp")])
def test_a_url_or_path_is_refused_with_a_hint(bad: Any) -> None:
    with pytest.raises(ValueError, match="get_store_from_url"):
        SimpleKVStore(bad)


def test_an_object_that_is_not_a_store_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no get\(\), put\(\), delete\(\), keys\(\)"):
        SimpleKVStore(object())


def test_module_imports_and_works_without_either_library() -> None:
    # sys.modules[name] = None makes "import name" fail, as if not installed.
    code = (
        "import sys\n"
        "sys.modules['simplekv'] = sys.modules['minimalkv'] = None\n"
        "from wsgi_kvsession.stores import SimpleKVStore\n"
        "class KV:\n"
        "    def __init__(self): self.d = {}\n"
        "    def get(self, k): return self.d[k]\n"
        "    def put(self, k, v): self.d[k] = v\n"
        "    def delete(self, k): self.d.pop(k, None)\n"
        "    def keys(self): return list(self.d)\n"
        "s = SimpleKVStore(KV())\n"
        "import time\n"
        "assert s.insert('session:ab', b'v', time.time() + 60)\n"
        "assert s.load('session:ab').value == b'v'\n"
        "assert 'simplekv' not in sys.modules or sys.modules['simplekv'] is None\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


# ------------------------------------------------------------------------- TTL


def test_ttl_support_is_detected_as_the_libraries_do(dict_store: Any) -> None:
    decorator = import_or_skip("simplekv.decorator")
    redis = import_or_skip("redis")
    simple_redis = import_or_skip("simplekv.memory.redisstore")
    minimal_redis = import_or_skip("minimalkv.memory.redisstore")
    client = redis.Redis(host="127.0.0.1", port=free_port())  # never connected
    assert SimpleKVStore(dict_store).ttl_support is False
    assert SimpleKVStore(simple_redis.RedisStore(client)).ttl_support is True
    assert SimpleKVStore(minimal_redis.RedisStore(client)).ttl_support is True
    wrapped = decorator.PrefixDecorator("p_", simple_redis.RedisStore(client))
    assert SimpleKVStore(wrapped).ttl_support is True

    class AnswersAnything(PasswordInRepr):
        def __getattr__(self, name: str) -> Any:
            return object()

    assert SimpleKVStore(AnswersAnything()).ttl_support is False


class TTLDict(PasswordInRepr):
    """A TTL-capable fake: records each ttl_secs it is given."""

    ttl_support = True

    def __init__(self) -> None:
        super().__init__()
        self.ttls: list[Any] = []

    def put(self, key: str, data: bytes, ttl_secs: Any = None) -> str:  # type: ignore[override]
        self.ttls.append(ttl_secs)
        return super().put(key, data)


def test_ttl_is_whole_seconds_rounded_up_and_never_zero_or_none() -> None:
    kv = TTLDict()
    store = SimpleKVStore(kv)
    key = hex_key()
    assert store.insert(key, b"v", later(0.3)) is True
    assert store.update(key, b"w", later(100.2)) is True
    assert store.touch(key, later(5000)) is True
    assert store.touch(key, time.time() - 10) is True  # to the past: reaped soon
    assert kv.ttls[0] == 1
    assert kv.ttls[1] in (100, 101)  # 101 unless 0.2 s passed since later()
    assert kv.ttls[2] in (5000, 5001)
    assert kv.ttls[3] == 1
    assert all(isinstance(t, int) and t >= 1 for t in kv.ttls)
    assert store.cleanup() == 0  # the backend reaps ...
    assert kv.calls == 8  # ... so cleanup listed nothing: 4 gets + 4 puts above


def test_a_put_without_ttl_secs_falls_back_to_cleanup(caplog: pytest.LogCaptureFixture) -> None:
    class OldDecorator(PasswordInRepr):
        """Like simplekv 0.11's PrefixDecorator: claims TTL, put() drops the keyword."""

        ttl_support = True

    store = SimpleKVStore(OldDecorator())
    key = hex_key()
    with caplog.at_level(logging.WARNING, logger="wsgi_kvsession"):
        assert store.insert(key, b"v", later(0.3)) is True
    assert "takes no ttl_secs" in caplog.text
    assert store.ttl_support is False
    time.sleep(0.5)
    assert store.cleanup() == 1


def test_redis_ttl_through_a_prefix_decorator() -> None:
    decorator = import_or_skip("simplekv.decorator")
    redisstore = import_or_skip("simplekv.memory.redisstore")
    client = redis_client()
    prefix = f"wkvs-test-{secrets.token_hex(8)}-"
    try:
        store = SimpleKVStore(decorator.PrefixDecorator(prefix, redisstore.RedisStore(client)))
        key = hex_key()
        assert store.insert(key, b"v", later(100.2)) is True
        (name,) = [k.decode() for k in client.scan_iter(match=prefix + "*")]
        assert name == prefix + encode_key(key)
        assert 99 <= client.ttl(name) <= 101
        assert store.touch(key, later(0.3)) is True
        assert 0 < client.pttl(name) <= 1000
        time.sleep(1.3)
        assert client.exists(name) == 0  # reaped by Redis itself
        assert store.load(key) is None
    finally:
        delete_prefixed(client, prefix)
        client.close()


# ------------------------------------------------------------ round-trip budget


@pytest.fixture(params=["dict", "prefix-redis"])
def counted(request: pytest.FixtureRequest) -> Iterator[CountingKV]:
    """A counting wrapper over a DictStore (no TTL) or a PrefixDecorator over
    simplekv's RedisStore on the shared Redis (TTL)."""
    if request.param == "dict":
        yield CountingKV(import_or_skip("simplekv.memory").DictStore())
        return
    decorator = import_or_skip("simplekv.decorator")
    redisstore = import_or_skip("simplekv.memory.redisstore")
    client = redis_client()
    prefix = f"wkvs-test-{secrets.token_hex(8)}-"
    try:
        yield CountingKV(decorator.PrefixDecorator(prefix, redisstore.RedisStore(client)))
    finally:
        delete_prefixed(client, prefix)
        client.close()


def test_round_trip_budget(counted: CountingKV, clock: Clock) -> None:
    """Calls on the wrapped KeyValueStore per request (rules 6-9).

    A read is one ``get``. A touch and a change are each one ``get`` (the
    session's load) plus the store's check-then-act: another ``get`` (does the
    record still exist, is it the version we read) and one ``put`` (a touch
    rewrites the whole value: a KeyValueStore cannot change only an expiry).
    Creating a session is a ``get`` (is the key free) and a ``put``; a
    destroy is load ``get``, check ``get`` and ``delete``.
    """
    store = SimpleKVStore(counted)
    client = client_for(_routes, store, idle_timeout=3600, touch_interval=60)

    client.get("/nothing")  # rule 6: never touched
    assert counted.calls == []
    client.get("/read")  # rule 7: a new session left empty
    assert counted.calls == []

    client.get("/set?a=1")  # a new session
    assert counted.methods() == ["get", "put"]

    counted.calls.clear()
    assert client.get("/read").text == "{'a': '1'}"  # rule 8: read only
    assert counted.methods() == ["get"]

    counted.calls.clear()
    clock.advance(61)
    client.get("/read")  # rule 8: a touch, once touch_interval has passed
    assert counted.methods() == ["get", "get", "put"]

    counted.calls.clear()
    client.get("/set?b=2")  # rule 9: a change
    assert counted.methods() == ["get", "get", "put"]

    counted.calls.clear()
    client.get("/set?b=2")  # rule 9: an equal value is no change
    assert counted.methods() == ["get"]

    counted.calls.clear()
    client.get("/destroy")
    assert counted.methods() == ["get", "get", "delete"]

    # Every put to a TTL store carried a positive whole-second TTL.
    puts = [kwargs for method, kwargs in counted.calls if method == "put"]
    if counted.ttl_support:
        assert all(isinstance(k["ttl_secs"], int) and k["ttl_secs"] >= 1 for k in puts)
    else:
        assert all(k == {} for k in puts)


# ------------------------------------------------------------------ store down


def test_store_down_raises_store_error_without_password_within_timeout() -> None:
    redisstore = import_or_skip("simplekv.memory.redisstore")
    redis = import_or_skip("redis")
    retry = import_or_skip("redis.retry")
    backoff = import_or_skip("redis.backoff")
    # The wrapped client's settings bound a call: its timeouts and its retries
    # (redis-py 8 retries 10 times with backoff unless told otherwise).
    client = redis.Redis(
        host="127.0.0.1",
        port=free_port(),  # nothing listens there
        password="hunter2-secret",
        socket_connect_timeout=1,
        socket_timeout=1,
        retry=retry.Retry(backoff.NoBackoff(), 1),
    )
    store = SimpleKVStore(redisstore.RedisStore(client))
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.load(hex_key())
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith("SimpleKVStore(simplekv.RedisStore): cannot read a record")
    assert "hunter2" not in message
    with pytest.raises(StoreError, match="SimpleKVStore"):
        store.insert(hex_key(), b"v", later())
    with pytest.raises(StoreError, match="SimpleKVStore"):
        list(store.iter_records())


def test_the_same_store_works_again_when_its_server_comes_back(tmp_path: Path) -> None:
    redisstore = import_or_skip("simplekv.memory.redisstore")
    redis = import_or_skip("redis")
    binary = executable("redis-server", "apt-get install redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = ServerProcess(argv, port, tmp_path / "redis.log")
    retry = import_or_skip("redis.retry")
    backoff = import_or_skip("redis.backoff")
    client = redis.Redis(
        port=port,
        socket_connect_timeout=1,
        socket_timeout=1,
        retry=retry.Retry(backoff.NoBackoff(), 1),
    )
    store = SimpleKVStore(redisstore.RedisStore(client))
    key = hex_key()
    try:
        with server:
            assert store.insert(key, b"v", later()) is True
        with pytest.raises(StoreError):
            store.load(key)
        with server:  # a fresh, empty server on the same port
            assert store.load(key) is None
            assert store.insert(key, b"again", later()) is True
            record = store.load(key)
            assert record is not None
            assert record.value == b"again"
    finally:
        client.close()


class Failing(PasswordInRepr):
    """A store whose every call fails with an error naming a URL with a password."""

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def get(self, key: str) -> bytes:
        raise self.exc

    def put(self, key: str, data: bytes) -> str:
        raise self.exc

    def delete(self, key: str) -> None:
        raise self.exc

    def keys(self) -> list[str]:
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        OSError("cannot reach https://user:hunter2@s3.example/bucket"),
        RuntimeError("boom"),
        ValueError("The key x contains illegal characters."),
    ],
)
@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.load(hex_key()),
        lambda s: s.insert(hex_key(), b"v", later()),
        lambda s: list(s.iter_records()),
        lambda s: s.cleanup(),
    ],
    ids=["load", "insert", "iter_records", "cleanup"],
)
def test_errors_of_the_wrapped_store_become_store_errors(
    exc: Exception, call: Callable[[Store], object]
) -> None:
    store = SimpleKVStore(Failing(exc))
    with pytest.raises(StoreError, match=r"^SimpleKVStore\(") as info:
        call(store)
    assert info.value.__cause__ is exc
    assert "hunter2" not in str(info.value)


def test_errors_on_put_and_delete_become_store_errors(store: SimpleKVStore) -> None:
    key = hex_key()
    assert store.insert(key, b"v", later()) is True
    kv = store.kvstore
    original_put, original_delete = kv.put, kv.delete
    kv.put = Failing(OSError("disk full")).put
    with pytest.raises(StoreError, match="cannot write a record: OSError: disk full"):
        store.update(key, b"w", later())
    kv.put = original_put
    kv.delete = Failing(OSError("read-only")).delete
    with pytest.raises(StoreError, match="cannot delete a record"):
        store.delete(key)
    kv.delete = original_delete
    assert store.delete(key) is True


# ---------------------------------------------------------------- foreign bytes


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x80\x04\x95garbage pickle",
        b"not ours at all",
        b"WKV1",  # our magic, then a value cut off for good
        b"WKV1" + bytes(26) + b"\x00" * 4 + b"extra bytes past the stated length",
    ],
    ids=["pickle", "text", "magic-only", "too-long"],
)
def test_foreign_bytes_under_a_key_mean_no_record(
    store: SimpleKVStore, dict_store: Any, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    key = hex_key()
    name = encode_key(key)
    dict_store.put(name, garbage)
    with caplog.at_level(logging.DEBUG, logger="wsgi_kvsession"):
        assert store.load(key) is None
    assert "not a session record" in caplog.text or "cut off" in caplog.text
    assert key not in caplog.text  # the hashed key's name may appear, never more
    assert store.update(key, b"x", later()) is False
    assert store.touch(key, later()) is False
    assert store.delete(key) is False
    assert dict_store.get(name) == garbage  # not ours: left alone...
    assert list(store.iter_records()) == []
    assert store.cleanup() == 0
    assert dict_store.get(name) == garbage
    assert store.insert(key, b"fresh", later()) is True  # ...unless the key is taken anew
    record = store.load(key)
    assert record is not None
    assert record.value == b"fresh"


def test_a_value_read_mid_write_is_read_again(store: SimpleKVStore, dict_store: Any) -> None:
    key = hex_key()
    assert store.insert(key, b"complete value", later()) is True
    name = encode_key(key)
    full = dict_store.get(name)
    reads = iter([b"", full[:10], full])  # what an in-place file writer shows
    dict_store.get = lambda k: next(reads) if k == name else full
    record = store.load(key)
    assert record is not None
    assert record.value == b"complete value"


def test_flask_kvsession_records_are_ignored_not_unpickled(
    store: SimpleKVStore, dict_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flask-KVSession's layout: "<hex id>_<hex created>" -> pickle of a dict.
    old_key = "%x_%x" % (secrets.randbits(64), int(time.time()))  # noqa: UP031 - its format
    dict_store.put(old_key, pickle.dumps({"user": "alice"}))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    new_key = hex_key()
    assert store.insert(new_key, b"new", later()) is True
    assert [k for k, _ in store.iter_records()] == [new_key]
    assert store.cleanup() == 0
    assert old_key in dict_store


# ------------------------------------------------------------ check-then-act


def test_threads_of_one_process_are_serialised(store: SimpleKVStore) -> None:
    """Within one adapter the check and the act are atomic (per-key locks), so
    a version-checked increment loses nothing under threads."""
    key = hex_key()
    assert store.insert(key, b"0", later()) is True
    threads, increments = 4, 25

    def work() -> None:
        for _ in range(increments):
            for _attempt in range(1000):
                record = store.load(key)
                assert record is not None
                value = str(int(record.value) + 1).encode()
                if store.update(key, value, record.expires_at, version=record.version):
                    break

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    record = store.load(key)
    assert record is not None
    assert int(record.value) == threads * increments


def test_two_processes_can_overwrite_each_other(dict_store: Any) -> None:
    """The documented limit: two adapters (two worker processes) on one store
    both pass their version check when one writes between the other's get
    and put. Both updates report success; the second one wins."""
    one, two = SimpleKVStore(dict_store), SimpleKVStore(dict_store)
    key = hex_key()
    assert one.insert(key, b"base", later()) is True
    record = one.load(key)
    assert record is not None

    class Interleaving:
        """The store as ``one`` sees it: ``two`` writes right after one's check."""

        ttl_support = False

        def __init__(self) -> None:
            self.armed = True

        def get(self, k: str) -> bytes:
            value = bytes(dict_store.get(k))
            if self.armed:
                self.armed = False
                assert two.update(key, b"from two", later(), version=record.version)
            return value

        def put(self, k: str, data: bytes) -> str:
            return str(dict_store.put(k, data))

        def delete(self, k: str) -> None:
            dict_store.delete(k)

        def keys(self) -> list[str]:
            return list(dict_store.keys())

    one.kvstore = Interleaving()
    assert one.update(key, b"from one", later(), version=record.version) is True
    final = two.load(key)
    assert final is not None
    assert final.value == b"from one"  # two's change was overwritten
    assert math.isfinite(final.expires_at)
