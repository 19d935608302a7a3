"""What Flask-KVSession 0.6 users rely on, from the checklist of its test
suite (``/work/shared/research/anchors-flask.md`` section 1.5): the
extension object, ``app.kvsession_store``, ``cleanup_sessions``, simplekv
stores passed as they are, ``KVSession``, ``regenerate``/``destroy``, no
writes for untouched sessions, issue #27 and an int lifetime (which crashed
0.6.2)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, session

from wsgi_kvsession.ids import store_key
from wsgi_kvsession.integrations.flask import (
    KVSession,
    KVSessionExtension,
    KVSessionInterface,
    cleanup_sessions,
)
from wsgi_kvsession.stores import MemoryStore
from wsgi_kvsession.stores.simplekv import SimpleKVStore

from ..stores.backend_redis import REDIS_URL, redis_store
from ..support import Clock, CountingStore
from .conftest import purge_redis
from .flask_support import SECRET, Backend, DriverFactory, add_routes, reply

DEFAULT_PREFIX = "session:"


def _app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    app.config.update(config)
    add_routes(app)

    @app.route("/is-new")
    def is_new() -> str:
        return repr(session.new)

    @app.route("/kind")
    def kind() -> str:
        current = session._get_current_object()  # type: ignore[attr-defined]
        return repr(isinstance(current, KVSession))

    @app.route("/sid")
    def sid() -> str:
        return repr(session.sid_s)  # type: ignore[attr-defined]

    return app


def _live(backend: Backend) -> set[str]:
    """The store keys any request touched that still hold a live record (the
    extension uses the default prefix, shared with others on Redis, so the
    store is not listed)."""
    return {key for _, key in backend.store.calls if backend.inner.load(key) is not None}


def _key_of(cookie_value: str) -> str:
    return store_key(DEFAULT_PREFIX, cookie_value.partition(".")[0])


# ====================================================== the extension


def test_extension_with_store_and_app(backend: Backend) -> None:
    app = _app()
    KVSessionExtension(backend.store, app)
    assert app.kvsession_store is backend.store  # type: ignore[attr-defined]
    assert isinstance(app.session_interface, KVSessionInterface)
    client = app.test_client()
    assert client.get("/kind").text == "True"
    value = reply(client.get("/set?a=1")).cookie().value
    assert client.get("/get?k=a").text == "'1'"
    assert _live(backend) == {_key_of(value)}


@pytest.mark.usefixtures("backend")
def test_extension_without_a_store_raises() -> None:
    with pytest.raises(ValueError, match="Must supply session_kvstore"):
        KVSessionExtension().init_app(_app())
    with pytest.raises(ValueError, match="Must supply session_kvstore"):
        KVSessionExtension(app=_app())


def test_delayed_init_app_sets_kvsession_store(backend: Backend) -> None:
    app = _app()
    ext = KVSessionExtension()
    ext.init_app(app, backend.store)
    assert app.kvsession_store is backend.store  # type: ignore[attr-defined]
    client = app.test_client()
    client.get("/set?a=1")
    assert client.get("/get?k=a").text == "'1'"


def test_one_extension_serves_several_apps(backend: Backend) -> None:
    ext = KVSessionExtension(backend.store)
    first, second = _app(), _app()
    other = CountingStore(MemoryStore())
    ext.init_app(first)
    ext.init_app(second, other)
    assert first.kvsession_store is backend.store  # type: ignore[attr-defined]
    assert second.kvsession_store is other  # type: ignore[attr-defined]
    first.test_client().get("/set?a=1")
    assert backend.store.methods() == ["insert"]
    assert other.methods() == []
    second.test_client().get("/set?a=1")
    assert backend.store.methods() == ["insert"]
    assert other.methods() == ["insert"]


def test_cleanup_sessions_removes_expired_sessions(backend: Backend, clock: Clock) -> None:
    app = _app(PERMANENT_SESSION_LIFETIME=600)
    ext = KVSessionExtension(backend.store, app)
    old_clients = [app.test_client() for _ in range(3)]
    for client in old_clients:
        client.get("/set?a=old")
    assert len(_live(backend)) == 3
    clock.advance(601)
    fresh = app.test_client()
    fresh_key = _key_of(reply(fresh.get("/set?a=new")).cookie().value)

    removed = ext.cleanup_sessions(app)
    # MemoryStore removes them; Redis has expired them itself (and says 0).
    assert removed == (3 if backend.name == "memory" else 0)
    assert _live(backend) == {fresh_key}
    assert fresh.get("/get?k=a").text == "'new'"
    for client in old_clients:
        assert client.get("/is-new").text == "True"
        assert client.get("/dump").text == "[]"

    # The module function, for the current app.
    clock.advance(601)
    with app.app_context():
        assert cleanup_sessions() == (1 if backend.name == "memory" else 0)
    assert _live(backend) == set()


@pytest.mark.usefixtures("backend")
def test_cleanup_sessions_of_an_app_without_kvsession_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="not served by wsgi_kvsession"):
        cleanup_sessions(Flask(__name__))


# ====================================================== session behaviour


def test_session_is_new_until_stored(backend: Backend) -> None:
    app = _app()
    KVSessionExtension(backend.store, app)
    client = app.test_client()
    assert client.get("/is-new").text == "True"
    assert client.get("/is-new").text == "True"  # reading does not store it
    client.get("/set?a=1")
    assert client.get("/is-new").text == "False"


def test_regenerate_keeps_one_record_under_a_new_key(backend: Backend) -> None:
    app = _app()
    KVSessionExtension(backend.store, app)
    client = app.test_client()
    client.get("/set?a=1")
    (before,) = _live(backend)
    old_sid = client.get("/sid").text
    client.get("/regenerate")
    (after,) = _live(backend)
    assert after != before
    assert client.get("/sid").text != old_sid
    assert client.get("/get?k=a").text == "'1'"


def test_destroy_leaves_no_record(backend: Backend) -> None:
    app = _app()
    KVSessionExtension(backend.store, app)
    client = app.test_client()
    client.get("/set?a=1")
    assert len(_live(backend)) == 1
    assert reply(client.get("/destroy")).cookie().deletes  # the cookie goes too (issue #13)
    assert _live(backend) == set()
    assert client.get("/sid").text == "None"


def test_untouched_requests_write_nothing(backend: Backend) -> None:
    app = _app()
    KVSessionExtension(backend.store, app)
    client = app.test_client()
    for path in ["/nothing", "/nothing", "/get?k=a", "/is-new", "/dump"]:
        assert reply(client.get(path)).cookies() == []
    assert not {"insert", "update", "delete", "touch"} & set(backend.store.methods())
    assert _live(backend) == set()


def test_issue_27_unmodified_responses_keep_the_client_cookie(
    backend: Backend, drive: DriverFactory
) -> None:
    app = _app()
    KVSessionExtension(backend.store, app)
    client = drive(app)
    client.get("/set?a=1")
    cookie = client.cookie()
    assert cookie is not None
    for path in ["/nothing", "/get?k=a", "/dump", "/nothing"]:
        assert client.get(path).cookies() == []
        assert client.cookie() == cookie
    assert client.get("/get?k=a").text == "'1'"


@pytest.mark.parametrize("lifetime", [3600, 1], ids=["hour", "one-second"])
def test_int_permanent_session_lifetime(backend: Backend, clock: Clock, lifetime: int) -> None:
    app = _app(PERMANENT_SESSION_LIFETIME=lifetime)
    KVSessionExtension(backend.store, app)
    client = app.test_client()
    assert reply(client.get("/permanent")).cookie().max_age == lifetime
    read = client.get("/get?k=p")  # 0.6.2 answered 500 here (datetime + int)
    assert read.status_code == 200
    assert read.text == "'1'"
    clock.advance(lifetime + 1)
    assert client.get("/get?k=p").text == "None"
    assert client.get("/is-new").text == "True"


# =============================================== simplekv stores as they are


@pytest.fixture(params=["simplekv-dict", "minimalkv-dict", "simplekv-redis"])
def kvstore(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A simplekv/minimalkv store as Flask-KVSession users configured them; on
    the shared Redis namespaced with simplekv's PrefixDecorator."""
    if request.param == "simplekv-dict":
        from simplekv.memory import DictStore

        yield DictStore()
    elif request.param == "minimalkv-dict":
        from minimalkv.memory import DictStore as MinimalDictStore

        yield MinimalDictStore()
    else:
        import redis
        from simplekv.decorator import PrefixDecorator
        from simplekv.memory.redisstore import RedisStore as SimpleRedisStore

        redis_store(REDIS_URL)  # skip (or fail under CI) without a Redis
        prefix = f"test-flask-{secrets.token_hex(6)}."
        client = redis.Redis.from_url(REDIS_URL)
        try:
            yield PrefixDecorator(prefix, SimpleRedisStore(client))
        finally:
            client.close()
            purge_redis(prefix)


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_simplekv_store_passed_directly(kvstore: Any, clock: Clock) -> None:
    app = _app(PERMANENT_SESSION_LIFETIME=600)
    ext = KVSessionExtension(kvstore, app)
    wrapped = app.kvsession_store  # type: ignore[attr-defined]
    assert isinstance(wrapped, SimpleKVStore)
    assert wrapped.kvstore is kvstore

    client = app.test_client()
    assert client.get("/kind").text == "True"
    client.get("/set?a=1")
    assert client.get("/get?k=a").text == "'1'"
    keys = list(kvstore.keys())
    assert len(keys) == 1
    client.get("/regenerate")
    (renamed,) = kvstore.keys()
    assert renamed != keys[0]
    assert client.get("/get?k=a").text == "'1'"
    client.get("/destroy")
    assert list(kvstore.keys()) == []

    # Expiry without any TTL support in the store: the record says when.
    client.get("/set?a=2")
    clock.advance(601)
    assert client.get("/is-new").text == "True"
    removed = ext.cleanup_sessions(app)
    if wrapped.ttl_support:
        assert removed == 0  # the backend reaps them itself
    else:
        assert removed == 1
        assert list(kvstore.keys()) == []
