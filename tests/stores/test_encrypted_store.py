"""EncryptedStore beyond the shared contract: what is at rest, and what does
not decrypt.

The contract suite (``backend_encrypted.py``) shows that the wrapper behaves
as a store. These tests look under it: the bytes the wrapped store keeps hold
no plaintext; a value that is tampered with, encrypted with another key,
copied under another store key or never encrypted reads as absent and is
logged without its content; rotation; refused keys; and, through the
middleware, that encryption adds no write to a request.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from wsgi_kvsession import KVSessionMiddleware, Session, envelope
from wsgi_kvsession.admin import SessionManager
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import MemoryStore, SQLiteStore, Store
from wsgi_kvsession.stores.base import Record, Version

from ..support import CountingStore, client_for, session_app, set_cookies
from .registry import in_ci

try:
    from wsgi_kvsession.stores.encrypted import OVERHEAD, EncryptedStore
except ImportError:  # pragma: no cover - depends on the installation
    if in_ci():
        raise
    pytest.skip(
        "cryptography is not installed: pip install 'wsgi-kvsession[encryption]'",
        allow_module_level=True,
    )

LOGGER = "wsgi_kvsession.stores.encrypted"
#: Text that must never be found at rest, nor in a log line.
SECRET = "card 4111-1111-1111-1111 " + secrets.token_hex(8)
MAKE_A_KEY = "base64.urlsafe_b64encode(os.urandom(32))"


def later(seconds: float = 60.0) -> float:
    return time.time() + seconds


def new_key() -> bytes:
    return os.urandom(32)


def as_text(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def fresh_key(prefix: str = "test:enc:") -> str:
    return prefix + secrets.token_hex(32)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def load_live(store: Store, key: str) -> Record:
    record = store.load(key)
    assert record is not None, f"no live record under {key!r}"
    return record


@pytest.fixture
def inner() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def key_a() -> bytes:
    return new_key()


@pytest.fixture
def store(inner: MemoryStore, key_a: bytes) -> Any:
    return EncryptedStore(inner, key_a)


# ------------------------------------------------------------ what is at rest


def _memory_at_rest(request: pytest.FixtureRequest) -> tuple[Store, Callable[[str], bytes]]:
    inner = MemoryStore()

    def raw(key: str) -> bytes:
        return load_live(inner, key).value

    return inner, raw


def _sqlite_at_rest(request: pytest.FixtureRequest) -> tuple[Store, Callable[[str], bytes]]:
    """Every byte of the database's files (main file, WAL and shared memory)."""
    directory: Path = request.getfixturevalue("tmp_path") / "db"
    directory.mkdir()
    inner = SQLiteStore(directory / "s.db")

    def raw(key: str) -> bytes:
        return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())

    return inner, raw


def _redis_at_rest(request: pytest.FixtureRequest) -> tuple[Store, Callable[[str], bytes]]:
    """The Redis string under the key, read with a client of our own."""
    from .backend_redis import REDIS_URL, redis_store

    inner = redis_store(REDIS_URL)  # skips (fails under CI) without a Redis
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    request.addfinalizer(client.close)

    def raw(key: str) -> bytes:
        value = client.get(key)
        assert isinstance(value, bytes)
        return value

    return inner, raw


AT_REST = {"memory": _memory_at_rest, "sqlite": _sqlite_at_rest, "redis": _redis_at_rest}


@pytest.fixture(params=list(AT_REST))
def at_rest(request: pytest.FixtureRequest) -> Iterator[tuple[Store, Callable[[str], bytes]]]:
    inner, raw = AT_REST[request.param](request)
    try:
        yield inner, raw
    finally:
        inner.close()


def test_the_wrapped_store_keeps_no_plaintext(
    at_rest: tuple[Store, Callable[[str], bytes]],
) -> None:
    inner, raw = at_rest
    store = EncryptedStore(inner, new_key())
    secret, clear = SECRET.encode(), b"in clear " + secrets.token_bytes(8)
    key, clear_key = fresh_key(), fresh_key()
    try:
        assert store.insert(key, secret, later(), user="user-" + secrets.token_hex(6)) is True
        assert load_live(store, key).value == secret
        assert secret not in raw(key)
        assert store.update(key, secret * 2, later()) is True
        assert secret not in raw(key)
        # Self-check: the same reader does see a value written in clear.
        assert inner.insert(clear_key, clear, later()) is True
        assert clear in raw(clear_key)
    finally:
        inner.delete(key)
        inner.delete(clear_key)


def test_every_write_draws_a_fresh_nonce(store: Any, inner: MemoryStore) -> None:
    key = fresh_key()
    assert store.insert(key, b"same", later()) is True
    seen = {load_live(inner, key).value}
    for _ in range(5):
        assert store.update(key, b"same", later()) is True
        seen.add(load_live(inner, key).value)
    assert len(seen) == 6
    nonces = {value[5:17] for value in seen}
    assert len(nonces) == 6
    assert all(len(value) == len(b"same") + OVERHEAD for value in seen)


# ------------------------------------------- what does not decrypt is absent


def _flip(index: int) -> Callable[[bytes], bytes]:
    def flip(value: bytes) -> bytes:
        changed = bytearray(value)
        changed[index] ^= 0x01
        return bytes(changed)

    return flip


TAMPERING: dict[str, Callable[[bytes], bytes]] = {
    "format-byte": _flip(0),
    "key-id": _flip(2),
    "nonce": _flip(10),
    "ciphertext": _flip(OVERHEAD - 16 + 3),
    "tag": _flip(-1),
    "truncated-tag": lambda v: v[:-1],
    "shorter-than-a-header": lambda v: v[: OVERHEAD - 1],
    "empty": lambda v: b"",
    "a-byte-more": lambda v: v + b"\x00",
}


@pytest.mark.parametrize("tamper", list(TAMPERING), ids=list(TAMPERING))
def test_a_tampered_value_reads_as_absent_and_is_logged_without_it(
    store: Any, inner: MemoryStore, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    key, good = fresh_key(), fresh_key()
    assert store.insert(key, SECRET.encode(), later(), user="alice") is True
    assert store.insert(good, b"good", later(), user="alice") is True
    stored = load_live(inner, key).value
    tampered = TAMPERING[tamper](stored)
    assert inner.update(key, tampered, later(), user="alice") is True

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert store.load(key) is None
        (warning,) = warnings_of(caplog)
        assert key in warning
        # Listings skip it, and say so once per listing.
        assert [k for k, _ in store.iter_records("test:enc:") if k in (key, good)] == [good]
        assert [k for k, _ in store.iter_user_records("alice")] == [good]
        listing_warnings = warnings_of(caplog)[1:]
        assert len(listing_warnings) == 2
        assert all("skipped 1 record" in w for w in listing_warnings)

    assert SECRET not in caplog.text
    # No log line carries bytes: neither the value nor the ciphertext.
    assert not [a for r in caplog.records for a in r.args or () if isinstance(a, bytes)]
    # The record is still there for the wrapped store: a delete removes it.
    assert store.delete(key) is True


def test_a_value_under_another_key_reads_as_absent(
    store: Any, inner: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = fresh_key()
    assert store.insert(key, SECRET.encode(), later()) is True
    stranger = EncryptedStore(inner, new_key())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert stranger.load(key) is None
    (warning,) = warnings_of(caplog)
    assert "key that is not in keys" in warning
    assert SECRET not in caplog.text
    assert load_live(store, key).value == SECRET.encode()


def test_a_value_written_before_encryption_reads_as_absent(
    store: Any, inner: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A record the session layer wrote in clear (encryption turned on later)."""
    key = fresh_key()
    now = time.time()
    clear = envelope.pack(envelope.Envelope(now, now, False, None, "json", SECRET.encode()))
    assert inner.insert(key, clear, later()) is True
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load(key) is None
        assert [k for k, _ in store.iter_records(key)] == []
    first, summary = warnings_of(caplog)
    assert "not encrypted" in first
    assert "1 is not encrypted" in summary
    assert SECRET not in caplog.text


def test_a_value_copied_under_another_store_key_reads_as_absent(
    store: Any, inner: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The store key is bound to the ciphertext: an attacker who can write the
    store cannot give their session another user's data by copying bytes."""
    victim, attacker = fresh_key(), fresh_key()
    assert store.insert(victim, SECRET.encode(), later()) is True
    assert store.insert(attacker, b"mine", later()) is True
    copied = load_live(inner, victim).value
    assert inner.update(attacker, copied, later()) is True
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load(attacker) is None
    (warning,) = warnings_of(caplog)
    assert "does not authenticate" in warning
    assert load_live(store, victim).value == SECRET.encode()


def test_a_bad_value_is_logged_once_per_key_not_at_every_read(
    store: Any, inner: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = fresh_key(), fresh_key()
    for key in (one, two):
        assert inner.insert(key, b"not encrypted", later()) is True
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(3):
            assert store.load(one) is None
        assert store.load(two) is None
    warned = warnings_of(caplog)
    assert len(warned) == 2
    assert one in warned[0]
    assert two in warned[1]
    debug = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.DEBUG]
    assert len(debug) == 2


# ---------------------------------------------------------------- rotation


def test_rotation_reads_with_every_key_and_writes_with_the_first(inner: MemoryStore) -> None:
    old, new = new_key(), new_key()
    key, created_later = fresh_key(), fresh_key()
    assert EncryptedStore(inner, old).insert(key, b"v1", later()) is True

    rotated = EncryptedStore(inner, keys=[new, old])
    record = load_live(rotated, key)
    assert record.value == b"v1"
    # A touch moves the expiry only: the value stays encrypted with the old key.
    assert rotated.touch(key, later(120)) is True
    assert load_live(EncryptedStore(inner, old), key).value == b"v1"

    assert rotated.update(key, b"v2", later(), version=record.version) is True
    assert rotated.insert(created_later, b"v3", later()) is True
    only_new, only_old = EncryptedStore(inner, new), EncryptedStore(inner, old)
    assert load_live(only_new, key).value == b"v2"
    assert load_live(only_new, created_later).value == b"v3"
    assert only_old.load(key) is None
    assert only_old.load(created_later) is None
    # The order of the keys and their form (bytes or text) do not matter to reads.
    assert load_live(EncryptedStore(inner, keys=[old, as_text(new)]), key).value == b"v2"


# -------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "key",
    [
        new_key(),
        bytearray(new_key()),
        as_text(new_key()),
        as_text(new_key()).rstrip("="),
        as_text(new_key()) + "\n",
    ],
    ids=["bytes", "bytearray", "text", "text-without-padding", "text-with-newline"],
)
def test_keys_of_32_bytes_are_accepted(inner: MemoryStore, key: bytes | str) -> None:
    store = EncryptedStore(inner, key)
    assert store.insert("k", b"v", later()) is True
    assert load_live(store, "k").value == b"v"


#: 32 bytes whose standard base64 has "+" and "/" (not the urlsafe alphabet).
_STANDARD_B64 = base64.b64encode(bytes([0xFB, 0xFF, 0xBF]) * 10 + b"\xfb\xff").decode()

BAD_KEYS: dict[str, object] = {
    "empty-bytes": b"",
    "16-bytes": os.urandom(16),
    "31-bytes": os.urandom(31),
    "33-bytes": os.urandom(33),
    "base64-as-bytes": base64.urlsafe_b64encode(os.urandom(32)),
    "empty-text": "",
    "a-passphrase": "correct horse battery staple",
    "base64-of-16-bytes": as_text(os.urandom(16)),
    "base64-of-33-bytes": as_text(os.urandom(33)),
    "standard-base64": _STANDARD_B64,
    "hex-of-32-bytes": os.urandom(32).hex(),
    "space-inside": as_text(os.urandom(32))[:20] + " " + as_text(os.urandom(32))[21:],
}


@pytest.mark.parametrize("bad", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_bad_keys_are_refused_with_how_to_make_one(inner: MemoryStore, bad: object) -> None:
    assert "+" in _STANDARD_B64 or "/" in _STANDARD_B64
    with pytest.raises(ValueError, match=r"EncryptedStore: key must be 32") as raised:
        EncryptedStore(inner, bad)  # type: ignore[arg-type]
    message = str(raised.value)
    assert MAKE_A_KEY in message
    if isinstance(bad, str) and len(bad) > 4:
        assert bad.strip() not in message  # never the (maybe secret) value itself
    if isinstance(bad, bytes) and len(bad) > 4:
        assert repr(bad)[2:-1] not in message


def test_a_bad_key_among_keys_is_named_by_its_position(inner: MemoryStore) -> None:
    with pytest.raises(ValueError, match=r"keys\[1\] must be 32"):
        EncryptedStore(inner, keys=[new_key(), b"too short"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "key= .* or keys="),
        ({"key": new_key(), "keys": [new_key()]}, ValueError, "not both"),
        ({"keys": []}, ValueError, "keys= is empty"),
        ({"keys": as_text(new_key())}, TypeError, "list of keys"),
        ({"key": [new_key(), new_key()]}, TypeError, r"keys=\[current, \*old\]"),
        ({"key": 1234}, TypeError, "bytes or str, not int"),
    ],
    ids=["neither", "both", "no-keys", "keys-as-text", "list-as-key", "int"],
)
def test_misuse_of_key_and_keys_is_refused(
    inner: MemoryStore, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        EncryptedStore(inner, **kwargs)


def test_only_a_store_can_be_wrapped() -> None:
    with pytest.raises(TypeError, match="wraps a wsgi_kvsession Store"):
        EncryptedStore({}, new_key())  # type: ignore[arg-type]


def test_the_repr_names_the_wrapped_store_and_no_key(inner: MemoryStore) -> None:
    key = new_key()
    text = repr(EncryptedStore(inner, keys=[as_text(key), new_key()]))
    assert text == f"EncryptedStore({inner!r})"
    assert as_text(key)[:10] not in text


# ------------------------------------------------------------ capabilities


class _NoCompareAndSet(MemoryStore):
    supports_versioning = False
    indexes_users = False


class _BeforeTheUserIndex(MemoryStore):
    """A store written before ``user=`` existed: its writes do not take it."""

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:  # type: ignore[override]
        return super().insert(key, value, expires_at)

    def update(  # type: ignore[override]
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
        return super().update(key, value, expires_at, version)


class _CannotList(MemoryStore):
    indexes_users = False
    iter_records = Store.iter_records
    iter_user_records = Store.iter_user_records


def test_the_wrapper_has_the_wrapped_stores_capabilities(key_a: bytes) -> None:
    full = EncryptedStore(MemoryStore(), key_a)
    assert (full.supports_versioning, full.indexes_users) == (True, True)
    plain = EncryptedStore(_NoCompareAndSet(), key_a)
    assert (plain.supports_versioning, plain.indexes_users) == (False, False)


def test_a_store_without_user_on_writes_is_called_without_it(key_a: bytes) -> None:
    legacy = _BeforeTheUserIndex()
    assert legacy.indexes_users is False
    store = EncryptedStore(legacy, key_a)
    assert store.indexes_users is False
    assert store.insert("k", b"one", later(), user="alice") is True
    assert store.update("k", b"two", later(), user="alice") is True
    assert load_live(store, "k").value == b"two"


def test_a_store_that_cannot_list_says_so_when_asked(key_a: bytes) -> None:
    """At the call, not at the first item: SessionManager and the CLI call
    ``iter_records`` to find out whether a store lists."""
    store = EncryptedStore(_CannotList(), key_a)
    with pytest.raises(NotImplementedError, match="cannot list"):
        store.iter_records("p")
    with pytest.raises(NotImplementedError, match="no index"):
        store.iter_user_records("alice", "p")


def test_without_cryptography_the_import_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import wsgi_kvsession.stores\n"
        "from wsgi_kvsession.stores import store_from_url, MemoryStore\n"
        "store_from_url('memory://')\n"
        "try:\n"
        "    from wsgi_kvsession.stores import EncryptedStore\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    sys.exit('imported without cryptography')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pip install 'wsgi-kvsession[encryption]'" in done.stdout


# ------------------------------------------------- through the middleware


def _routes(session: Session, request: Request) -> Any:
    if request.path == "/set":
        for k, v in request.args.items():
            session[k] = v
    elif request.path == "/login":
        session.user_id = "alice"
        session["card"] = SECRET
    elif request.path == "/cart":
        session.setdefault("cart", []).append(request.args["item"])
    elif request.path == "/logout":
        session.destroy()
    return repr(dict(session))


def test_a_read_only_request_writes_nothing(key_a: bytes) -> None:
    """The session layer compares decrypted bytes: a fresh nonce on every
    write does not make an unchanged session look changed."""
    counting = CountingStore(MemoryStore())
    client = client_for(_routes, EncryptedStore(counting, key_a))
    client.get("/set?a=1")
    assert counting.methods() == ["insert"]
    counting.reset()
    assert client.get("/read").text == "{'a': '1'}"
    assert client.get("/read").text == "{'a': '1'}"
    client.get("/set?a=1")  # the same value again
    assert counting.methods() == ["load", "load", "load"]
    counting.reset()
    client.get("/set?a=2")
    assert counting.methods() == ["load", "update"]


def test_sessions_through_the_middleware_are_encrypted_end_to_end(
    inner: MemoryStore, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(_routes, store)
    response = client.get("/login")
    assert len(set_cookies(response)) == 1
    cookie = client.get_cookie("session")
    assert cookie is not None
    session_id = cookie.value
    key = store_key("session:", session_id)

    assert SECRET.encode() not in load_live(inner, key).value
    assert SECRET in client.get("/read").text
    client.get("/cart?item=book")
    assert "'cart': ['book']" in client.get("/read").text
    assert SECRET.encode() not in load_live(inner, key).value

    manager = SessionManager(store)
    info = manager.get(session_id)
    assert info is not None
    assert info.data["card"] == SECRET
    assert info.user_id == "alice"
    assert [s.key for s in manager.sessions_of("alice")] == [key]

    client.get("/logout")
    assert inner.load(key) is None
    assert warnings_of(caplog) == []


def test_a_session_from_before_encryption_starts_afresh_without_an_error(
    inner: MemoryStore, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Turning encryption on over a store of clear records: each old session
    reads as no session (a 200 with an empty session, never a 500), and the
    next write stores a new, encrypted session under a new ID."""
    before = client_for(_routes, inner)
    before.get("/login")
    old = before.get_cookie("session")
    assert old is not None

    after = Client(KVSessionMiddleware(session_app(_routes), store, cookie_secure=False))
    after.set_cookie("session", old.value)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        response = after.get("/read")
    assert response.status_code == 200
    assert response.text == "{}"
    assert len(warnings_of(caplog)) == 1
    assert SECRET not in caplog.text

    after.get("/set?fresh=1")
    new = after.get_cookie("session")
    assert new is not None
    assert new.value != old.value
    assert load_live(store, store_key("session:", new.value)).value
    assert "'fresh': '1'" in after.get("/read").text
