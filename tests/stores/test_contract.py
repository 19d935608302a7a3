"""The contract every session store must pass (the ``Store`` protocol, DESIGN.md §5).

Each test takes the ``store`` fixture of ``conftest.py``, so it runs once per
registered backend. Records meant to expire during a test live 0.3 s and the
test waits 0.2 s past their expiry; every other record lives a minute or more.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from wsgi_kvsession import envelope
from wsgi_kvsession.admin import SessionManager
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import Record, Store
from wsgi_kvsession.stores.base import insert_with_user, user_text

from .registry import StoreSpec

#: Lifetime of an ordinary record, in seconds.
TTL = 60.0
#: Lifetime of a record meant to expire during the test.
SHORT = 0.3
#: How long a test waits past a short-lived record's expiry.
MARGIN = 0.2
#: Tolerance on a stored expiry (stores may round, e.g. to milliseconds or a TTL).
EXPIRY_TOLERANCE = 1.0

THREADS = 8
INCREMENTS = 50
#: Rounds of the insert race, each on a fresh key.
RACES = 20
#: Cap on attempts for one compare-and-set increment, so a broken store fails
#: the test instead of hanging it.
MAX_ATTEMPTS = 5_000


def later(seconds: float = TTL) -> float:
    return time.time() + seconds


def insert_short_lived(store: Store, key: str, value: bytes = b"short-lived") -> float:
    """Insert a record that expires in ``SHORT`` seconds; return its expiry."""
    store.load(key)  # the first use may connect or create a schema: not on the clock
    expires_at = time.time() + SHORT
    assert store.insert(key, value, expires_at) is True
    return expires_at


def wait_until_expired(expires_at: float) -> None:
    delay = expires_at + MARGIN - time.time()
    if delay > 0:
        time.sleep(delay)


def load_live(store: Store, key: str) -> Record:
    record = store.load(key)
    assert record is not None, f"no live record under {key!r}"
    assert isinstance(record, Record)
    return record


def assert_unchanged(after: Record | None, before: Record) -> None:
    assert after is not None
    assert after.value == before.value
    assert after.version == before.version
    assert after.expires_at == pytest.approx(before.expires_at, abs=EXPIRY_TOLERANCE)


@contextlib.contextmanager
def switch_often() -> Iterator[None]:
    """Make the interpreter switch threads far more often than every 5 ms, so
    a read-modify-write that is not atomic is interleaved and caught."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def list_records(store: Store, keys: Callable[[str], bool], prefix: str = "") -> dict[str, Record]:
    """``iter_records(prefix)`` restricted to this test's keys; skip if the store
    cannot list. Tests pass their own prefix, so that a store on a shared server
    does not read through everybody else's keys."""
    try:
        return {k: r for k, r in store.iter_records(prefix) if keys(k)}
    except NotImplementedError as exc:
        pytest.skip(f"{store!r} cannot list its records: {exc}")


# ---------------------------------------------------------------- load / insert


def test_load_of_missing_key_is_none(store: Store, key: str) -> None:
    assert store.load(key) is None


def test_insert_then_load_returns_value_expiry_and_version(store: Store, key: str) -> None:
    expires_at = later()
    assert store.insert(key, b"value", expires_at) is True
    record = load_live(store, key)
    assert record.value == b"value"
    assert isinstance(record.value, bytes)
    assert record.expires_at == pytest.approx(expires_at, abs=EXPIRY_TOLERANCE)
    assert record.version is not None


def test_insert_on_a_live_key_returns_false_and_changes_nothing(store: Store, key: str) -> None:
    assert store.insert(key, b"first", later()) is True
    before = load_live(store, key)
    assert store.insert(key, b"second", later(3 * TTL)) is False
    assert_unchanged(store.load(key), before)


def test_insert_over_an_expired_record_succeeds(store: Store, key: str) -> None:
    wait_until_expired(insert_short_lived(store, key, b"old"))
    assert store.load(key) is None
    expires_at = later()
    assert store.insert(key, b"new", expires_at) is True
    record = load_live(store, key)
    assert record.value == b"new"
    assert record.expires_at == pytest.approx(expires_at, abs=EXPIRY_TOLERANCE)


def test_keys_are_independent(store: Store, new_key: Callable[[], str]) -> None:
    a, b = new_key(), new_key()
    assert store.insert(a, b"a", later()) is True
    assert store.insert(b, b"b", later()) is True
    assert load_live(store, a).value == b"a"
    assert load_live(store, b).value == b"b"
    store.delete(a)
    assert store.load(a) is None
    assert load_live(store, b).value == b"b"


# ----------------------------------------------------------------------- update


def test_update_of_a_missing_key_returns_false_and_creates_nothing(
    store: Store, key: str, new_key: Callable[[], str]
) -> None:
    # A version token of the store's own type, taken from another record.
    other = new_key()
    assert store.insert(other, b"other", later()) is True
    token = load_live(store, other).version

    assert store.update(key, b"resurrected", later()) is False
    assert store.update(key, b"resurrected", later(), version=token) is False
    assert store.load(key) is None
    # Nothing hidden was created either: the key is still free for an insert.
    assert store.insert(key, b"fresh", later()) is True
    assert load_live(store, key).value == b"fresh"


def test_update_with_the_current_version_succeeds_and_changes_the_version(
    store: Store, key: str
) -> None:
    assert store.insert(key, b"one", later()) is True
    first = load_live(store, key)
    expires_at = later(3 * TTL)
    assert store.update(key, b"two", expires_at, version=first.version) is True
    second = load_live(store, key)
    assert second.value == b"two"
    assert second.expires_at == pytest.approx(expires_at, abs=EXPIRY_TOLERANCE)
    assert second.version != first.version
    # And again from the new version: versions keep changing on every write.
    assert store.update(key, b"three", expires_at, version=second.version) is True
    third = load_live(store, key)
    assert third.value == b"three"
    assert third.version not in (first.version, second.version)


def test_update_with_a_stale_version_returns_false_and_changes_nothing(
    store: Store, key: str
) -> None:
    assert store.insert(key, b"one", later()) is True
    stale = load_live(store, key).version
    assert store.update(key, b"two", later(), version=stale) is True
    current = load_live(store, key)
    assert store.update(key, b"lost", later(3 * TTL), version=stale) is False
    assert_unchanged(store.load(key), current)


def test_update_without_a_version_ignores_versions(store: Store, key: str) -> None:
    assert store.insert(key, b"one", later()) is True
    first = load_live(store, key)
    assert store.update(key, b"two", later(), version=first.version) is True
    # A writer that does not compare versions overwrites whatever is there...
    assert store.update(key, b"three", later()) is True
    assert store.update(key, b"four", later(), version=None) is True
    record = load_live(store, key)
    assert record.value == b"four"
    # ...and still moves the version on, so a reader of an older one cannot win.
    assert record.version != first.version
    assert store.update(key, b"stale", later(), version=first.version) is False
    assert load_live(store, key).value == b"four"


def test_update_of_an_expired_record_returns_false(store: Store, key: str) -> None:
    expires_at = insert_short_lived(store, key, b"old")
    version = load_live(store, key).version
    wait_until_expired(expires_at)
    assert store.update(key, b"resurrected", later()) is False
    assert store.update(key, b"resurrected", later(), version=version) is False
    assert store.load(key) is None


def test_update_after_delete_does_not_resurrect(store: Store, key: str) -> None:
    assert store.insert(key, b"one", later()) is True
    version = load_live(store, key).version
    store.delete(key)
    assert store.update(key, b"resurrected", later(), version=version) is False
    assert store.update(key, b"resurrected", later()) is False
    assert store.load(key) is None


# ----------------------------------------------------------------------- delete


def test_delete_removes_the_record(store: Store, key: str) -> None:
    assert store.insert(key, b"value", later()) is True
    store.delete(key)
    assert store.load(key) is None
    assert store.touch(key, later()) is False
    assert store.insert(key, b"again", later()) is True
    assert load_live(store, key).value == b"again"


def test_delete_of_a_missing_key_is_fine(store: Store, key: str) -> None:
    assert store.delete(key) is False
    assert store.delete(key, version=1) is False
    assert store.load(key) is None


def test_delete_reports_whether_it_removed_a_live_record(store: Store, key: str) -> None:
    assert store.insert(key, b"value", later()) is True
    assert store.delete(key) is True
    assert store.delete(key) is False


def test_delete_with_the_current_version_removes_the_record(store: Store, key: str) -> None:
    assert store.insert(key, b"value", later()) is True
    assert store.delete(key, version=load_live(store, key).version) is True
    assert store.load(key) is None


def test_delete_with_a_stale_version_changes_nothing(store: Store, key: str) -> None:
    if not store.supports_versioning:
        pytest.skip(f"{store!r} has no compare-and-set")
    assert store.insert(key, b"one", later()) is True
    stale = load_live(store, key).version
    assert store.update(key, b"two", later(), version=stale) is True
    assert store.delete(key, version=stale) is False
    assert load_live(store, key).value == b"two"


def test_delete_of_an_expired_record_reports_false(store: Store, key: str) -> None:
    expires_at = insert_short_lived(store, key, b"old")
    wait_until_expired(expires_at)
    assert store.delete(key) is False
    assert store.load(key) is None


# ------------------------------------------------------------------------ touch


def test_touch_moves_the_expiry_and_keeps_value_and_version(store: Store, key: str) -> None:
    assert store.insert(key, b"value", later()) is True
    before = load_live(store, key)

    for expires_at in (later(5 * TTL), later(TTL / 2)):  # lengthen, then shorten
        assert store.touch(key, expires_at) is True
        after = load_live(store, key)
        assert after.value == b"value"
        assert after.version == before.version
        assert after.expires_at == pytest.approx(expires_at, abs=EXPIRY_TOLERANCE)

    # The version read before the touch still wins a compare-and-set.
    assert store.update(key, b"changed", later(), version=before.version) is True


def test_touch_of_a_missing_key_returns_false_and_creates_nothing(store: Store, key: str) -> None:
    assert store.touch(key, later()) is False
    assert store.load(key) is None


def test_touch_of_an_expired_record_returns_false(store: Store, key: str) -> None:
    wait_until_expired(insert_short_lived(store, key))
    assert store.touch(key, later()) is False
    assert store.load(key) is None


def test_touch_to_a_past_time_makes_the_record_absent(store: Store, key: str) -> None:
    assert store.insert(key, b"value", later()) is True
    assert store.touch(key, time.time() - 10) is True
    assert store.load(key) is None
    assert store.update(key, b"resurrected", later()) is False
    assert store.touch(key, later()) is False
    assert store.insert(key, b"new", later()) is True
    assert load_live(store, key).value == b"new"


# ---------------------------------------------------------------------- expiry


def test_a_record_past_its_expiry_is_never_returned(store: Store, key: str) -> None:
    expires_at = insert_short_lived(store, key, b"soon gone")
    assert load_live(store, key).value == b"soon gone"
    wait_until_expired(expires_at)
    assert store.load(key) is None
    assert store.load(key) is None  # and it stays gone


# ----------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "value",
    [
        bytes(range(256)),
        b"",
        b"\x00",
        bytes(reversed(range(256))) * 3,
        b"\r\n\x00\xff trailing space ",
        "non-ASCII: \u00fc\u00df\u20ac\U0001f600".encode(),
    ],
    ids=["all-256-bytes", "empty", "nul", "reversed-x3", "crlf-nul-ff", "utf8"],
)
def test_binary_values_round_trip(store: Store, key: str, value: bytes) -> None:
    assert store.insert(key, value, later()) is True
    assert load_live(store, key).value == value
    assert store.update(key, value[::-1], later()) is True
    assert load_live(store, key).value == value[::-1]
    assert store.touch(key, later(2 * TTL)) is True
    assert load_live(store, key).value == value[::-1]


def test_large_values_round_trip(store: Store, key: str) -> None:
    first = os.urandom(1024 * 1024)
    assert store.insert(key, first, later()) is True
    assert load_live(store, key).value == first
    second = os.urandom(1024 * 1024 + 1)
    assert store.update(key, second, later()) is True
    assert load_live(store, key).value == second


# ------------------------------------------------------------------------- keys

KEY_FORMS = [
    "session:",
    "app/one:",
    "..:",
    "../../",
    ".",
    "/",
    "a b%2F+?#&=;,:",
    "\u00fcber:",
    "tenant\\x:",
]


@pytest.mark.parametrize("form", KEY_FORMS, ids=[repr(f) for f in KEY_FORMS])
def test_keys_with_prefix_characters_round_trip(store: Store, form: str) -> None:
    # The 64 random hex digits keep the key unique on a shared server.
    key = form + secrets.token_hex(32)
    assert store.insert(key, form.encode(), later()) is True
    assert load_live(store, key).value == form.encode()
    assert store.update(key, b"updated", later()) is True
    assert store.touch(key, later()) is True
    assert load_live(store, key).value == b"updated"
    try:
        listed = list_records(store, lambda k: k == key, key[:-1])
        assert list(listed) == [key]
    finally:
        store.delete(key)
    assert store.load(key) is None


def test_keys_an_escaping_scheme_could_confuse_stay_distinct(store: Store) -> None:
    suffix = secrets.token_hex(32)
    keys = [f + suffix for f in ("a/b:", "a%2Fb:", "a%252Fb:", "x.y:", "x%2Ey:", "x_y:")]
    for k in keys:
        assert store.insert(k, k.encode(), later()) is True
    for k in keys:
        assert load_live(store, k).value == k.encode()
    for k in keys:
        store.delete(k)


# ------------------------------------------------------------ iteration, cleanup


def test_iter_records_lists_live_records_only_with_their_keys(
    store: Store, key_prefix: str, new_key: Callable[[], str]
) -> None:
    expired = [new_key() for _ in range(2)]
    last = max(insert_short_lived(store, k) for k in expired)
    live = {new_key(): secrets.token_bytes(16) for _ in range(3)}
    for k, value in live.items():
        assert store.insert(k, value, later()) is True
    wait_until_expired(last)

    listed = list_records(store, lambda k: k.startswith(key_prefix), key_prefix)
    assert set(listed) == set(live)
    for k, record in listed.items():
        assert isinstance(record, Record)
        assert record.value == live[k]
        current = load_live(store, k)
        assert record.version == current.version
        assert record.expires_at == pytest.approx(current.expires_at, abs=EXPIRY_TOLERANCE)


PREFIX_FORMS = ["", "%", "_", "*", "?", "[a-z]", "\\", "s\u00fcb:", "\x7f"]


@pytest.mark.parametrize("tail", PREFIX_FORMS, ids=[repr(f) for f in PREFIX_FORMS])
def test_iter_records_lists_only_the_keys_under_a_prefix(
    store: Store, key_prefix: str, tail: str
) -> None:
    """The prefix is literal: no SQL LIKE or Redis glob wildcard in it matches more."""
    prefix = key_prefix + "p" + tail
    under = {prefix + secrets.token_hex(8) for _ in range(3)}
    outside = {
        key_prefix + "q" + secrets.token_hex(8),  # a sibling prefix
        prefix[:-1],  # a proper prefix of the prefix
    }
    if tail:
        outside.add(key_prefix + "pa" + tail + secrets.token_hex(8))  # a wildcard's match
        outside.add(key_prefix + "pg" + secrets.token_hex(8))  # the prefix without its tail
    for k in under | outside:
        assert store.insert(k, b"v", later()) is True
    try:
        listed = list_records(store, lambda k: True, prefix)
    finally:
        for k in under | outside:
            store.delete(k)
    assert set(listed) == under


def test_cleanup_removes_expired_records_and_counts_them(
    store: Store, store_spec: StoreSpec, new_key: Callable[[], str]
) -> None:
    expired = [new_key() for _ in range(3)]
    last = max(insert_short_lived(store, k) for k in expired)
    live = [new_key() for _ in range(2)]
    for k in live:
        assert store.insert(k, b"live", later()) is True
    wait_until_expired(last)

    # No load of the expired keys before cleanup: a store may purge on read.
    removed = store.cleanup()
    assert isinstance(removed, int)
    if store_spec.cleanup == "exact":
        assert removed == len(expired)
    elif store_spec.cleanup == "at_least":
        assert removed >= len(expired)
    else:
        assert removed >= 0
    for k in expired:
        assert store.load(k) is None
    for k in live:
        assert load_live(store, k).value == b"live"
    if store_spec.cleanup == "exact":
        assert store.cleanup() == 0


def test_cleanup_leaves_live_records(
    store: Store, store_spec: StoreSpec, new_key: Callable[[], str]
) -> None:
    keys = [new_key() for _ in range(3)]
    for k in keys:
        assert store.insert(k, k.encode(), later()) is True
    before = {k: load_live(store, k) for k in keys}
    removed = store.cleanup()
    if store_spec.cleanup == "exact":
        assert removed == 0
    for k in keys:
        assert_unchanged(store.load(k), before[k])


def test_close_then_use_again(store: Store, key: str) -> None:
    assert store.insert(key, b"value", later()) is True
    store.close()
    store.close()  # closing twice is harmless
    assert store.touch(key, later()) is True
    assert store.update(key, b"after close", later()) is True
    assert load_live(store, key).value == b"after close"


# ------------------------------------------------------------------ concurrency


def test_compare_and_set_is_atomic_under_threads(store: Store, key: str) -> None:
    if not store.supports_versioning:
        pytest.skip(f"{store!r} has no atomic compare-and-set (supports_versioning=False)")
    assert store.insert(key, b"0", later(5 * TTL)) is True
    start = threading.Barrier(THREADS)

    def increment_many() -> int:
        start.wait(timeout=30)
        conflicts = 0
        for _ in range(INCREMENTS):
            for _attempt in range(MAX_ATTEMPTS):
                record = load_live(store, key)
                value = str(int(record.value) + 1).encode()
                if store.update(key, value, record.expires_at, version=record.version):
                    break
                conflicts += 1
            else:
                raise AssertionError(f"no increment succeeded in {MAX_ATTEMPTS} attempts")
        return conflicts

    with switch_often(), ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(increment_many) for _ in range(THREADS)]
        conflicts = sum(f.result(timeout=120) for f in futures)

    assert int(load_live(store, key).value) == THREADS * INCREMENTS, (
        f"lost updates (conflicts seen: {conflicts})"
    )


def test_only_one_of_racing_inserts_wins(store: Store, new_key: Callable[[], str]) -> None:
    # Threads of ONE store object: every store must pass this, including those
    # with supports_versioning=False (SimpleKVStore serialises its own threads
    # with per-key locks). Atomicity across processes, which such stores lack,
    # is not checked here.
    keys = [new_key() for _ in range(RACES)]
    store.load(keys[0])  # connect / create the schema before the race
    start = threading.Barrier(THREADS)
    expires_at = later()

    def insert_each(i: int) -> list[bool]:
        won = []
        for k in keys:  # one race per key, all threads released together
            start.wait(timeout=30)
            won.append(store.insert(k, f"thread {i}".encode(), expires_at))
        return won

    with switch_often(), ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(insert_each, range(THREADS), timeout=120))

    for race, k in enumerate(keys):
        winners = [i for i in range(THREADS) if results[i][race]]
        assert len(winners) == 1, f"race {race}: inserts that returned True: {winners}"
        assert all(results[i][race] is False for i in range(THREADS) if i not in winners)
        assert load_live(store, k).value == f"thread {winners[0]}".encode()


# ------------------------------------------------------------- the user index
#
# The session layer passes the user a record belongs to (``user=``, the text of
# ``Session.user_id``) to every insert and update. Every store accepts it; a
# store with ``indexes_users`` lists a user's records with iter_user_records()
# (exactly the live records whose latest write named that user), the others
# say they cannot, and SessionManager then reads every record instead.


def new_user() -> str:
    """A user ID unique to this test (stores on a shared server share indexes)."""
    return "user-" + secrets.token_hex(6)


def user_records(store: Store, user: str, prefix: str) -> dict[str, Record]:
    """``iter_user_records(user, prefix)`` as a dict; skip if the store keeps no index."""
    if not store.indexes_users:
        pytest.skip(f"{store!r} keeps no index by user (a session manager scans it)")
    listed = list(store.iter_user_records(user, prefix))
    keys = [k for k, _ in listed]
    assert len(keys) == len(set(keys)), f"a key listed twice: {keys}"
    return dict(listed)


def test_every_store_accepts_the_user_of_a_write(store: Store, key: str) -> None:
    user = new_user()
    assert store.insert(key, b"one", later(), user=user) is True
    assert store.insert(key, b"again", later(), user=user) is False
    record = load_live(store, key)
    assert store.update(key, b"two", later(), record.version, user=new_user()) is True
    assert store.update(key, b"three", later(), user=None) is True
    assert load_live(store, key).value == b"three"


def test_a_store_without_an_index_says_so(store: Store, key_prefix: str) -> None:
    if store.indexes_users:
        assert list(store.iter_user_records(new_user(), key_prefix)) == []
        return
    with pytest.raises(NotImplementedError):
        list(store.iter_user_records(new_user(), key_prefix))


def test_the_index_lists_exactly_a_users_live_records(
    store: Store, key_prefix: str, new_key: Callable[[], str]
) -> None:
    alice, bob = new_user(), new_user()
    alices = {new_key(): secrets.token_bytes(8) for _ in range(3)}
    bobs = {new_key(): b"bob"}
    for k, value in alices.items():
        assert store.insert(k, value, later(), user=alice) is True
    for k, value in bobs.items():
        assert store.insert(k, value, later(), user=bob) is True
    assert store.insert(new_key(), b"anonymous", later()) is True

    listed = user_records(store, alice, key_prefix)
    assert set(listed) == set(alices)
    for k, record in listed.items():
        assert isinstance(record, Record)
        current = load_live(store, k)
        assert record.value == alices[k] == current.value
        assert record.version == current.version
        assert record.expires_at == pytest.approx(current.expires_at, abs=EXPIRY_TOLERANCE)
    assert set(user_records(store, bob, key_prefix)) == set(bobs)
    assert user_records(store, new_user(), key_prefix) == {}


def test_the_index_follows_updates_and_a_change_of_user(
    store: Store, key_prefix: str, key: str
) -> None:
    alice, bob = new_user(), new_user()
    assert store.insert(key, b"v1", later(), user=alice) is True
    version = load_live(store, key).version
    assert store.update(key, b"v2", later(), version, user=alice) is True
    listed = user_records(store, alice, key_prefix)
    assert list(listed) == [key]
    assert listed[key].value == b"v2"

    assert store.update(key, b"v3", later(), user=bob) is True  # passed to bob
    assert user_records(store, alice, key_prefix) == {}
    assert list(user_records(store, bob, key_prefix)) == [key]

    assert store.update(key, b"v4", later(), user=None) is True  # logged out
    assert user_records(store, alice, key_prefix) == {}
    assert user_records(store, bob, key_prefix) == {}

    assert store.update(key, b"v5", later(), user=alice) is True  # back to alice
    assert user_records(store, alice, key_prefix)[key].value == b"v5"
    assert user_records(store, bob, key_prefix) == {}


def test_writes_that_fail_do_not_change_the_index(
    store: Store, key_prefix: str, key: str, new_key: Callable[[], str]
) -> None:
    alice, mallory = new_user(), new_user()
    assert store.insert(key, b"alice's", later(), user=alice) is True
    stale = load_live(store, key).version
    assert store.update(key, b"newer", later(), stale, user=alice) is True
    # Refused writes naming another user: the record stays alice's alone.
    assert store.insert(key, b"taken", later(), user=mallory) is False
    if store.supports_versioning:
        assert store.update(key, b"stale", later(), stale, user=mallory) is False
    assert store.update(new_key(), b"absent", later(), user=mallory) is False
    assert user_records(store, mallory, key_prefix) == {}
    assert user_records(store, alice, key_prefix)[key].value == b"newer"


def test_deleted_records_leave_the_index(
    store: Store, key_prefix: str, new_key: Callable[[], str]
) -> None:
    alice, bob = new_user(), new_user()
    keep, gone, stale = new_key(), new_key(), new_key()
    for k in (keep, gone, stale):
        assert store.insert(k, b"v", later(), user=alice) is True
    old = load_live(store, stale).version
    assert store.update(stale, b"w", later(), old, user=alice) is True
    if store.supports_versioning:
        assert store.delete(stale, old) is False  # a refused delete keeps it indexed
    assert store.delete(gone) is True
    assert set(user_records(store, alice, key_prefix)) == {keep, stale}
    # The key taken again, by another user: indexed under that user only.
    assert store.insert(gone, b"bob's", later(), user=bob) is True
    assert set(user_records(store, alice, key_prefix)) == {keep, stale}
    assert list(user_records(store, bob, key_prefix)) == [gone]


def test_expired_records_leave_the_index_before_and_after_cleanup(
    store: Store, key_prefix: str, new_key: Callable[[], str]
) -> None:
    alice = new_user()
    short, live = new_key(), new_key()
    store.load(short)  # connect / create the schema before the clock starts
    expires_at = time.time() + SHORT
    assert store.insert(short, b"short", expires_at, user=alice) is True
    assert store.insert(live, b"live", later(), user=alice) is True
    assert set(user_records(store, alice, key_prefix)) == {short, live}
    wait_until_expired(expires_at)
    assert list(user_records(store, alice, key_prefix)) == [live]
    store.cleanup()
    assert list(user_records(store, alice, key_prefix)) == [live]
    # The expired key, written again by another user, is that user's alone.
    bob = new_user()
    assert store.insert(short, b"bob's", later(), user=bob) is True
    assert list(user_records(store, bob, key_prefix)) == [short]
    assert list(user_records(store, alice, key_prefix)) == [live]


def test_touch_keeps_the_user(store: Store, key_prefix: str, key: str) -> None:
    alice = new_user()
    assert store.insert(key, b"v", later(), user=alice) is True
    far = later(10 * TTL)
    assert store.touch(key, far) is True
    listed = user_records(store, alice, key_prefix)
    assert list(listed) == [key]
    assert listed[key].expires_at == pytest.approx(far, abs=EXPIRY_TOLERANCE)
    assert store.touch(key, time.time() - 10) is True  # ends it
    assert user_records(store, alice, key_prefix) == {}


def test_a_touched_record_stays_indexed_past_its_first_expiry(
    store: Store, key_prefix: str, key: str
) -> None:
    """An index that keeps its own expiry per record (Redis) must follow a
    touch, or the record would drop out of its user's index while still live."""
    alice = new_user()
    store.load(key)  # connect / create the schema before the clock starts
    first = time.time() + SHORT
    assert store.insert(key, b"v", first, user=alice) is True
    assert store.touch(key, later()) is True
    wait_until_expired(first)
    assert list(user_records(store, alice, key_prefix)) == [key]


def test_the_index_lists_only_keys_under_the_prefix(store: Store, key_prefix: str) -> None:
    alice = new_user()
    ours = key_prefix + "a:" + secrets.token_hex(8)
    theirs = key_prefix + "b:" + secrets.token_hex(8)
    for k in (ours, theirs):
        assert store.insert(k, b"v", later(), user=alice) is True
    assert list(user_records(store, alice, key_prefix + "a:")) == [ours]
    assert set(user_records(store, alice, key_prefix)) == {ours, theirs}


USER_FORMS = ["", " ", "42", "042", "Bob", "bob", "bob ", "\u00fcber", "a:b/c*?[x]{y}", "x" * 300]


def test_users_are_told_apart_exactly(
    store: Store, key_prefix: str, new_key: Callable[[], str]
) -> None:
    """No case folding, no trailing-space padding (MySQL collations), no
    truncation of long IDs, no glob or hash-tag meaning of their characters."""
    tag = secrets.token_hex(4)
    keys = {tag + form: new_key() for form in USER_FORMS}
    for user, k in keys.items():
        assert store.insert(k, user.encode(), later(), user=user) is True
    for user, k in keys.items():
        assert list(user_records(store, user, key_prefix)) == [k], repr(user)


def test_parallel_writers_of_one_user_all_stay_indexed(
    store: Store, key_prefix: str, new_key: Callable[[], str]
) -> None:
    """Threads creating and deleting records of the same user at once (a file
    store removes an emptied user directory while others add to it)."""
    if not store.indexes_users:
        pytest.skip(f"{store!r} keeps no index by user")
    alice = new_user()
    store.load(new_key())  # connect / create the schema first
    start = threading.Barrier(THREADS)
    rounds = 15

    def churn() -> str:
        start.wait(timeout=30)
        for _ in range(rounds):
            k = new_key()
            assert store.insert(k, b"churn", later(), user=alice) is True
            assert store.delete(k) is True
        final = new_key()
        assert store.insert(final, b"final", later(), user=alice) is True
        return final

    with switch_often(), ThreadPoolExecutor(THREADS) as pool:
        finals = {f.result(timeout=120) for f in [pool.submit(churn) for _ in range(THREADS)]}

    assert set(user_records(store, alice, key_prefix)) == finals


def test_session_manager_revokes_one_users_sessions_only(store: Store, key_prefix: str) -> None:
    """Through SessionManager on every backend: the index where the store keeps
    one, a scan of every record where not, and a clear refusal (memcached)
    where the store cannot list at all."""
    manager = SessionManager(store, key_prefix=key_prefix)
    alice, bob = new_user(), new_user()
    number = secrets.randbelow(10**9)

    def put(user: str | int | None) -> str:
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        value = envelope.pack(envelope.Envelope(now, now, False, user, "json", b'{"k":"v"}'))
        key = store_key(key_prefix, session_id)
        assert insert_with_user(store, key, value, later(), user_text(user)) is True
        return session_id

    alices = [put(alice), put(alice)]
    others = [put(bob), put(None), put(number)]
    try:
        store.iter_records(key_prefix)
        listable = True
    except NotImplementedError:
        listable = False
    if not listable:
        with pytest.raises(NotImplementedError, match="list"):
            manager.revoke_user(alice)
        with pytest.raises(NotImplementedError, match="list"):
            manager.sessions_of(alice)
        assert all(manager.get(s) is not None for s in alices + others)
        return

    assert sorted(s.key_hash for s in manager.sessions_of(alice)) == sorted(
        manager.key_hash(s) for s in alices
    )
    assert [s.user_id for s in manager.sessions_of(str(number))] == [number]
    assert manager.revoke_user(alice) == 2
    assert all(manager.get(s) is None for s in alices)
    assert all(store.load(store_key(key_prefix, s)) is None for s in alices)
    assert all(manager.get(s) is not None for s in others)
    assert manager.sessions_of(alice) == []
    assert manager.revoke_user(alice) == 0
    assert manager.revoke_user(number) == 1  # an int ID, as its text
    assert [s.user_id for s in manager.sessions_of(bob)] == [bob]
