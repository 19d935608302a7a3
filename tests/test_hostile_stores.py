"""Hostile input against every server store and the simplekv adapter.

``test_hostile_input.py`` holds the embedded stores (memory, files, SQLite) to
the checks of :mod:`tests.hostile`; this module holds the others to the same
checks: Redis, memcached (one node and a HashClient over two), PostgreSQL,
MariaDB and SQLite through SQLAlchemyStore, SimpleKVStore over simplekv's
and minimalkv's dict and file stores and simplekv's Redis store, and
EncryptedStore over memory and Redis (where the registry has it).

For each store:

* garbage ``Cookie`` headers (random, oversized, duplicated, quoted, NUL,
  traversal-looking, well-formed but unknown, signed with a wrong key) never
  give a 5xx, never reach the store except as ``key_prefix`` + 64 hex digits
  (a recording wrapper sees every call), and never get adopted;
* hostile records planted with the store's own ``insert`` (so inside a
  well-formed store header): random bytes, truncated records, foreign JSON,
  our envelope around a list, a number or deep nesting, msgpack garbage, a
  pickle that would create a marker directory. They read as no session, a
  write gets a new ID, the bad record is never overwritten in place, the
  marker never appears;
* where the store wraps each value in a header of its own (Redis, memcached,
  SimpleKVStore), hostile bytes written straight into the server under the
  store key: garbage instead of the header, a header with a NaN or infinite
  expiry, a valid record cut short or with bytes changed; for EncryptedStore,
  the same in its wrapped store, plus a valid ciphertext moved under another key;
* where the store keeps files (simplekv's and minimalkv's FilesystemStore),
  no file appears outside its directory, and every name in it is the mapped
  ``key_prefix`` + 64 hex digits.

Hypothesis and function-scoped fixtures do not mix, so each store is built
once per module (a module-scoped fixture, parametrised indirectly), with a
random key prefix (Redis) or a fresh table (SQL) that is removed at the end;
every example plants its records under fresh random IDs, so examples sharing
a store cannot see each other's records. Servers come from the environment as
in ``tests/stores/backend_*.py``: a missing one skips, and fails under CI=true.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import Store
from wsgi_kvsession.stores.simplekv import encode_key

from .hostile import (
    FOREIGN_DATA,
    HANDCRAFTED,
    HYPOTHESIS,
    MAGIC,
    MSGPACK_FOREIGN,
    MSGPACK_GARBAGE,
    UNENCODABLE,
    VALID,
    check_garbage_cookie,
    check_malformed_duplicates,
    check_read_or_refused,
    check_signed_garbage,
    check_tampered_signatures,
    check_unknown_id,
    check_unreadable,
    cookie_headers,
    damaged_records,
    garbage_records,
    json_mappings,
    malformed_values,
    msgpack_serializer,
    overwrite,
    pickle_bomb,
    record,
    unknown_ids,
)
from .stores.backend_memcached import memcache_store, url_of
from .stores.backend_redis import REDIS_URL, redis_store
from .stores.backend_simplekv import delete_prefixed, import_or_skip, redis_client
from .stores.backend_sql import fresh_store, server_url
from .stores.registry import STORE_SPECS

#: EncryptedStore, where the registry has it: over memory, and over Redis.
ENCRYPTED = [name for name in ("encrypted-memory", "encrypted-redis") if name in STORE_SPECS]
#: Every backend (Redis Cluster and Sentinel are left to the contract suite:
#: they run the same RedisStore code and would start four more servers).
BACKENDS = [
    "redis",
    "memcached",
    "memcached-hash",
    "postgresql",
    "mariadb",
    "sqlalchemy-sqlite",
    "simplekv-redis",
    "simplekv-dict",
    "minimalkv-dict",
    "simplekv-fs",
    "minimalkv-fs",
    *ENCRYPTED,
]
#: The backends whose store keeps an expiry in a header of its own in front of
#: each value, and whose raw bytes these tests can reach.
FRAMED_BACKENDS = [
    "redis",
    "memcached",
    "simplekv-redis",
    "simplekv-dict",
    "minimalkv-dict",
    "simplekv-fs",
    "minimalkv-fs",
]
#: The backends whose raw bytes these tests can reach: the framed ones, and
#: EncryptedStore (its wrapped store holds the ciphertext).
RAW_BACKENDS = FRAMED_BACKENDS + ENCRYPTED

#: Bounded so that the module runs in seconds per store against a real server.
FEW = settings(HYPOTHESIS, max_examples=20)
FEWER = settings(HYPOTHESIS, max_examples=10)

# --------------------------------------------------------------------------- targets


@dataclass
class Raw:
    """The server's bytes under a store key, below the store's own header."""

    put: Callable[[str, bytes], None]
    get: Callable[[str], bytes | None]
    #: The store's header with the given expiry around a value (the layout
    #: is checked against the store when the target is built); None for a
    #: store whose expiry is not in the value (EncryptedStore).
    frame: Callable[[bytes, float], bytes] | None
    #: Store-specific headers that lie, by label: each may be read or refused.
    lying_headers: dict[str, bytes] = field(default_factory=dict)
    #: A valid record as the store wrote it (for cutting and editing).
    sample: bytes = b""


@dataclass
class Target:
    """A store under test, with how to reach what lies beneath it."""

    name: str
    store: Store
    key_prefix: str
    raw: Raw | None = None
    #: The directory the backend keeps its files in, and the root it sits in.
    files: Path | None = None

    def snapshot(self) -> set[Path]:
        if self.files is None:
            return set()
        top = self.files.parent
        return {Path(d) / n for d, dirs, names in os.walk(top) for n in dirs + names}

    def assert_disk_clean(self, before: set[Path]) -> None:
        """Nothing appeared beside the store's directory, and every name in it
        is a mapped store key (``key_prefix`` + 64 hex digits)."""
        if self.files is None:
            return
        stray = [p for p in self.snapshot() - before if self.files not in p.parents]
        assert stray == [], f"files created outside the store directory: {stray}"
        name = re.compile(re.escape(encode_key(self.key_prefix)) + "[0-9a-f]{64}")
        for entry in self.files.iterdir():
            assert name.fullmatch(entry.name), f"unexpected entry in the store: {entry.name!r}"


def _prefix() -> str:
    return f"kvs-hostile-{secrets.token_hex(6)}:"


def _redis(request: pytest.FixtureRequest, root: Path) -> Target:
    from wsgi_kvsession.stores.redis import _HEADER, _pack

    client = redis_client()  # skips (fails under CI) when the server is not there
    prefix = _prefix()

    def cleanup() -> None:
        try:
            delete_prefixed(client, prefix)  # SCAN + DEL of our keys only
        finally:
            client.close()

    request.addfinalizer(cleanup)
    store = redis_store(REDIS_URL, user_index_prefix=prefix + "user:")
    token = b"\x01" * 8
    far = time.time() + 3600

    def head(form: bytes, tail: bytes) -> bytes:
        return _HEADER.pack(form, token, far) + tail

    raw = Raw(
        put=lambda key, value: client.set(key, value, px=3_600_000),
        get=client.get,
        frame=lambda value, expires_at: _pack(token, expires_at, None, value),
        lying_headers={
            "format 1 (no user field)": head(b"\x01", VALID),
            "format 3": head(b"\x03", b"\x00" + VALID),
            "format 0": head(b"\x00", b"\x00" + VALID),
            "unknown user kind": head(b"\x02", b"\x07" + VALID),
            "user length 2**32-1": head(b"\x02", b"\x01" + struct.pack(">I", 2**32 - 1) + VALID),
            "user length past the end": head(b"\x02", b"\x01\x00\x00\x00\x10abc"),
            "user not utf-8": head(b"\x02", b"\x01\x00\x00\x00\x02\xff\xfe" + VALID),
            "user with NUL and traversal": head(
                b"\x02", b"\x01\x00\x00\x00\x0a../\x00../..." + VALID
            ),
            "header only": head(b"\x02", b""),
        },
    )
    return Target("redis", store, prefix, raw)


def _memcached(request: pytest.FixtureRequest, root: Path) -> Target:
    from pymemcache.client.base import Client

    from wsgi_kvsession.stores.memcache import _HEADER, _pack

    server = request.getfixturevalue("memcached_server")
    store = memcache_store(url_of(server))
    client = Client(("127.0.0.1", server.port), connect_timeout=5, timeout=5)
    request.addfinalizer(client.close)
    far = time.time() + 3600
    raw = Raw(
        put=lambda key, value: client.set(key, value, expire=3600, noreply=False),
        get=client.get,
        frame=lambda value, expires_at: _pack(expires_at, 7, value),
        lying_headers={
            "token 0 (a tombstone) with a value": _HEADER.pack(b"KVM1", far, 0) + VALID,
            "magic of another version": _HEADER.pack(b"KVM2", far, 7) + VALID,
            "header only": _HEADER.pack(b"KVM1", far, 7),
        },
    )
    return Target("memcached", store, _prefix(), raw)


def _memcached_hash(request: pytest.FixtureRequest, root: Path) -> Target:
    pair = request.getfixturevalue("memcached_pair")
    return Target("memcached-hash", memcache_store(url_of(*pair)), _prefix())


def _sql(name: str) -> Callable[[pytest.FixtureRequest, Path], Target]:
    def build(request: pytest.FixtureRequest, root: Path) -> Target:
        if name == "sqlalchemy-sqlite":
            import_or_skip("sqlalchemy")
            url = f"sqlite+pysqlite:///{root / 'sessions.db'}"
        else:
            url = server_url(request, name)
        # A fresh table, dropped when the module's tests are done.
        return Target(name, fresh_store(request, url), _prefix())

    return build


def _simplekv(name: str) -> Callable[[pytest.FixtureRequest, Path], Target]:
    def build(request: pytest.FixtureRequest, root: Path) -> Target:
        from wsgi_kvsession.stores.simplekv import _HEADER, _MAGIC, SimpleKVStore

        files = None
        if name.endswith("-fs"):
            fs = import_or_skip(name.split("-")[0] + ".fs")
            files = root / "kv"
            store: Store = SimpleKVStore(fs.FilesystemStore(str(files)))
        else:
            # The registry's factory: a DictStore, or a PrefixDecorator over
            # simplekv's RedisStore whose keys are deleted at the end.
            store = STORE_SPECS[name].factory(request)
        assert isinstance(store, SimpleKVStore)
        kvstore = store.kvstore

        def put(key: str, value: bytes) -> None:
            kvstore.put(encode_key(key), value)

        def get(key: str) -> bytes | None:
            try:
                return bytes(kvstore.get(encode_key(key)))
            except KeyError:
                return None

        def frame(value: bytes, expires_at: float, *, length: int | None = None) -> bytes:
            size = len(value) if length is None else length
            return _HEADER.pack(_MAGIC, expires_at, 7, 0, size) + value

        far = time.time() + 3600
        raw = Raw(
            put=put,
            get=get,
            frame=frame,
            lying_headers={
                "value length one too many": frame(VALID, far, length=len(VALID) + 1),
                "value length one too few": frame(VALID, far, length=len(VALID) - 1),
                "value length 2**64-1": frame(VALID, far, length=2**64 - 1),
                "stored key length past the end": _HEADER.pack(_MAGIC, far, 7, 999, len(VALID))
                + VALID,
                "a few bytes of the magic": _MAGIC[:3],
            },
        )
        return Target(name, store, _prefix(), raw, files)

    return build


def _encrypted(name: str) -> Callable[[pytest.FixtureRequest, Path], Target]:
    def build(request: pytest.FixtureRequest, root: Path) -> Target:
        from wsgi_kvsession.stores import MemoryStore

        from .stores.backend_encrypted import encrypted, new_key

        prefix = _prefix()
        inner: Store
        if name == "encrypted-redis":
            client = redis_client()  # skips (fails under CI) when the server is not there

            def cleanup() -> None:
                try:
                    delete_prefixed(client, prefix)
                finally:
                    client.close()

            request.addfinalizer(cleanup)
            inner = redis_store(REDIS_URL, user_index_prefix=prefix + "user:")
        else:
            inner = MemoryStore()
        store = encrypted(inner, new_key())

        def put(key: str, value: bytes) -> None:
            inner.delete(key)
            assert inner.insert(key, value, time.time() + 3600)

        def get(key: str) -> bytes | None:
            found = inner.load(key)
            return None if found is None else found.value

        return Target(name, store, prefix, Raw(put=put, get=get, frame=None))

    return build


BUILDERS: dict[str, Callable[[pytest.FixtureRequest, Path], Target]] = {
    "redis": _redis,
    "memcached": _memcached,
    "memcached-hash": _memcached_hash,
    "postgresql": _sql("postgresql"),
    "mariadb": _sql("mariadb"),
    "sqlalchemy-sqlite": _sql("sqlalchemy-sqlite"),
    **{name: _simplekv(name) for name in BACKENDS if "kv-" in name},
    **{name: _encrypted(name) for name in ENCRYPTED},
}


def _check_layout(target: Target) -> None:
    """The raw access and ``frame`` agree with the store: what ``frame`` writes
    straight into the server, the store reads back; what the store writes is
    the sample that later examples cut and edit. (For EncryptedStore, the
    sample also gives the headers that lie: they need a real ciphertext.)"""
    raw = target.raw
    if raw is None:
        return
    key = store_key(target.key_prefix, "layout-check-" + secrets.token_hex(8))
    expires_at = time.time() + 3600
    if raw.frame is not None:
        raw.put(key, raw.frame(VALID, expires_at))
        loaded = target.store.load(key)
        assert loaded is not None, f"{target.name}: frame() does not match the store's layout"
        assert loaded.value == VALID
        target.store.delete(key)
    assert target.store.insert(key, VALID, expires_at)
    sample = raw.get(key)
    assert sample is not None, f"{target.name}: raw access does not find the store's keys"
    raw.sample = sample
    if raw.frame is not None:
        assert sample.endswith(VALID)
    else:
        assert VALID[4:] not in sample, f"{target.name}: the value is stored in clear"
        raw.lying_headers = {
            "another format byte": b"\xe2" + sample[1:],
            "a key id no key has": sample[:1] + b"\x00\x00\x00\x00" + sample[5:],
            "the header alone": sample[:5],
            "no tag": sample[:-16],
            "the tag alone": sample[-16:],
            "written in clear": VALID,
        }
    target.store.delete(key)


@pytest.fixture(scope="module")
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """One store of the backend named by the (indirect) parameter, for the module."""
    name: str = request.param
    built = BUILDERS[name](request, tmp_path_factory.mktemp(name))
    try:
        _check_layout(built)
        yield built
    finally:
        built.store.close()


#: simplekv's RedisStore calls redis-py's deprecated setex.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")

every_store = pytest.mark.parametrize("target", BACKENDS, indirect=True)
raw_stores = pytest.mark.parametrize("target", RAW_BACKENDS, indirect=True)
framed_stores = pytest.mark.parametrize("target", FRAMED_BACKENDS, indirect=True)


# --------------------------------------------------------------------------- cookie headers


@every_store
@FEW
@given(header=cookie_headers)
def test_garbage_cookie_header_is_harmless(target: Target, header: str) -> None:
    before = target.snapshot()
    check_garbage_cookie(target.store, header, target.key_prefix)
    target.assert_disk_clean(before)


@every_store
@FEWER
@given(session_id=unknown_ids)
def test_unknown_well_formed_id_is_never_adopted(target: Target, session_id: str) -> None:
    check_unknown_id(target.store, session_id, target.key_prefix)


@every_store
@settings(HYPOTHESIS, max_examples=5)
@given(junk=st.lists(malformed_values, min_size=1, max_size=3), junk_first=st.booleans())
def test_malformed_duplicates_do_not_hide_the_valid_cookie(
    target: Target, junk: list[str], junk_first: bool
) -> None:
    check_malformed_duplicates(target.store, junk, junk_first, target.key_prefix)


@every_store
@FEWER
@given(header=cookie_headers)
def test_signed_garbage_never_reaches_the_store(target: Target, header: str) -> None:
    check_signed_garbage(target.store, header, target.key_prefix)


@every_store
def test_wrong_or_missing_signature_never_reaches_the_store(target: Target) -> None:
    check_tampered_signatures(target.store, target.key_prefix)


# --------------------------------------------------------------------------- records via the store


@every_store
@FEW
@given(value=garbage_records)
def test_corrupt_stored_bytes_read_as_no_session(target: Target, value: bytes) -> None:
    check_unreadable(target.store, value, key_prefix=target.key_prefix)


@every_store
@FEW
@given(value=damaged_records)
def test_damaged_record_is_read_or_refused_never_fatal(target: Target, value: bytes) -> None:
    check_read_or_refused(target.store, value, key_prefix=target.key_prefix)


@every_store
@pytest.mark.parametrize("case", list(HANDCRAFTED))
def test_handcrafted_corrupt_record_reads_as_no_session(target: Target, case: str) -> None:
    check_unreadable(target.store, HANDCRAFTED[case], key_prefix=target.key_prefix)


@every_store
@pytest.mark.parametrize("case", list(FOREIGN_DATA) + list(UNENCODABLE))
def test_foreign_data_is_read_or_refused_never_fatal(target: Target, case: str) -> None:
    value = FOREIGN_DATA.get(case) or UNENCODABLE[case]
    check_read_or_refused(target.store, value, key_prefix=target.key_prefix)


@every_store
@FEWER
@given(data=json_mappings)
def test_foreign_json_mapping_is_read_or_refused_never_fatal(
    target: Target, data: dict[str, Any]
) -> None:
    value = record(json.dumps(data).encode())
    check_read_or_refused(target.store, value, key_prefix=target.key_prefix)


@every_store
@pytest.mark.parametrize("case", list(MSGPACK_GARBAGE))
def test_msgpack_corrupt_record_reads_as_no_session(target: Target, case: str) -> None:
    serializer = msgpack_serializer()
    check_unreadable(
        target.store,
        MSGPACK_GARBAGE[case](),
        key_prefix=target.key_prefix,
        serializer=serializer,
    )


@every_store
@pytest.mark.parametrize("case", list(MSGPACK_FOREIGN))
def test_msgpack_foreign_data_is_read_or_refused_never_fatal(target: Target, case: str) -> None:
    serializer = msgpack_serializer()
    check_read_or_refused(
        target.store,
        MSGPACK_FOREIGN[case](),
        key_prefix=target.key_prefix,
        serializer=serializer,
    )


# ------------------------------------------------------------------------ raw bytes on the server


def _raw(target: Target) -> Raw:
    assert target.raw is not None
    return target.raw


def _frame(target: Target) -> Callable[[bytes, float], bytes]:
    frame = _raw(target).frame
    assert frame is not None
    return frame


@dataclass(frozen=True)
class RawCase:
    """Bytes for the server, as a recipe over the target's own layout."""

    kind: str
    blob: bytes = b""
    number: int = 0
    edits: tuple[tuple[int, int], ...] = ()

    def build(self, raw: Raw) -> bytes:
        if self.kind == "bytes":
            return self.blob
        if self.kind == "cut":
            return raw.sample[: self.number % len(raw.sample)]
        return overwrite(raw.sample, list(self.edits))


#: Server bytes that can never be a live session record.
unreadable_raw = st.one_of(
    # Random bytes, without our envelope's magic anywhere in them.
    st.binary(max_size=1024).filter(lambda b: MAGIC not in b).map(lambda b: RawCase("bytes", b)),
    # A valid record as the store wrote it, cut short anywhere.
    st.integers(0, 10**6).map(lambda n: RawCase("cut", number=n)),
    # Our envelope (or something else) with no store header in front.
    st.sampled_from(
        [VALID, pickle_bomb(), record(pickle_bomb(), serializer="pickle"), b'{"a": 1}', b""]
    ).map(lambda b: RawCase("bytes", b)),
)

#: Server bytes that may or may not still be a live record: bytes changed anywhere.
damaged_raw = st.lists(
    st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=4
).map(lambda edits: RawCase("edit", edits=tuple(edits)))


@raw_stores
@FEW
@given(case=unreadable_raw)
def test_raw_garbage_on_the_server_reads_as_no_session(target: Target, case: RawCase) -> None:
    raw = _raw(target)
    check_unreadable(
        target.store,
        case.build(raw),
        key_prefix=target.key_prefix,
        planter=raw.put,
        peeker=raw.get,
    )


@raw_stores
@FEW
@given(case=damaged_raw)
def test_damaged_raw_record_is_read_or_refused_never_fatal(target: Target, case: RawCase) -> None:
    raw = _raw(target)
    check_read_or_refused(
        target.store,
        case.build(raw),
        key_prefix=target.key_prefix,
        planter=raw.put,
        peeker=raw.get,
    )


@framed_stores
@pytest.mark.parametrize(
    "expires_at",
    [-math.inf, 0.0, 1.0, -1.0, -10.0],
    ids=["-inf", "epoch", "epoch+1s", "1s-ago", "10s-ago"],
)
def test_a_dead_expiry_on_the_server_reads_as_no_session(target: Target, expires_at: float) -> None:
    """The store's header around a valid envelope, with an expiry that has passed
    (small values are absolute times in 1970; negative ones are relative to now)."""
    raw = _raw(target)
    when = time.time() + expires_at if expires_at < 0 and math.isfinite(expires_at) else expires_at
    check_unreadable(
        target.store,
        _frame(target)(VALID, when),
        key_prefix=target.key_prefix,
        planter=raw.put,
        peeker=raw.get,
    )


@pytest.mark.parametrize("target", FRAMED_BACKENDS, indirect=True)
def test_a_nan_expiry_on_the_server_reads_as_no_session(target: Target) -> None:
    """A header whose expiry is not a number is not a live record (rule 14:
    corrupt bytes are no session), for every store that keeps such a header."""
    raw = _raw(target)
    check_unreadable(
        target.store,
        _frame(target)(VALID, math.nan),
        key_prefix=target.key_prefix,
        planter=raw.put,
        peeker=raw.get,
    )


@framed_stores
@pytest.mark.parametrize(
    "expires_at", [math.inf, 1e308, time.time() + 100 * 365 * 86400], ids=["inf", "1e308", "100y"]
)
def test_far_or_infinite_expiry_on_the_server_is_not_fatal(
    target: Target, expires_at: float
) -> None:
    """A header whose expiry never comes: read or refused, never a 5xx."""
    raw = _raw(target)
    check_read_or_refused(
        target.store,
        _frame(target)(VALID, expires_at),
        key_prefix=target.key_prefix,
        planter=raw.put,
        peeker=raw.get,
    )


@raw_stores
def test_lying_store_headers_are_read_or_refused_never_fatal(target: Target) -> None:
    raw = _raw(target)
    assert raw.lying_headers
    for label, value in raw.lying_headers.items():
        try:
            check_read_or_refused(
                target.store,
                value,
                key_prefix=target.key_prefix,
                planter=raw.put,
                peeker=raw.get,
            )
        except AssertionError as exc:
            raise AssertionError(f"{target.name}, {label}: {exc}") from exc


@framed_stores
@pytest.mark.parametrize("case", ["pickle bomb as json data", "data is a list", "magic only"])
def test_store_header_around_a_hostile_envelope_reads_as_no_session(
    target: Target, case: str
) -> None:
    """Our own framing (not the store's insert) around a hostile envelope."""
    raw = _raw(target)
    check_unreadable(
        target.store,
        _frame(target)(HANDCRAFTED[case], time.time() + 3600),
        key_prefix=target.key_prefix,
        planter=raw.put,
        peeker=raw.get,
    )


@pytest.mark.parametrize("target", ENCRYPTED, indirect=True)
def test_a_ciphertext_moved_under_another_key_reads_as_no_session(target: Target) -> None:
    """A valid encrypted record copied under the store key of the cookie sent
    (someone with write access to the server replaying a session elsewhere):
    the store key is part of what is authenticated, so it reads as no session."""
    raw = _raw(target)
    check_unreadable(
        target.store,
        raw.sample,
        key_prefix=target.key_prefix,
        planter=raw.put,
        peeker=raw.get,
    )
