"""examples/mixed_app.py: Flask, Pyramid, Django and a plain WSGI page under one
middleware share one session, on a MemoryStore and on the shared Redis.

A login on the Flask part is seen by the others, a cart filled by Pyramid and
Django is one cart, and logging out in any framework logs out in all of them;
every response carries at most one ``Set-Cookie`` for the session, never
Django's own ``sessionid``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import webtest
from django.test import override_settings

from wsgi_kvsession import envelope

from . import django_support  # noqa: F401 - configures Django for this process
from .flask_support import Backend

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mixed_app.py"
MODULE = "wsgi_kvsession_mixed_example"


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location(MODULE, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module  # the Django part's URLconf is this module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[MODULE]


@pytest.fixture
def site(example: ModuleType, backend: Backend) -> Iterator[webtest.TestApp]:
    with override_settings(ROOT_URLCONF=MODULE, MIDDLEWARE=[example.DJANGO_SESSION_MIDDLEWARE]):
        app = example.make_site(backend.store, key_prefix=backend.key_prefix, cookie_secure=False)
        yield webtest.TestApp(app)


def _json(site: webtest.TestApp, path: str) -> Any:
    response = site.get(path)
    cookies = [v for v in response.headers.getall("Set-Cookie") if v.startswith("session=")]
    assert len(cookies) <= 1, response.headers  # rule 5
    assert not any(v.startswith("sessionid=") for v in response.headers.getall("Set-Cookie"))
    return response.json


@pytest.mark.parametrize("logout_in", ["flask", "pyramid", "django"])
def test_one_session_across_flask_pyramid_django_and_plain_wsgi(
    site: webtest.TestApp, backend: Backend, logout_in: str
) -> None:
    assert _json(site, "/flask/login?user=alice") == {"user": "alice"}
    for part in ("flask", "pyramid", "django"):
        assert _json(site, f"/{part}/whoami") == {"user": "alice"}
    assert _json(site, "/pyramid/add?item=apple") == {"cart": ["apple"]}
    assert _json(site, "/django/add?item=pear") == {"cart": ["apple", "pear"]}
    assert _json(site, "/flask/add?item=plum") == {"cart": ["apple", "pear", "plum"]}
    assert _json(site, "/") == {"user": "alice", "cart": ["apple", "pear", "plum"]}
    assert len(backend.records()) == 1  # one record for all four
    cookie = site.cookies["session"]

    assert _json(site, f"/{logout_in}/logout") == {"user": None}
    assert backend.records() == {}
    assert "session" not in site.cookies  # the cookie was expired
    for part in ("flask", "pyramid", "django"):
        assert _json(site, f"/{part}/whoami") == {"user": None}
    site.set_cookie("session", cookie)  # whoever kept the old cookie
    assert _json(site, "/") == {"user": None, "cart": []}


def test_a_login_regenerates_the_id_for_every_part(site: webtest.TestApp, backend: Backend) -> None:
    _json(site, "/django/add?item=apple")  # an anonymous cart first
    before = site.cookies["session"]
    _json(site, "/flask/login?user=bob")
    assert site.cookies["session"] != before
    assert _json(site, "/pyramid/cart") == {"cart": ["apple"]}  # the data moved along
    assert len(backend.records()) == 1


@pytest.mark.parametrize("part", ["flask", "pyramid", "django"])
def test_a_write_from_any_part_keeps_the_sites_cookie_kind(
    site: webtest.TestApp, backend: Backend, part: str
) -> None:
    """The site's middleware makes browser-session cookies (its
    ``permanent_by_default`` is False); the frameworks' own cookie settings,
    Django's SESSION_EXPIRE_AT_BROWSER_CLOSE among them, do not change that."""
    for path in (f"/{part}/add?item=apple", f"/{part}/add?item=pear"):
        response = site.get(path)
        for cookie in response.headers.getall("Set-Cookie"):
            assert "Max-Age" not in cookie, cookie
            assert "Expires" not in cookie, cookie
    (record,) = backend.records().values()
    assert envelope.unpack(record.value).permanent is False
