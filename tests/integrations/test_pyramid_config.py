"""How Pyramid apps are wired to their sessions: ``includeme`` with and
without ``kvsession.*`` settings, with and without a middleware in front, the
settings parser shared with PasteDeploy, and a PasteDeploy pipeline loaded
from a real ini file."""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest  # type: ignore[import-untyped]
from paste.deploy import loadapp  # type: ignore[import-untyped]
from pyramid.interfaces import ISessionFactory

from wsgi_kvsession import KVSessionMiddleware
from wsgi_kvsession.integrations.pyramid import KVSessionFactory
from wsgi_kvsession.options import SessionOptions
from wsgi_kvsession.paste import CONVERTERS, filter_app_factory, parse_settings
from wsgi_kvsession.serializers import MsgpackSerializer, TaggedJSONSerializer
from wsgi_kvsession.stores import MemoryStore, SQLiteStore, Store

from ..stores.backend_redis import REDIS_URL
from .pyramid_support import SECRET, Backend, make_config, reply, session_cookie

OTHER_SECRET = "the-previous-secret-0123456789"


@pytest.fixture
def store_url(backend: Backend) -> str:
    """A URL of the backend's kind: ``memory://`` (a store of its own) or the
    shared Redis (the test's keys go under ``backend.key_prefix``)."""
    return "memory://" if backend.name == "memory" else REDIS_URL


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    """Stores a test made from URLs, closed afterwards."""
    made: list[Store] = []
    yield made
    for store in made:
        store.close()


def _factory(app: Any) -> KVSessionFactory:
    factory = app.registry.queryUtility(ISessionFactory)
    assert isinstance(factory, KVSessionFactory)
    return factory


def _records(store: Store, prefix: str) -> dict[str, Any]:
    return dict(store.iter_records(prefix))


# ======================================================= includeme


def test_includeme_without_settings_serves_the_middleware_session(backend: Backend) -> None:
    config = make_config()
    config.include("wsgi_kvsession.integrations.pyramid")
    pyramid_app = config.make_wsgi_app()
    factory = _factory(pyramid_app)
    assert factory.store is None
    app = KVSessionMiddleware(
        pyramid_app, backend.store, cookie_secure=False, key_prefix=backend.key_prefix
    )
    client = webtest.TestApp(app)
    response = reply(client.get("/set?a=1"))
    assert response.cookie().value
    assert client.get("/get?k=a").text == "'1'"
    assert len(backend.records()) == 1


def test_includeme_with_settings_commits_by_itself(
    backend: Backend, store_url: str, stores: list[Store]
) -> None:
    settings = {
        "kvsession.store_url": store_url,
        "kvsession.key_prefix": backend.key_prefix,
        "kvsession.cookie_name": "sid",
        "kvsession.cookie_secure": "false",
        "kvsession.cookie_samesite": "strict",
        "kvsession.idle_timeout": "600",
        "kvsession.absolute_timeout": "7200.5",
        "kvsession.secret_key": f"{SECRET}\n{OTHER_SECRET}",
        "pyramid.reload_templates": "false",  # not ours: left alone
    }
    config = make_config(settings)
    config.include("wsgi_kvsession.integrations.pyramid")
    app = config.make_wsgi_app()
    factory = _factory(app)
    assert factory.store is not None
    stores.append(factory.store)
    client = webtest.TestApp(app)

    before = time.time()
    response = reply(client.get("/set?a=1"))
    cookie = response.cookie("sid")
    assert response.cookies("session") == []
    assert not cookie.has("secure")
    assert cookie.attrs["samesite"] == "Strict"
    assert "." in cookie.value  # signed with the first key
    assert response.header("Cache-Control") == "no-store"
    records = _records(factory.store, backend.key_prefix)
    assert len(records) == 1
    (record,) = records.values()
    assert before + 600 - 1 <= record.expires_at <= time.time() + 600 + 1
    assert client.get("/get?k=a").text == "'1'"
    assert factory.options.absolute_timeout == 7200.5


def test_outer_middleware_wins_over_the_settings_store(
    backend: Backend, stores: list[Store], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config({"kvsession.store_url": "memory://", "kvsession.cookie_name": "inner"})
    config.include("wsgi_kvsession.integrations.pyramid")
    pyramid_app = config.make_wsgi_app()
    factory = _factory(pyramid_app)
    assert factory.store is not None
    stores.append(factory.store)
    app = KVSessionMiddleware(
        pyramid_app,
        backend.store,
        cookie_secure=False,
        cookie_name="outer",
        key_prefix=backend.key_prefix,
    )
    client = webtest.TestApp(app)
    with caplog.at_level(logging.INFO, logger="wsgi_kvsession.integrations.pyramid"):
        response = reply(client.get("/set?a=1"))
        client.get("/set?a=2")
    assert len(response.all("Set-Cookie")) == 1
    assert response.cookie("outer").value
    assert response.cookies("inner") == []
    assert len(response.all("Vary")) == 1
    assert len(backend.records()) == 1
    assert _records(factory.store, "") == {}  # the factory's store was never used
    assert client.get("/get?k=a").text == "'2'"
    told = [r for r in caplog.records if "KVSessionMiddleware wraps" in r.getMessage()]
    assert len(told) == 1  # said once, not on every request
    assert told[0].levelno == logging.WARNING  # the settings asked for another cookie
    assert "cookie_name" in told[0].getMessage()


def test_includeme_settings_need_a_store_url() -> None:
    config = make_config({"kvsession.cookie_name": "sid", "kvsession.idle_timeout": "60"})
    with pytest.raises(ValueError, match=r"kvsession\.cookie_name.*kvsession\.store_url"):
        config.include("wsgi_kvsession.integrations.pyramid")


def test_empty_store_url_means_no_store() -> None:
    config = make_config({"kvsession.store_url": ""})
    config.include("wsgi_kvsession.integrations.pyramid")
    assert _factory(config.make_wsgi_app()).store is None


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"kvsession.cookie_secure": "maybe"}, r"kvsession\.cookie_secure='maybe'.*boolean"),
        ({"kvsession.cookie_httponly": "ture"}, r"kvsession\.cookie_httponly='ture'"),
        ({"kvsession.idle_timeout": "ten minutes"}, r"kvsession\.idle_timeout=.*seconds"),
        ({"kvsession.absolute_timeout": "inf"}, r"kvsession\.absolute_timeout=.*finite"),
        ({"kvsession.idle_timeout": "-5"}, r"kvsession\.idle_timeout.*greater than 0"),
        ({"kvsession.id_bits": "lots"}, r"kvsession\.id_bits='lots'.*integer"),
        ({"kvsession.id_bits": "64"}, r"kvsession\.id_bits.*128"),
        (
            {"kvsession.cookie_secur": "false"},
            r"unknown .*kvsession\.cookie_secur\b.*"
            r"did you mean kvsession\.cookie_secure",
        ),
        ({"kvsession.store": "memory://"}, r"unknown .*kvsession\.store\b"),
        (
            {"kvsession.cookie_samesite": "None", "kvsession.cookie_secure": "false"},
            r"kvsession\.cookie_samesite.*needs cookie_secure=True",
        ),
        ({"kvsession.secret_key": "short"}, r"kvsession\.secret_key.*16"),
        ({"kvsession.serializer": "pickle"}, r"kvsession\.serializer='pickle'"),
        ({"kvsession.serializer": "no.such.module:Codec"}, r"kvsession\.serializer=.*import"),
        ({"kvsession.on_store_error": "ignore"}, r"kvsession\.on_store_error.*'raise'"),
        ({"kvsession.store_url": "nosuch://x"}, r"kvsession\.store_url.*accepted|forms|URL"),
    ],
)
def test_bad_settings_fail_at_include_naming_the_setting(
    settings: dict[str, str], pattern: str
) -> None:
    full = {"kvsession.store_url": "memory://", **settings}
    config = make_config(full)
    with pytest.raises(ValueError, match=pattern):
        config.include("wsgi_kvsession.integrations.pyramid")


# ====================================================== the parser


def test_every_option_has_a_string_conversion() -> None:
    assert set(CONVERTERS) == set(SessionOptions.__annotations__)


def test_strings_convert_to_option_values() -> None:
    parsed = parse_settings(
        {
            "kvsession.store_url": " redis://localhost:6379/0 ",
            "kvsession.cookie_name": "__Host-sid",
            "kvsession.cookie_path": "/",
            "kvsession.cookie_secure": "Yes",
            "kvsession.cookie_httponly": "off",
            "kvsession.cookie_samesite": "None",
            "kvsession.cookie_partitioned": "1",
            "kvsession.idle_timeout": "none",
            "kvsession.absolute_timeout": "86400",
            "kvsession.touch_interval": "2.5",
            "kvsession.secret_key": f"{SECRET} {OTHER_SECRET}",
            "kvsession.key_prefix": "app1:",
            "kvsession.serializer": "msgpack",
            "kvsession.id_bits": "192",
            "kvsession.save_on_server_error": "true",
            "kvsession.on_store_error": "empty",
            "kvsession.cookie_refresh": "every_request",
            "kvsession.permanent_by_default": "on",
            "kvsession.cookie_domain": "",  # empty: not set
            "other.setting": "ignored",
        },
        prefix="kvsession.",
    )
    assert parsed.store_url == "redis://localhost:6379/0"
    options = dict(parsed.options)
    assert isinstance(options.pop("serializer"), MsgpackSerializer)
    assert options == {
        "cookie_name": "__Host-sid",
        "cookie_path": "/",
        "cookie_secure": True,
        "cookie_httponly": False,
        "cookie_samesite": "None",
        "cookie_partitioned": True,
        "idle_timeout": None,
        "absolute_timeout": 86400,
        "touch_interval": 2.5,
        "secret_key": [SECRET, OTHER_SECRET],
        "key_prefix": "app1:",
        "id_bits": 192,
        "save_on_server_error": True,
        "on_store_error": "empty",
        "cookie_refresh": "every_request",
        "permanent_by_default": True,
    }
    assert parsed.names["idle_timeout"] == "kvsession.idle_timeout"


def test_settings_made_in_python_are_taken_as_they_are() -> None:
    serializer = TaggedJSONSerializer()
    parsed = parse_settings(
        {
            "kvsession.cookie_secure": False,
            "kvsession.idle_timeout": datetime.timedelta(minutes=5),
            "kvsession.secret_key": [SECRET],
            "kvsession.serializer": serializer,
        },
        prefix="kvsession.",
    )
    assert parsed.store_url is None
    assert parsed.options == {
        "cookie_secure": False,
        "idle_timeout": datetime.timedelta(minutes=5),
        "secret_key": [SECRET],
        "serializer": serializer,
    }


def test_one_secret_key_is_a_string_and_serializers_by_name() -> None:
    assert parse_settings({"secret_key": SECRET}).options == {"secret_key": SECRET}
    json_options = parse_settings({"serializer": "JSON"}).options
    assert isinstance(json_options["serializer"], TaggedJSONSerializer)
    dotted = parse_settings({"serializer": "wsgi_kvsession.serializers:TaggedJSONSerializer"})
    assert isinstance(dotted.options["serializer"], TaggedJSONSerializer)
    dotted = parse_settings({"serializer": "wsgi_kvsession.serializers.TaggedJSONSerializer"})
    assert isinstance(dotted.options["serializer"], TaggedJSONSerializer)
    with pytest.raises(ValueError, match="not a serializer"):
        parse_settings({"serializer": "wsgi_kvsession.options:Options"})


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("true", True),
        ("YES", True),
        ("on", True),
        ("1", True),
        ("t", True),
        ("y", True),
        ("false", False),
        ("No", False),
        ("off", False),
        ("0", False),
        ("f", False),
        ("n", False),
    ],
)
def test_boolean_words(word: str, value: bool) -> None:
    assert parse_settings({"cookie_httponly": word}).options == {"cookie_httponly": value}


# ======================================================= PasteDeploy


def _ini(tmp_path: Path, text: str) -> str:
    path = tmp_path / "app.ini"
    path.write_text(textwrap.dedent(text))
    return f"config:{path}"


def test_paste_pipeline_from_an_ini_file(
    backend: Backend, store_url: str, tmp_path: Path, stores: list[Store]
) -> None:
    uri = _ini(
        tmp_path,
        f"""
        [DEFAULT]
        # Not an option: [DEFAULT] values are not read by the filter.
        debug = true

        [app:myapp]
        use = call:tests.integrations.pyramid_support:paste_app
        csrf = true

        [filter:kvsession]
        use = egg:wsgi-kvsession
        store_url = {store_url}
        key_prefix = {backend.key_prefix}
        cookie_name = sid
        cookie_secure = false
        cookie_samesite = Strict
        idle_timeout = 900
        secret_key =
            {SECRET}
            {OTHER_SECRET}

        [pipeline:main]
        pipeline = kvsession myapp
        """,
    )
    app = loadapp(uri)
    assert isinstance(app, KVSessionMiddleware)
    stores.append(app.store)
    assert app.options.cookie_name == "sid"
    assert app.options.cookie_secure is False
    assert app.options.idle_timeout == 900
    assert app.option_kwargs["secret_key"] == [SECRET, OTHER_SECRET]

    client = webtest.TestApp(app)
    token = client.get("/token").text
    response = reply(client.post("/submit", {"v": "hi", "csrf_token": token}))
    assert response.status == 200
    assert client.get("/get?k=v").text == "'hi'"
    client.post("/submit", {"v": "forged"}, status=400)
    cookie = reply(client.get("/token")).cookies("sid")
    assert cookie == []  # read only: no cookie again
    assert session_cookie(client, "sid") is not None
    assert len(_records(app.store, backend.key_prefix)) == 1


def test_paste_egg_name_with_entry_point(tmp_path: Path, stores: list[Store]) -> None:
    uri = _ini(
        tmp_path,
        """
        [app:myapp]
        use = call:tests.integrations.pyramid_support:paste_app

        [filter:kvsession]
        use = egg:wsgi-kvsession#main
        store_url = memory://
        cookie_secure = off

        [pipeline:main]
        pipeline = kvsession myapp
        """,
    )
    app = loadapp(uri)
    assert isinstance(app, KVSessionMiddleware)
    assert isinstance(app.store, MemoryStore)
    stores.append(app.store)
    client = webtest.TestApp(app)
    client.get("/flash?msg=hello")
    assert client.get("/pop").text == '["hello"]'


def test_paste_store_url_with_here(tmp_path: Path, stores: list[Store]) -> None:
    # The docs' example: an SQLite file next to the ini file.
    uri = _ini(
        tmp_path,
        """
        [app:myapp]
        use = call:tests.integrations.pyramid_support:paste_app

        [filter:kvsession]
        use = egg:wsgi-kvsession
        store_url = sqlite:///%(here)s/sessions.db
        cookie_secure = false

        [pipeline:main]
        pipeline = kvsession myapp
        """,
    )
    app = loadapp(uri)
    assert isinstance(app.store, SQLiteStore)
    stores.append(app.store)
    client = webtest.TestApp(app)
    client.get("/set?a=1")
    assert (tmp_path / "sessions.db").exists()
    assert len(_records(app.store, "")) == 1


def test_paste_app_settings_and_filter_give_one_cookie(tmp_path: Path, stores: list[Store]) -> None:
    uri = _ini(
        tmp_path,
        """
        [app:myapp]
        use = call:tests.integrations.pyramid_support:paste_app
        kvsession.store_url = memory://
        kvsession.cookie_name = inner

        [filter:kvsession]
        use = egg:wsgi-kvsession
        store_url = memory://
        cookie_name = outer
        cookie_secure = false

        [pipeline:main]
        pipeline = kvsession myapp
        """,
    )
    app = loadapp(uri)
    stores.append(app.store)
    client = webtest.TestApp(app)
    response = reply(client.get("/set?a=1"))
    assert len(response.all("Set-Cookie")) == 1
    assert response.cookie("outer").value
    assert client.get("/get?k=a").text == "'1'"


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        ("cookie_secure = false", "store_url is required"),
        ("store_url = memory://\ncookie_secure = perhaps", r"cookie_secure='perhaps'"),
        ("store_url = memory://\nidle_timout = 60", "did you mean idle_timeout"),
        ("store_url = ftp://x", "store_url"),
    ],
)
def test_paste_filter_errors_name_the_key(tmp_path: Path, lines: str, pattern: str) -> None:
    body = "\n".join("        " + line for line in lines.splitlines())
    uri = _ini(
        tmp_path,
        f"""
        [app:myapp]
        use = call:tests.integrations.pyramid_support:paste_app

        [filter:kvsession]
        use = egg:wsgi-kvsession
{body}

        [pipeline:main]
        pipeline = kvsession myapp
        """,
    )
    with pytest.raises(ValueError, match=pattern):
        loadapp(uri)


def test_filter_factory_called_directly() -> None:
    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = filter_app_factory(inner, {"debug": "true"}, store_url="memory://", id_bits="128")
    assert isinstance(app, KVSessionMiddleware)
    assert app.option_kwargs == {"id_bits": 128}
    assert app.app is inner
    app.store.close()


def test_paste_module_imports_no_framework() -> None:
    # The ini parser is shared with the Pyramid integration but lives in the
    # core: loading the filter must not drag Pyramid in. (``paste`` itself is
    # a namespace package that PasteDeploy's .pth file imports at start-up.)
    code = (
        "import sys, wsgi_kvsession.paste;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'pyramid', 'django', 'webob', 'zope')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
