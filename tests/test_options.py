"""Invalid configuration fails at construction, naming the option and the fix."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest

from wsgi_kvsession import KVSessionMiddleware
from wsgi_kvsession.options import Options
from wsgi_kvsession.stores import MemoryStore


def _app(environ: Any, start_response: Any) -> list[bytes]:
    return []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cookie_samesite": "None", "cookie_secure": False}, "cookie_secure=True"),
        ({"cookie_samesite": "sometimes"}, "'Lax', 'Strict', 'None'"),
        ({"cookie_name": "__Host-s", "cookie_domain": "example.com"}, "cookie_domain=None"),
        ({"cookie_name": "__Host-s", "cookie_path": "/app"}, "cookie_path='/'"),
        ({"cookie_name": "__Host-s", "cookie_secure": False}, "cookie_secure=True"),
        ({"cookie_name": "__Secure-s", "cookie_secure": False}, "cookie_secure=True"),
        ({"cookie_partitioned": True, "cookie_secure": False}, "cookie_secure=True"),
        ({"cookie_name": "bad name;"}, "cookie_name"),
        ({"cookie_name": ""}, "cookie_name"),
        ({"cookie_path": "app"}, "cookie_path"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"idle_timeout": -5}, "idle_timeout"),
        ({"absolute_timeout": datetime.timedelta(0)}, "absolute_timeout"),
        ({"idle_timeout": None, "absolute_timeout": None}, "at least one"),
        ({"idle_timeout": 60, "touch_interval": 60}, "touch_interval"),
        ({"id_bits": 64}, "at least 128"),
        ({"id_bits": 130}, "multiple of 8"),
        ({"secret_key": "short"}, "secrets.token_hex"),
        ({"secret_key": []}, "at least one key"),
        ({"on_store_error": "ignore"}, "on_store_error"),
        ({"cookie_refresh": "always"}, "cookie_refresh"),
    ],
)
def test_invalid_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        KVSessionMiddleware(_app, MemoryStore(), **options)


def test_wrong_types_fail_at_construction() -> None:
    with pytest.raises(TypeError, match="timedelta"):
        KVSessionMiddleware(_app, MemoryStore(), idle_timeout="1h")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wsgi_kvsession store"):
        KVSessionMiddleware(_app, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="did you mean 'cookie_name'"):
        KVSessionMiddleware(_app, MemoryStore(), cookie_nme="x")  # type: ignore[call-arg]


def test_defaults_are_safe() -> None:
    options = Options.from_kwargs()
    assert options.cookie_secure is True
    assert options.cookie_httponly is True
    assert options.cookie_samesite == "Lax"
    assert options.cookie_domain is None
    assert options.idle_timeout == 14 * 86400
    assert options.absolute_timeout == 30 * 86400
    assert options.touch_interval == 60
    assert options.ids.id_bytes == 32
    assert options.save_on_server_error is False
    assert options.cookie_refresh == "on_touch"
    assert options.on_store_error == "raise"


def test_timeouts_accept_seconds_and_timedelta() -> None:
    options = Options.from_kwargs(
        idle_timeout=datetime.timedelta(minutes=30), absolute_timeout=7200.5, touch_interval=0
    )
    assert options.idle_timeout == 1800
    assert options.absolute_timeout == 7200.5
    assert options.touch_interval == 0


def test_default_touch_interval_scales_with_a_short_idle_timeout() -> None:
    assert Options.from_kwargs(idle_timeout=40).touch_interval == 10
    assert Options.from_kwargs(idle_timeout=None).touch_interval == 0


def test_samesite_is_normalised_and_valid_combinations_pass() -> None:
    assert Options.from_kwargs(cookie_samesite="strict").cookie_samesite == "Strict"
    assert Options.from_kwargs(cookie_samesite=None).cookie_samesite is None
    options = Options.from_kwargs(cookie_name="__Host-session", cookie_partitioned=True)
    assert options.cookie_partitioned is True


def test_expires_at_is_the_earlier_deadline() -> None:
    options = Options.from_kwargs(idle_timeout=100, absolute_timeout=1000)
    assert options.expires_at(created=0, now=50) == 150
    assert options.expires_at(created=0, now=950) == 1000
