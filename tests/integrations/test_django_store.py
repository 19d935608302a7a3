"""``SessionStore``, the session engine: Django's ``SessionBase`` contract.

The cases follow ``SessionTestsMixin`` of Django's own test suite
(``tests/sessions_tests/tests.py``), adapted where this engine differs on
purpose (key format, no write for unchanged data), plus what the store adds:
the records themselves, the envelope the core reads, timeouts, signing.
Both stores (memory and the shared Redis, under a random key prefix).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

from wsgi_kvsession import Session, envelope
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.integrations import django as integration
from wsgi_kvsession.integrations.django import SessionStore, get_options, get_store
from wsgi_kvsession.options import Options
from wsgi_kvsession.stores import MemoryStore, StoreError
from wsgi_kvsession.stores.base import Record

from ..support import Clock
from . import django_support
from .django_support import DjangoSite
from .flask_support import Backend

# The fixtures of django_support, in this module.
key_prefix = django_support.key_prefix
site = django_support.site

SECRET = "django-store-signing-key-0123456789"


@pytest.fixture
def session(site: DjangoSite) -> Iterator[SessionStore]:
    session = SessionStore()
    yield session
    session.delete()


def record_of(backend: Backend, session_key: str) -> Record | None:
    session_id = get_options().ids.decode(session_key)
    assert session_id is not None
    return backend.inner.load(store_key(backend.key_prefix, session_id))


def stored(backend: Backend, session_key: str) -> envelope.Envelope:
    record = record_of(backend, session_key)
    assert record is not None
    return envelope.unpack(record.value)


# ==================================================== SessionTestsMixin


def test_new_session(session: SessionStore) -> None:
    assert session.modified is False
    assert session.accessed is False


def test_get_empty(session: SessionStore) -> None:
    assert session.get("cat") is None


def test_store(session: SessionStore) -> None:
    session["cat"] = "dog"
    assert session.modified is True
    assert session.pop("cat") == "dog"


def test_pop(session: SessionStore) -> None:
    session["some key"] = "exists"
    session.accessed = False
    session.modified = False
    assert session.pop("some key") == "exists"
    assert session.accessed is True
    assert session.modified is True
    assert session.get("some key") is None


def test_pop_default(session: SessionStore) -> None:
    assert session.pop("some key", "does not exist") == "does not exist"
    assert session.accessed is True
    assert session.modified is False


def test_pop_no_default_keyerror_raised(session: SessionStore) -> None:
    with pytest.raises(KeyError):
        session.pop("some key")


def test_setdefault_and_update(session: SessionStore) -> None:
    assert session.setdefault("foo", "bar") == "bar"
    assert session.setdefault("foo", "baz") == "bar"
    assert session.modified is True
    session.modified = False
    session.update({"update key": 1})
    assert session.modified is True
    assert session.get("update key") == 1


def test_contains_and_views_access_without_modifying(session: SessionStore) -> None:
    session["x"] = 1
    session.modified = False
    session.accessed = False
    assert "x" in session
    assert list(session.keys()) == ["x"]
    assert list(session.values()) == [1]
    assert list(session.items()) == [("x", 1)]
    assert session.accessed is True
    assert session.modified is False


def test_clear(session: SessionStore) -> None:
    session["x"] = 1
    session.modified = False
    session.accessed = False
    session.clear()
    assert list(session.items()) == []
    assert session.accessed is True
    assert session.modified is True


def test_save_and_load(session: SessionStore, backend: Backend) -> None:
    session["a"] = "b"
    session.save()
    assert session["a"] == "b"  # saving does not clear the data
    assert session.exists(session.session_key)
    backend.store.reset()

    again = SessionStore(session.session_key)
    assert again["a"] == "b"
    assert backend.store.methods() == ["load"]


def test_save_of_a_new_session_is_one_insert(session: SessionStore, backend: Backend) -> None:
    session["a"] = 1
    session.save()
    assert backend.store.methods() == ["insert"]  # no exists() round trip for the key


def test_delete(session: SessionStore) -> None:
    session.save()
    session.delete(session.session_key)
    assert not session.exists(session.session_key)


def test_flush(session: SessionStore, backend: Backend) -> None:
    session["foo"] = "bar"
    session.save()
    prev_key = session.session_key
    session.flush()
    assert not session.exists(prev_key)
    assert session.session_key != prev_key
    assert session.session_key is None
    assert session.modified is True
    assert session.accessed is True
    assert backend.records() == {}


def test_cycle_keeps_the_data_and_deletes_the_old_record(
    session: SessionStore, backend: Backend
) -> None:
    session["a"], session["b"] = "c", "d"
    session.save()
    prev_key = session.session_key
    prev_data = list(session.items())
    created = stored(backend, prev_key).created
    backend.store.reset()

    session.cycle_key()
    assert backend.store.methods() == ["delete"]  # the old record, at once
    assert session.session_key != prev_key
    assert list(session.items()) == prev_data
    assert not session.exists(prev_key)

    backend.store.reset()
    session.save()
    assert backend.store.methods() == ["insert"]  # one write for the new key
    assert SessionStore(session.session_key)["a"] == "c"
    # Logging in must not extend the absolute timeout.
    assert stored(backend, session.session_key).created == created
    assert len(backend.records()) == 1


def test_cycle_with_no_session_cache(session: SessionStore) -> None:
    session["a"], session["b"] = "c", "d"
    session.save()
    prev_data = list(session.items())
    session = SessionStore(session.session_key)
    assert not hasattr(session, "_session_cache")
    session.cycle_key()
    assert list(session.items()) == prev_data
    session.save()


def test_must_create_on_an_existing_key_raises_create_error(session: SessionStore) -> None:
    session["a"] = 1
    session.save()
    other = SessionStore(session.session_key)
    other["b"] = 2
    with pytest.raises(CreateError):
        other.save(must_create=True)
    assert SessionStore(session.session_key).get("b") is None  # nothing overwritten


def test_invalid_key_gives_an_empty_session_and_a_new_key(
    site: DjangoSite, backend: Backend
) -> None:
    for bad in ["1", "someunknownkey", "a" * 21, "a" * 129, "bad/../key" * 3, "é" * 30, ""]:
        session = SessionStore(bad)
        assert session.session_key is None  # refused before any store call
        assert session.get("cat") is None
        session["cat"] = "dog"
        session.save()
        assert session.session_key not in (None, bad)
        session.delete()
    assert [m for m in backend.store.methods() if m == "load"] == []


def test_unknown_key_is_not_adopted(site: DjangoSite, backend: Backend) -> None:
    unknown = get_options().ids.new_id()  # a well-formed ID nobody stored
    session = SessionStore(unknown)
    assert session.session_key == unknown
    assert session.load() == {}
    assert session.session_key is None
    assert not session.exists(unknown)
    session["x"] = 1
    session.save()
    assert session.session_key != unknown
    assert record_of(backend, unknown) is None


def test_session_key_is_read_only(session: SessionStore) -> None:
    with pytest.raises(AttributeError):
        session.session_key = session._get_new_session_key()  # type: ignore[misc]


def test_new_keys_are_core_ids(session: SessionStore) -> None:
    keys = {session._get_new_session_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(key) == 43  # 256 bits, base64url
        assert get_options().ids.decode(key) == key


# -- expiry ---------------------------------------------------------------


def test_default_expiry(session: SessionStore) -> None:
    from django.conf import settings

    assert session.get_expiry_age() == settings.SESSION_COOKIE_AGE
    session.set_expiry(0)  # expires at browser close, still the age on the server
    assert session.get_expiry_age() == settings.SESSION_COOKIE_AGE


def test_custom_expiry_seconds_timedelta_datetime(
    session: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    modification = timezone.now()
    session.set_expiry(10)
    assert session.get_expiry_date(modification=modification) == modification + datetime.timedelta(
        seconds=10
    )
    assert session.get_expiry_age(modification=modification) == 10

    monkeypatch.setattr(timezone, "now", lambda: modification)
    session.set_expiry(datetime.timedelta(seconds=20))
    assert session.get_expiry_age(modification=modification) == 20

    session.set_expiry(modification + datetime.timedelta(seconds=30))
    assert session.get_expiry_age(modification=modification) == 30


def test_custom_expiry_reset(session: SessionStore) -> None:
    from django.conf import settings

    session.set_expiry(None)
    session.set_expiry(10)
    session.set_expiry(None)
    assert session.get_expiry_age() == settings.SESSION_COOKIE_AGE


def test_get_expire_at_browser_close(session: SessionStore) -> None:
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=False):
        session.set_expiry(10)
        assert session.get_expire_at_browser_close() is False
        session.set_expiry(0)
        assert session.get_expire_at_browser_close() is True
        session.set_expiry(None)
        assert session.get_expire_at_browser_close() is False
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True):
        session.set_expiry(10)
        assert session.get_expire_at_browser_close() is False
        session.set_expiry(None)
        assert session.get_expire_at_browser_close() is True


def test_cookie_age_follows_session_cookie_age_and_idle_timeout(site: DjangoSite) -> None:
    with override_settings(SESSION_COOKIE_AGE=600):
        assert SessionStore().get_expiry_age() == 600
        site.options(idle_timeout=300)  # an explicit option wins
        assert SessionStore().get_expiry_age() == 300


@pytest.mark.parametrize("expiry", [-datetime.timedelta(seconds=10), -10])
def test_expiry_in_the_past_ends_the_session(
    site: DjangoSite, backend: Backend, expiry: Any
) -> None:
    session = SessionStore()
    session["foo"] = "bar"
    session.set_expiry(expiry)
    session.save()
    old_key = session.session_key
    assert "foo" not in SessionStore(old_key)
    assert backend.records() == {}
    # And for a stored session: the save ends it.
    stored_session = SessionStore()
    stored_session["foo"] = "bar"
    stored_session.save()
    reread = SessionStore(stored_session.session_key)
    reread.set_expiry(expiry)
    reread.save()
    assert backend.records() == {}


def test_record_expiry_follows_set_expiry(site: DjangoSite, backend: Backend) -> None:
    session = SessionStore()
    session["a"] = 1
    session.set_expiry(300)
    before = time.time()
    session.save()
    record = record_of(backend, session.session_key)
    assert record is not None
    assert before + 300 - 1 <= record.expires_at <= time.time() + 300 + 1

    end = timezone.now() + datetime.timedelta(seconds=120)
    session.set_expiry(end)
    session.save()
    record = record_of(backend, session.session_key)
    assert record is not None
    assert record.expires_at == pytest.approx(end.timestamp(), abs=1)

    session.set_expiry(None)  # back to the idle timeout (SESSION_COOKIE_AGE)
    session.save()
    record = record_of(backend, session.session_key)
    assert record is not None
    assert record.expires_at > time.time() + 13 * 86400
    session.delete()


def test_idle_timeout_is_enforced_and_reading_slides_it(
    site: DjangoSite, backend: Backend, clock: Clock
) -> None:
    site.options(idle_timeout=100)
    session = SessionStore()
    session["a"] = 1
    session.save()
    key = session.session_key

    clock.advance(60)
    backend.store.reset()
    assert SessionStore(key)["a"] == 1
    assert backend.store.methods() == ["load", "touch"]  # the deadline slid by 60 s

    clock.advance(60)  # 120 s after creation, 60 s after the last read
    assert SessionStore(key).get("a") == 1
    clock.advance(101)
    reread = SessionStore(key)
    assert reread.get("a") is None
    assert reread.session_key is None


def test_absolute_timeout_is_enforced(site: DjangoSite, backend: Backend, clock: Clock) -> None:
    site.options(idle_timeout=100, absolute_timeout=250)
    session = SessionStore()
    session["a"] = 1
    session.save()
    key = session.session_key
    for _ in range(4):
        clock.advance(60)
        assert SessionStore(key).get("a") == 1  # active: the idle timeout slides
    clock.advance(20)  # 260 s after creation
    assert SessionStore(key).get("a") is None


def test_absolute_timeout_of_the_settings_applies_to_records_written_under_others(
    site: DjangoSite, clock: Clock
) -> None:
    # Written by an app with a longer absolute timeout (another framework, an
    # older configuration): the record lives on, the settings still end it.
    site.options(idle_timeout=1000, absolute_timeout=10_000)
    session = SessionStore()
    session["a"] = 1
    session.save()
    site.options(idle_timeout=1000, absolute_timeout=250)
    clock.advance(200)
    assert SessionStore(session.session_key).get("a") == 1
    clock.advance(60)
    assert SessionStore(session.session_key).get("a") is None


# -- writes -----------------------------------------------------------------


def test_save_of_unchanged_data_only_touches(site: DjangoSite, backend: Backend) -> None:
    session = SessionStore()
    session["a"] = "1"
    session.save()
    session = SessionStore(session.session_key)
    session["a"] = "1"  # an equal value
    assert session.modified is True  # Django's flag, as Django's backends set it
    backend.store.reset()
    session.save()
    assert backend.store.methods() == ["touch"]


def test_nested_mutation_is_modified_and_saved(site: DjangoSite) -> None:
    session = SessionStore()
    session["cart"] = []
    session.save()
    session = SessionStore(session.session_key)
    session["cart"].append("apple")
    assert session.modified is True  # no setter ran, the bytes differ
    session.save()
    assert SessionStore(session.session_key)["cart"] == ["apple"]


def test_save_after_the_record_vanished_raises_update_error(
    site: DjangoSite, backend: Backend
) -> None:
    s1 = SessionStore()
    s1["test_data"] = "value1"
    s1.save(must_create=True)
    s2 = SessionStore(s1.session_key)
    s2.delete()
    s1["test_data"] = "value2"
    with pytest.raises(UpdateError):
        s1.save()
    assert s1.load() == {}
    assert backend.records() == {}  # not brought back


def test_save_after_a_loaded_record_vanished_raises_update_error(
    site: DjangoSite, backend: Backend
) -> None:
    first = SessionStore()
    first["a"] = 1
    first.save()
    loaded = SessionStore(first.session_key)
    assert loaded["a"] == 1
    SessionStore(first.session_key).delete()  # another request logs out
    loaded["a"] = 2
    with pytest.raises(UpdateError):
        loaded.save()
    assert backend.records() == {}
    # An unchanged session that vanished says so too (Django's backends do).
    unchanged = SessionStore()
    unchanged["b"] = 1
    unchanged.save()
    again = SessionStore(unchanged.session_key)
    assert again["b"] == 1
    unchanged.delete()
    again["b"] = 1
    with pytest.raises(UpdateError):
        again.save()


def test_parallel_saves_of_different_keys_are_merged(site: DjangoSite, backend: Backend) -> None:
    base = SessionStore()
    base.update({"a": 0, "b": 0, "gone": 1})
    base.save()
    one = SessionStore(base.session_key)
    two = SessionStore(base.session_key)
    assert one["a"] == two["a"] == 0
    one["a"] = 1
    del one["gone"]
    one.save()
    two["b"] = 2  # two loaded before one saved
    backend.store.reset()
    two.save()
    if backend.inner.supports_versioning:
        # Compare-and-set refused, re-read, merged, written.
        assert backend.store.methods() == ["update", "load", "update"]
    assert sorted(SessionStore(base.session_key).items()) == [("a", 1), ("b", 2)]


def test_a_second_save_in_one_request_merges_a_parallel_change(
    site: DjangoSite, backend: Backend
) -> None:
    """A view saves the session itself (to learn its key, before a long
    task), changes more, and Django's middleware saves again: the second save
    must not overwrite what a parallel request wrote in between."""
    base = SessionStore()
    base.update({"a": 0, "b": 0, "gone": 1})
    base.save()
    one = SessionStore(base.session_key)
    two = SessionStore(base.session_key)
    one["a"] = 1
    one.save()  # the view's save()
    two["b"] = 2  # a parallel request
    del two["gone"]
    two.save()
    one["c"] = 3
    one.save()  # the middleware's save()
    assert sorted(SessionStore(base.session_key).items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert sorted(one.items()) == [("a", 1), ("b", 2), ("c", 3)]  # the merged data
    one["a"] = 4  # and a third save merges from there
    one.save()
    assert sorted(SessionStore(base.session_key).items()) == [("a", 4), ("b", 2), ("c", 3)]


def test_a_second_save_with_no_parallel_change_is_a_compare_and_set(
    site: DjangoSite, backend: Backend
) -> None:
    session = SessionStore()
    session["a"] = 0
    session.save()
    session = SessionStore(session.session_key)
    session["a"] = 1
    session.save()
    session["b"] = 2
    backend.store.reset()
    session.save()
    # The record is read for its version (the store does not return it on a
    # write), found to be this request's, and updated with that version.
    assert backend.store.methods() == ["load", "update"]
    assert sorted(SessionStore(session.session_key).items()) == [("a", 1), ("b", 2)]


def test_a_second_save_racing_a_parallel_write_merges(
    site: DjangoSite, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another request writes between the second save's read and its update:
    the update carries the version it read, so it is refused and merged."""
    assert backend.inner.supports_versioning
    session = SessionStore()
    session.update({"a": 0, "b": 0})
    session.save()
    key = session.session_key
    session = SessionStore(key)
    session["a"] = 1
    session.save()
    session["c"] = 3
    load = backend.store.load
    raced: list[bool] = []

    def load_then_race(store_key: str) -> Record | None:
        record = load(store_key)
        if not raced:
            raced.append(True)
            parallel = SessionStore(key)
            parallel["b"] = 2
            parallel.save()
        return record

    monkeypatch.setattr(backend.store, "load", load_then_race)
    session.save()
    monkeypatch.undo()
    assert raced
    assert sorted(SessionStore(key).items()) == [("a", 1), ("b", 2), ("c", 3)]


def test_a_second_save_after_the_record_vanished_raises_update_error(
    site: DjangoSite, backend: Backend
) -> None:
    session = SessionStore()
    session["a"] = 0
    session.save()
    session["a"] = 1
    session.save()
    SessionStore(session.session_key).delete()  # logged out elsewhere
    session["b"] = 2
    with pytest.raises(UpdateError):
        session.save()
    assert backend.records() == {}  # not brought back


def test_auth_user_id_ties_the_record_to_the_user(site: DjangoSite, backend: Backend) -> None:
    session = SessionStore()
    session["_auth_user_id"] = "42"
    session.save()
    assert stored(backend, session.session_key).user_id == "42"
    del session["_auth_user_id"]
    session["other"] = 1
    session.save()
    assert stored(backend, session.session_key).user_id is None


def test_clear_expired_removes_expired_records(site: DjangoSite, clock: Clock) -> None:
    memory = MemoryStore()
    site.settings(WSGI_KVSESSION_STORE=memory)
    session = SessionStore()
    session["a"] = 1
    session.set_expiry(10)
    session.save()
    keep = SessionStore()
    keep["b"] = 1
    keep.save()
    clock.advance(20)
    assert len(memory._records) == 2  # the expired one is still held
    SessionStore.clear_expired()
    assert len(memory._records) == 1
    assert SessionStore(keep.session_key)["b"] == 1


def test_clearsessions_command(site: DjangoSite, backend: Backend, clock: Clock) -> None:
    from django.core.management import call_command

    if backend.name == "redis":
        call_command("clearsessions")  # Redis expires keys itself: a no-op that works
        return
    session = SessionStore()
    session["a"] = 1
    session.set_expiry(10)
    session.save()
    clock.advance(20)
    call_command("clearsessions")
    assert backend.records() == {}


# ============================================== records the core reads


def test_a_record_written_by_the_engine_is_read_by_the_core(
    site: DjangoSite, backend: Backend
) -> None:
    value = {"when": datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc), "n": (1, 2)}
    session = SessionStore()
    session.update(value)
    session["_auth_user_id"] = "7"
    session.save()
    head = stored(backend, session.session_key)
    assert head.serializer == "json"  # our tagged JSON, not Django's signing format
    assert head.permanent is True  # Django's default: a cookie with a Max-Age

    options = get_options()
    environ = {"HTTP_COOKIE": f"{options.cookie_name}={session.session_key}"}
    core = Session(backend.store, options, environ)
    assert core["when"] == value["when"]
    assert core["n"] == (1, 2)
    assert core.user_id == "7"
    assert core.id == session.session_key


def test_a_record_written_by_the_core_is_read_by_the_engine(
    site: DjangoSite, backend: Backend
) -> None:
    options = get_options()
    core = Session(backend.store, options, {})
    core["greeting"] = "hello"
    core["ids"] = {1, 2}
    set_cookie, _ = core._commit(200)
    assert set_cookie is not None
    cookie_value = set_cookie.split(";")[0].partition("=")[2]
    session = SessionStore(cookie_value)
    assert session["greeting"] == "hello"
    assert session["ids"] == {1, 2}
    session["from_django"] = True
    session.save()
    reread = Session(
        backend.store, options, {"HTTP_COOKIE": f"{options.cookie_name}={cookie_value}"}
    )
    assert reread["from_django"] is True


def test_foreign_or_damaged_records_are_no_session(site: DjangoSite, backend: Backend) -> None:
    for value in [b"", b"not a record", b"KVS\x01" + b"\x00" * 3, b'{"a": 1}']:
        session_id = get_options().ids.new_id()
        backend.inner.insert(store_key(backend.key_prefix, session_id), value, time.time() + 60)
        session = SessionStore(session_id)
        assert session.load() == {}
        assert session.session_key is None


# ================================================================ signing


def test_signed_keys(site: DjangoSite, backend: Backend) -> None:
    site.options(secret_key=SECRET)
    session = SessionStore()
    session["a"] = 1
    session.save()
    key = session.session_key
    session_id, dot, signature = key.partition(".")
    assert dot
    assert signature
    assert SessionStore(key)["a"] == 1
    # The ID without its signature, or with another one, is no key.
    assert SessionStore(session_id).session_key is None
    assert SessionStore(f"{session_id}.{'A' * len(signature)}").session_key is None
    # The record is under the ID, as the middleware stores it.
    assert record_of(backend, key) is not None


def test_a_key_signed_with_a_fallback_is_signed_again(site: DjangoSite) -> None:
    old = "old-signing-key-0123456789abcdef"
    site.options(secret_key=old)
    session = SessionStore()
    session["a"] = 1
    session.save()
    old_key = session.session_key

    site.options(secret_key=[SECRET, old])
    reread = SessionStore(old_key)
    assert reread["a"] == 1
    assert reread.session_key != old_key
    assert reread.session_key.split(".")[0] == old_key.split(".")[0]
    assert reread.modified is True  # so Django's middleware sends the new cookie
    reread.save()
    assert SessionStore(reread.session_key)["a"] == 1


# ======================================================= configuration


def test_store_is_built_once_per_url(site: DjangoSite) -> None:
    site.settings(WSGI_KVSESSION_STORE=None, WSGI_KVSESSION_STORE_URL="memory://")
    first = get_store()
    assert get_store() is first
    session = SessionStore()
    session["a"] = 1
    session.save()
    assert SessionStore(session.session_key)["a"] == 1  # the same MemoryStore


def test_store_is_built_once_by_concurrent_first_requests(
    site: DjangoSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    site.settings(WSGI_KVSESSION_STORE=None, WSGI_KVSESSION_STORE_URL="memory://")
    monkeypatch.setattr(integration, "_stores", {})
    built: list[MemoryStore] = []

    def slow_build(url: str) -> MemoryStore:
        time.sleep(0.05)  # widen the window in which threads would race
        built.append(MemoryStore())
        return built[-1]

    monkeypatch.setattr(integration, "store_from_url", slow_build)
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(get_store())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(built) == 1
    assert len(seen) == 8
    assert all(store is built[0] for store in seen)


def test_default_store_url(site: DjangoSite, monkeypatch: pytest.MonkeyPatch) -> None:
    site.settings(WSGI_KVSESSION_STORE=None)
    from django.conf import settings

    del settings.WSGI_KVSESSION_STORE_URL
    built: list[str] = []
    monkeypatch.setattr(
        integration, "store_from_url", lambda url: built.append(url) or MemoryStore()
    )
    monkeypatch.setattr(integration, "_stores", {})
    get_store()
    assert built == [integration.DEFAULT_STORE_URL] == ["sqlite:///sessions.db"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"WSGI_KVSESSION_STORE": None, "WSGI_KVSESSION_STORE_URL": "nope://x"}, "STORE_URL"),
        ({"WSGI_KVSESSION_STORE": None, "WSGI_KVSESSION_STORE_URL": 42}, "must be a str"),
        ({"WSGI_KVSESSION_STORE": "redis://"}, "WSGI_KVSESSION_STORE="),
        ({"WSGI_KVSESSION_OPTIONS": ["key_prefix"]}, "must be a dict"),
        ({"WSGI_KVSESSION_OPTIONS": {"idle_timout": 5}}, "did you mean 'idle_timeout'"),
        (
            {"SESSION_COOKIE_SAMESITE": "None", "SESSION_COOKIE_SECURE": False},
            "settings.SESSION_COOKIE_SAMESITE",
        ),
        ({"WSGI_KVSESSION_OPTIONS": {"secret_key": "short"}}, "WSGI_KVSESSION_OPTIONS"),
    ],
)
def test_bad_configuration_is_a_clear_error(
    site: DjangoSite, settings: dict[str, Any], message: str
) -> None:
    site.settings(**settings)
    with pytest.raises(ImproperlyConfigured, match=message):
        SessionStore()


def test_settings_become_options(site: DjangoSite) -> None:
    assert get_options().permanent_by_default is True  # Django's lasting cookies
    site.settings(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_PATH="/app",
        SESSION_COOKIE_DOMAIN="example.com",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=False,
        SESSION_COOKIE_SAMESITE=False,
        SESSION_COOKIE_AGE=3600,
        SESSION_SAVE_EVERY_REQUEST=True,
        SESSION_EXPIRE_AT_BROWSER_CLOSE=True,
    )
    options = get_options()
    assert isinstance(options, Options)
    assert (options.cookie_name, options.cookie_path, options.cookie_domain) == (
        "sid",
        "/app",
        "example.com",
    )
    assert options.cookie_secure is True
    assert options.cookie_httponly is False
    assert options.cookie_samesite is None
    assert options.idle_timeout == 3600
    assert options.absolute_timeout == 30 * 86400
    assert options.cookie_refresh == "every_request"
    assert options.permanent_by_default is False
    assert options.key_prefix.startswith("test-django-")
    assert get_options() is options  # built once per configuration


def test_store_errors_raise_by_default_and_can_continue_empty(
    site: DjangoSite, caplog: pytest.LogCaptureFixture
) -> None:
    class DownStore(MemoryStore):
        def load(self, key: str) -> Record | None:
            raise StoreError("DownStore: connection refused")

    good = SessionStore()
    good["a"] = 1
    good.save()
    down = DownStore()
    site.settings(WSGI_KVSESSION_STORE=down)
    with pytest.raises(StoreError):
        SessionStore(good.session_key).get("a")

    site.options(on_store_error="empty")
    with caplog.at_level(logging.ERROR, "wsgi_kvsession"):
        session = SessionStore(good.session_key)
        assert session.get("a") is None
    assert session.session_key == good.session_key  # the cookie stays as it is
    session["b"] = 2
    session.save()  # nothing is saved over the user's real session
    assert down._records == {}
    assert "continuing with an empty session" in caplog.text


def test_a_store_failure_on_read_never_lets_the_save_replace_the_session(
    site: DjangoSite,
) -> None:
    class FlakyStore(MemoryStore):
        failing = False

        def load(self, key: str) -> Record | None:
            if self.failing:
                raise StoreError("FlakyStore: timed out")
            return super().load(key)

    flaky = FlakyStore()
    site.settings(WSGI_KVSESSION_STORE=flaky)
    site.options(on_store_error="empty")
    good = SessionStore()
    good["a"] = 1
    good.save()

    flaky.failing = True
    session = SessionStore(good.session_key)
    assert session.get("a") is None  # read failed: an empty stand-in
    flaky.failing = False  # the store is back before the response is saved
    session["b"] = 2
    session.save()
    assert dict(SessionStore(good.session_key).items()) == {"a": 1}


def test_clear_then_save_keeps_the_creation_time(
    site: DjangoSite, backend: Backend, clock: Clock
) -> None:
    session = SessionStore()
    session["a"] = 1
    session.save()
    created = stored(backend, session.session_key).created
    clock.advance(100)
    again = SessionStore(session.session_key)
    again.clear()  # never loaded: Django replaces the data without reading it
    again["b"] = 2
    again.save()
    assert stored(backend, session.session_key).created == created  # absolute timeout kept
    assert dict(SessionStore(session.session_key).items()) == {"b": 2}


def test_revoke_user_finds_django_sessions(site: DjangoSite, backend: Backend) -> None:
    from wsgi_kvsession.admin import SessionManager

    options = get_options()
    manager = SessionManager(
        backend.store.inner, key_prefix=options.key_prefix, serializer=options.serializer
    )
    session = SessionStore()
    session["_auth_user_id"] = "42"
    session.save()
    session["x"] = 1
    session.save()
    other = SessionStore()
    other["_auth_user_id"] = "43"
    other.save()
    assert [s.user_id for s in manager.sessions_of("42")] == ["42"]
    assert manager.revoke_user("42") == 1
    assert record_of(backend, session.session_key) is None
    assert record_of(backend, other.session_key) is not None
