"""How ``app.config`` and the wiring (``init_app``, the two-liner,
``KVSessionInterface(store)``) configure the Flask sessions, and the
``flask kvsession`` commands."""

from __future__ import annotations

import datetime
import logging
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request, session
from flask.config import Config
from werkzeug.middleware.proxy_fix import ProxyFix

from wsgi_kvsession import KVSessionMiddleware
from wsgi_kvsession.ids import IdCodec
from wsgi_kvsession.integrations import flask as flask_integration
from wsgi_kvsession.integrations.flask import KVSessionInterface, init_app
from wsgi_kvsession.stores import MemoryStore, Store
from wsgi_kvsession.stores.base import Record

from ..stores.backend_redis import REDIS_URL
from ..support import Clock, CountingStore
from .flask_support import MODES, SECRET, AppFactory, Backend, add_routes, reply

NEW_SECRET = "the-next-secret-key-9876543210"
LOGGER = "wsgi_kvsession.integrations.flask"


def _cookie_value(app: Flask, path: str = "/set?a=1", **kwargs: Any) -> str:
    return reply(app.test_client().get(path, **kwargs)).cookie().value


def _expiries_after(app: Flask, backend: Backend, path: str) -> tuple[float, float, list[float]]:
    """Request ``path`` with a new client; return the time before and after it
    and the expiry of every record of the backend."""
    before = time.time()
    app.test_client().get(path)
    after = time.time()
    return before, after, [r.expires_at for r in backend.records().values()]


# ============================================ config read at request time


@pytest.mark.parametrize("mode", MODES)
def test_config_changed_after_setup_takes_effect(
    make_app: AppFactory, backend: Backend, mode: str
) -> None:
    app = make_app(mode=mode)
    app.config.update(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=120,
    )
    client = app.test_client()
    before = time.time()
    made = reply(client.get("/permanent", base_url="https://localhost"))
    after = time.time()
    assert made.cookies("session") == []
    cookie = made.cookie("sid")
    assert cookie.has("secure")
    assert cookie.attrs["samesite"] == "Strict"
    assert cookie.max_age == 120
    assert client.get("/get?k=p", base_url="https://localhost").text == "'1'"
    (record,) = backend.records().values()
    assert before + 120 <= record.expires_at <= after + 120


def test_the_options_cache_keys_on_every_config_key_the_settings_read() -> None:
    """``KVSessionInterface.options`` finds a request's options by the raw values of
    ``_CONFIG_READ``: a config key that ``settings`` (or Flask's ``get_cookie_*``)
    reads and that list lacks would serve options from before the key changed."""
    read: set[str] = set()

    class RecordingConfig(Config):
        def __getitem__(self, key: str) -> Any:
            read.add(key)
            return super().__getitem__(key)

        def get(self, key: str, default: Any = None) -> Any:
            read.add(key)
            return super().get(key, default)

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SECRET_KEY_FALLBACKS=[NEW_SECRET],
        SESSION_KEY_BITS=256,
        SESSION_PERMANENT=True,
        SESSION_KEY_PREFIX="app:",
    )
    app.config = RecordingConfig(app.config.root_path, app.config)
    KVSessionInterface(MemoryStore()).settings(app)
    assert read
    assert read <= set(flask_integration._CONFIG_READ), read - set(flask_integration._CONFIG_READ)


@pytest.mark.parametrize("mode", MODES)
def test_explicit_options_win_over_config(
    make_app: AppFactory, backend: Backend, mode: str
) -> None:
    app = make_app(
        {"SESSION_COOKIE_NAME": "from_config", "SESSION_COOKIE_HTTPONLY": True},
        mode=mode,
        cookie_name="explicit",
        cookie_httponly=False,
    )
    made = reply(app.test_client().get("/set?a=1"))
    assert made.cookies("from_config") == []
    assert not made.cookie("explicit").has("httponly")
    assert all(key.startswith(backend.key_prefix) for key in backend.records())


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SESSION_COOKIE_PARTITIONED": True}, "cookie_partitioned=True needs cookie_secure"),
        ({"SESSION_COOKIE_PARTITIONED": True}, "SESSION_COOKIE_SECURE"),
        ({"SESSION_COOKIE_SAMESITE": "None"}, "SameSite=None cookies without Secure"),
        ({"SESSION_COOKIE_SAMESITE": "bogus"}, "(from app.config[SESSION_COOKIE_SAMESITE])"),
        ({"SESSION_COOKIE_NAME": "bad name"}, "cookie_name='bad name'"),
        ({"SESSION_COOKIE_NAME": "bad name"}, "SESSION_COOKIE_NAME"),
        (
            {"SESSION_COOKIE_NAME": "__Host-s", "SESSION_COOKIE_SECURE": True,
             "SESSION_COOKIE_DOMAIN": "example.com"},
            "__Host-",
        ),
        ({"PERMANENT_SESSION_LIFETIME": 0}, "idle_timeout"),
        ({"PERMANENT_SESSION_LIFETIME": 0}, "PERMANENT_SESSION_LIFETIME"),
    ],
)  # fmt: skip
def test_cookie_config_errors_are_clear(
    make_app: AppFactory, config: dict[str, Any], message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        make_app(config)


def test_session_key_prefix_config_namespaces_the_store(
    backend: Backend, key_prefix: str
) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, TESTING=True, SESSION_KEY_PREFIX=key_prefix + "app1:")
    add_routes(app)
    init_app(app, backend.store)
    client = app.test_client()
    client.get("/set?a=1")
    assert client.get("/get?k=a").text == "'1'"
    assert [key for key in backend.records() if key.startswith(key_prefix + "app1:")]
    assert all(key.startswith(key_prefix + "app1:") for key in backend.records())


class _ApplicationWrapper:
    """A WSGI wrapper that keeps its app as ``.application``, as WhiteNoise does."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.application(environ, start_response)


def test_two_liner_found_through_a_whitenoise_style_wrapper(
    backend: Backend, key_prefix: str
) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    add_routes(app)
    app.wsgi_app = KVSessionMiddleware(app.wsgi_app, backend.store, key_prefix=key_prefix)  # type: ignore[method-assign]
    app.wsgi_app = _ApplicationWrapper(app.wsgi_app)  # type: ignore[method-assign]
    app.session_interface = KVSessionInterface()
    client = app.test_client()
    client.get("/set?a=1")
    assert client.get("/get?k=a").text == "'1'"


@pytest.mark.usefixtures("backend")
def test_session_permanent_config_makes_new_sessions_permanent(make_app: AppFactory) -> None:
    # Flask-Session's SESSION_PERMANENT.
    app = make_app({"SESSION_PERMANENT": True, "PERMANENT_SESSION_LIFETIME": 600})
    client = app.test_client()
    assert reply(client.get("/set?a=1")).cookie().max_age == 600
    assert client.get("/nothing").text == "nothing"
    without = make_app({"PERMANENT_SESSION_LIFETIME": 600})
    assert reply(without.test_client().get("/set?a=1")).cookie().max_age is None


@pytest.mark.usefixtures("backend")
def test_session_set_ttl_is_accepted_and_ignored(make_app: AppFactory, backend: Backend) -> None:
    app = make_app({"SESSION_SET_TTL": False, "PERMANENT_SESSION_LIFETIME": 600})
    before, after, (expires_at,) = _expiries_after(app, backend, "/set?a=1")
    assert before + 600 <= expires_at <= after + 600  # still expires


# ================================================================= signing


def test_cookie_is_signed_with_secret_key(make_app: AppFactory, backend: Backend) -> None:
    app = make_app()
    client = app.test_client()
    value = reply(client.get("/set?a=1")).cookie().value
    session_id, dot, signature = value.partition(".")
    assert dot
    assert signature
    assert IdCodec(256, SECRET).decode(value) == session_id
    assert IdCodec(256, NEW_SECRET).decode(value) is None

    # A forged signature or a bare ID is refused before any store call.
    backend.store.reset()
    for forged in [f"{session_id}.{'A' * len(signature)}", session_id]:
        client.set_cookie("session", forged)
        assert client.get("/dump").text == "[]"
    assert backend.store.methods() == []
    client.set_cookie("session", value)
    assert client.get("/get?k=a").text == "'1'"


def test_secret_key_fallbacks_rotation(make_app: AppFactory, backend: Backend) -> None:
    app = make_app({"PERMANENT_SESSION_LIFETIME": 600})
    old_client = app.test_client()
    old_value = reply(old_client.get("/permanent")).cookie().value

    app.config.update(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[SECRET])
    # Signed with the old key: still accepted, and a refreshed cookie is
    # re-signed with the new one.
    refreshed = reply(old_client.get("/get?k=p"))
    assert refreshed.text == "'1'"
    new_value = refreshed.cookie().value
    assert new_value != old_value
    assert IdCodec(256, NEW_SECRET).decode(new_value) == IdCodec(256, SECRET).decode(old_value)
    # New sessions are signed with the new key only.
    fresh = _cookie_value(app)
    assert IdCodec(256, NEW_SECRET).decode(fresh) is not None
    assert IdCodec(256, SECRET).decode(fresh) is None

    # Once the fallback is dropped, the old cookie is refused.
    app.config["SECRET_KEY_FALLBACKS"] = []
    stale = app.test_client()
    stale.set_cookie("session", old_value)
    assert stale.get("/dump").text == "[]"
    assert old_client.get("/get?k=p").text == "'1'"  # it holds the re-signed cookie


def test_active_sessions_survive_the_end_of_a_key_rotation(make_app: AppFactory) -> None:
    # Flask's docs: fallbacks allow "key rotation without invalidating active
    # sessions"; its cookie sessions get re-signed on every change.
    app = make_app()
    client = app.test_client()
    client.get("/set?a=1")
    app.config.update(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[SECRET])
    for value in ["2", "3"]:  # the user stays active during the rotation period
        client.get(f"/set?a={value}")
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert client.get("/get?k=a").text == "'3'"


def test_a_read_only_request_moves_the_cookie_to_the_new_key(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    client.get("/set?a=1")
    app.config.update(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[SECRET])
    client.get("/get?k=a")  # only reads: the cookie comes back signed with the new key
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert client.get("/get?k=a").text == "'1'"


def test_without_secret_key_cookies_are_unsigned(
    make_app: AppFactory, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    app = make_app({"SECRET_KEY": None})
    client = app.test_client()
    value = reply(client.get("/set?a=1")).cookie().value
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value)  # a bare 256-bit ID
    assert client.get("/get?k=a").text == "'1'"
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_short_secret_key_is_not_used_and_warns_once(
    make_app: AppFactory, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    app = make_app({"SECRET_KEY": "k3y-tiny"})
    client = app.test_client()
    value = reply(client.get("/set?a=1")).cookie().value
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value)  # not signed
    for _ in range(3):
        assert client.get("/get?k=a").text == "'1'"
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "shorter than 16" in warnings[0].getMessage()
    assert "not signed" in warnings[0].getMessage()
    assert "k3y-tiny" not in warnings[0].getMessage()  # never the key itself


def test_short_fallback_key_is_ignored_with_a_warning(
    make_app: AppFactory, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    app = make_app({"SECRET_KEY_FALLBACKS": ["tiny"]})
    value = _cookie_value(app)
    assert IdCodec(256, SECRET).decode(value) is not None  # still signed
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 1
    assert "fallback keys are ignored" in messages[0]


# ============================================================ ID settings


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("bits", [64, 127, 0, True, "256", 130, 1024])
def test_session_key_bits_below_128_is_refused(make_app: AppFactory, bits: Any) -> None:
    with pytest.raises(ValueError, match=r"SESSION_KEY_BITS"):
        make_app({"SESSION_KEY_BITS": bits})


@pytest.mark.usefixtures("backend")
def test_session_key_bits_set_after_setup_fails_at_first_request(
    make_app: AppFactory, backend: Backend
) -> None:
    app = make_app()
    app.config["SESSION_KEY_BITS"] = 64
    with pytest.raises(ValueError, match=r"SESSION_KEY_BITS=64"):
        app.test_client().get("/set?a=1")
    assert backend.store.methods() == []


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(("bits", "length"), [(128, 22), (512, 86)])
def test_session_key_bits_sets_the_id_length(make_app: AppFactory, bits: int, length: int) -> None:
    app = make_app({"SESSION_KEY_BITS": bits})
    client = app.test_client()
    session_id = reply(client.get("/set?a=1")).cookie().value.partition(".")[0]
    assert len(session_id) == length
    assert client.get("/get?k=a").text == "'1'"


@pytest.mark.usefixtures("backend")
def test_session_random_source_must_be_system_random(make_app: AppFactory) -> None:
    with pytest.raises(ValueError, match=r"SESSION_RANDOM_SOURCE"):
        make_app({"SESSION_RANDOM_SOURCE": random.Random()})
    with pytest.raises(ValueError, match=r"SESSION_RANDOM_SOURCE"):
        make_app({"SESSION_RANDOM_SOURCE": random.Random(42)})
    app = make_app({"SESSION_RANDOM_SOURCE": random.SystemRandom()})
    client = app.test_client()
    client.get("/set?a=1")
    assert client.get("/get?k=a").text == "'1'"

    later = make_app()
    later.config["SESSION_RANDOM_SOURCE"] = random.Random()
    with pytest.raises(ValueError, match=r"SESSION_RANDOM_SOURCE"):
        later.test_client().get("/set?a=1")


# ================================================================= wiring


def test_init_app_attaches_everything(make_app: AppFactory, backend: Backend) -> None:
    app = make_app()
    assert app.kvsession_store is backend.store  # type: ignore[attr-defined]
    assert isinstance(app.session_interface, KVSessionInterface)
    assert isinstance(app.wsgi_app, KVSessionMiddleware)
    assert "kvsession" in app.cli.commands


def test_init_app_again_replaces_the_store(make_app: AppFactory, backend: Backend) -> None:
    app = make_app()
    client = app.test_client()
    client.get("/set?a=1")
    other = CountingStore(MemoryStore())
    assert init_app(app, other, key_prefix=backend.key_prefix) is other
    assert app.kvsession_store is other  # type: ignore[attr-defined]
    assert isinstance(app.wsgi_app, KVSessionMiddleware)
    assert not isinstance(app.wsgi_app.app, KVSessionMiddleware)  # not wrapped twice
    backend.store.reset()
    assert client.get("/get?k=a").text == "None"  # the old store is no longer asked
    client.get("/set?b=2")
    assert backend.store.methods() == []
    assert other.methods() == ["load", "load", "insert"]  # the old ID is unknown there


@pytest.fixture
def store_url(backend: Backend) -> str:
    return REDIS_URL if backend.name == "redis" else "memory://"


def test_init_app_takes_a_store_url(backend: Backend, store_url: str) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    add_routes(app)
    store = init_app(app, store_url, key_prefix=backend.key_prefix)
    try:
        assert isinstance(store, Store)
        assert app.kvsession_store is store  # type: ignore[attr-defined]
        client = app.test_client()
        client.get("/set?a=1")
        assert client.get("/get?k=a").text == "'1'"
        keys = [key for key, _ in store.iter_records(backend.key_prefix)]
        assert len(keys) == 1
    finally:
        for key, _ in list(store.iter_records(backend.key_prefix)):
            store.delete(key)
        store.close()


@pytest.mark.usefixtures("backend")
def test_init_app_refuses_what_is_not_a_store_or_option(backend: Backend) -> None:
    app = Flask(__name__)
    with pytest.raises(TypeError, match="is not a session store"):
        init_app(app, 42)
    with pytest.raises(TypeError, match="did you mean 'cookie_name'"):
        init_app(app, backend.store, cookie_nme="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="options need a store"):
        KVSessionInterface(cookie_name="x")


@pytest.mark.parametrize("proxy_first", [False, True], ids=["proxyfix-outside", "inside"])
def test_two_liner_with_proxy_fix(backend: Backend, proxy_first: bool, key_prefix: str) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, TESTING=True, SESSION_COOKIE_SECURE=True)
    add_routes(app)

    @app.route("/scheme")
    def scheme() -> str:
        session["scheme"] = request.scheme
        return request.scheme

    if proxy_first:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]
    app.wsgi_app = KVSessionMiddleware(app.wsgi_app, backend.store, key_prefix=key_prefix)  # type: ignore[method-assign]
    app.session_interface = KVSessionInterface()
    if not proxy_first:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]

    client = app.test_client()
    made = reply(client.get("/scheme", headers={"X-Forwarded-Proto": "https"}))
    assert made.text == "https"
    assert made.cookie().has("secure")  # Flask config, found through ProxyFix
    assert backend.store.methods() == ["insert"]
    assert client.get("/get?k=scheme").text == "'https'"
    assert all(key.startswith(key_prefix) for key in backend.records())
    assert len(backend.records()) == 1


@pytest.mark.usefixtures("backend")
def test_interface_without_store_or_middleware_fails_clearly() -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    add_routes(app)
    app.session_interface = KVSessionInterface()
    with pytest.raises(RuntimeError, match=r"found no store.*init_app.*KVSessionMiddleware"):
        app.test_client().get("/nothing")


def test_interface_with_store_and_no_middleware_commits_itself(
    make_app: AppFactory, backend: Backend
) -> None:
    app = make_app(mode="interface_only")
    assert not isinstance(app.wsgi_app, KVSessionMiddleware)
    client = app.test_client()
    made = reply(client.get("/permanent"))
    assert made.cookie().max_age is not None
    assert made.header("Vary") == "Cookie"
    assert made.header("Cache-Control") == "no-store"
    assert backend.store.methods() == ["insert"]
    assert client.get("/get?k=p").text == "'1'"


# =================================================================== CLI


def test_cli_cleanup(make_app: AppFactory, backend: Backend, clock: Clock) -> None:
    app = make_app({"PERMANENT_SESSION_LIFETIME": 600})
    for _ in range(2):
        app.test_client().get("/set?a=1")
    clock.advance(601)
    keeper = app.test_client()
    keeper.get("/set?a=2")

    result = app.test_cli_runner().invoke(args=["kvsession", "cleanup"])
    assert result.exit_code == 0, result.output
    removed = 2 if backend.name == "memory" else 0  # Redis expires keys itself
    assert re.fullmatch(rf"removed {removed} expired session record\(s\) from .+\n", result.output)
    assert len(backend.records()) == 1
    assert keeper.get("/get?k=a").text == "'2'"


def test_cli_stats(make_app: AppFactory, backend: Backend) -> None:
    app = make_app()

    @app.route("/login")
    def login() -> str:
        session.user_id = "alice"  # type: ignore[attr-defined]
        return "in"

    app.test_client().get("/set?a=1")
    app.test_client().get("/permanent")
    app.test_client().get("/login")
    backend.inner.insert(backend.key_prefix + "f" * 64, b"not a session record", time.time() + 600)

    result = app.test_cli_runner().invoke(args=["kvsession", "stats"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"key prefix: {backend.key_prefix}" in lines
    assert "sessions: 4" in lines
    assert "permanent: 1" in lines
    assert "tied to a user: 1" in lines
    assert "unreadable records: 1" in lines


def test_cli_stats_on_a_store_that_cannot_list(backend: Backend) -> None:
    class Unlisted(CountingStore):
        def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
            raise NotImplementedError("no listing here")

    app = Flask(__name__)
    init_app(app, Unlisted(backend.inner), key_prefix=backend.key_prefix)
    result = app.test_cli_runner().invoke(args=["kvsession", "stats"])
    assert result.exit_code == 1
    assert "cannot list its sessions: no listing here" in result.output


@pytest.mark.usefixtures("backend")
def test_cli_group_help(make_app: AppFactory) -> None:
    result = make_app().test_cli_runner().invoke(args=["kvsession", "--help"])
    assert result.exit_code == 0
    assert "cleanup" in result.output
    assert "stats" in result.output


@pytest.mark.parametrize(
    "lifetime", [900, datetime.timedelta(minutes=15)], ids=["int", "timedelta"]
)
def test_lifetime_is_the_servers_idle_timeout(
    make_app: AppFactory, backend: Backend, lifetime: int | datetime.timedelta
) -> None:
    app = make_app({"PERMANENT_SESSION_LIFETIME": lifetime})
    before, after, (expires_at,) = _expiries_after(app, backend, "/set?a=1")
    assert before + 900 <= expires_at <= after + 900
