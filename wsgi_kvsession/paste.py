"""PasteDeploy: the middleware as an ini-file filter, and the ini-string parser.

With the package installed, any PasteDeploy pipeline can put sessions in front
of an app::

    [filter:kvsession]
    use = egg:wsgi-kvsession
    store_url = redis://localhost:6379/0
    cookie_secure = true
    idle_timeout = 3600
    secret_key = first-key-signs-0123456789 older-key-verifies-0123456789

    [pipeline:main]
    pipeline = kvsession myapp

Settings files hold strings, so every option has a conversion here
(:func:`parse_settings`), shared with the Pyramid integration's ``kvsession.*``
settings. A value that does not convert, an unknown name, or a combination the
middleware refuses fails at start-up with a :class:`ValueError` naming the
setting as it was written. This module imports no framework.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from .middleware import KVSessionMiddleware, WSGIApp
from .options import Options, SessionOptions
from .serializers import MsgpackSerializer, Serializer, TaggedJSONSerializer
from .stores import store_from_url

__all__ = ["SessionSettings", "filter_app_factory", "parse_settings"]

#: The setting that names the store; every other setting is a middleware option.
STORE_URL = "store_url"

_TRUE = frozenset({"true", "yes", "on", "1", "t", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "f", "n"})


class _Invalid(ValueError):
    """A value that does not convert; :func:`parse_settings` adds the setting name."""


def _bool(text: str) -> bool:
    # Stricter than pyramid.settings.asbool, which reads every unknown word
    # as False: "cookie_secure = ture" must not quietly turn Secure off.
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _Invalid("not a boolean; use true or false (or yes/no, on/off, 1/0)")


def _seconds(text: str) -> int | float | None:
    if text.lower() == "none":
        return None  # no such timeout (the other one must then be set)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        seconds = float(text)
    except ValueError:
        raise _Invalid("not a number of seconds (e.g. 3600 or 0.5), nor 'none'") from None
    if not math.isfinite(seconds):
        raise _Invalid("not a finite number of seconds")
    return seconds


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Invalid("not an integer") from None


def _text(text: str) -> str:
    return text


def _keys(text: str) -> str | list[str]:
    # Whitespace-separated, as pyramid.settings.aslist splits: one per line or
    # several on one line. The first signs, all verify (key rotation).
    keys = text.split()
    return keys[0] if len(keys) == 1 else keys


def _imported(text: str, hint: str) -> Any:
    """The object a dotted name (``package.module:name`` or ``package.module.name``) names."""
    module_name, sep, attribute = text.partition(":")
    if not sep:
        module_name, _, attribute = text.rpartition(".")
    if not module_name or not attribute:
        raise _Invalid(hint)
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise _Invalid(f"cannot import it: {exc}") from None


def _hook(text: str) -> Any:
    found = _imported(text, "give a dotted name such as 'myapp.audit:on_session_event'")
    if not callable(found):
        raise _Invalid("not callable")
    return found


def _serializer(text: str) -> Serializer:
    name = text.lower()
    if name == "json":
        return TaggedJSONSerializer()
    if name == "msgpack":
        return MsgpackSerializer()
    found = _imported(
        text, "use 'json', 'msgpack' or a dotted name such as 'mypackage.codecs:Codec'"
    )
    if not (callable(getattr(found, "dumps", None)) and callable(getattr(found, "loads", None))):
        raise _Invalid("not a serializer (it needs name, dumps and loads)")
    if isinstance(found, type):  # a class: the serializer is an instance of it
        try:
            found = found()
        except Exception as exc:
            raise _Invalid(f"cannot create it: {exc}") from None
    if not isinstance(getattr(found, "name", None), str):
        raise _Invalid("not a serializer (it needs name, dumps and loads)")
    return cast(Serializer, found)


#: How a string from a settings file becomes each option's value. An empty
#: value means "not set" (the option keeps its default) for every option.
CONVERTERS: dict[str, Callable[[str], Any]] = {
    "cookie_name": _text,
    "cookie_path": _text,
    "cookie_domain": _text,
    "cookie_secure": _bool,
    "cookie_httponly": _bool,
    "cookie_samesite": _text,
    "cookie_partitioned": _bool,
    "idle_timeout": _seconds,
    "absolute_timeout": _seconds,
    "touch_interval": _seconds,
    "secret_key": _keys,
    "key_prefix": _text,
    "serializer": _serializer,
    "id_bits": _int,
    "save_on_server_error": _bool,
    "on_store_error": _text,
    "cookie_refresh": _text,
    "permanent_by_default": _bool,
    "on_event": _hook,
}


@dataclass(frozen=True)
class SessionSettings:
    """What a block of settings asks for: a store URL (or None) and options."""

    store_url: str | None
    #: Keyword options for :class:`~wsgi_kvsession.KVSessionMiddleware`, checked.
    options: SessionOptions
    #: The setting each option came from, as written (``kvsession.idle_timeout``).
    names: Mapping[str, str]


def parse_settings(
    settings: Mapping[str, object], *, prefix: str = "", source: str = "setting"
) -> SessionSettings:
    """Read the session settings among ``settings`` (those whose name starts
    with ``prefix``) and convert them.

    ``<prefix>store_url`` is the store's URL; every other name is a middleware
    option (:class:`~wsgi_kvsession.options.SessionOptions`). Strings are
    converted (booleans as ``true``/``false``, ``yes``/``no``, ``on``/``off``,
    ``1``/``0``; timeouts in seconds or ``none``; ``secret_key`` as
    whitespace-separated keys; ``serializer`` as ``json``, ``msgpack`` or a
    dotted name); an empty string leaves the option at its default; values of
    other types (settings built in Python) are taken as they are. The options
    are checked as the middleware checks them.

    Raises :class:`ValueError` naming the setting (``source`` and its full
    name) for an unknown name, a value that does not convert, or options the
    middleware refuses.
    """
    store_url: str | None = None
    options: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in settings.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if isinstance(value, str):
            value = value.strip()
            if not value:
                continue  # "name =" in an ini file: not set
        if name == STORE_URL:
            if not isinstance(value, str):
                raise ValueError(f"{source} {key}={value!r}: give the store's URL as a string")
            store_url = value
            continue
        converter = CONVERTERS.get(name)
        if converter is None:
            known = [prefix + n for n in (STORE_URL, *CONVERTERS)]
            close = difflib.get_close_matches(key, known, 1)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
            raise ValueError(f"unknown {source} {key}{hint}")
        if isinstance(value, str):
            try:
                value = converter(value)
            except _Invalid as exc:
                raise ValueError(f"{source} {key}={value!r}: {exc}") from None
        options[name] = value
        names[name] = key
    try:
        Options.from_kwargs(**options)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # Options names the option; name the setting the user wrote as well.
        blamed = [key for name, key in names.items() if name in message] or list(names.values())
        raise ValueError(f"{source} {', '.join(blamed)}: {message}") from None
    return SessionSettings(store_url, cast(SessionOptions, options), names)


def filter_app_factory(
    app: WSGIApp, global_conf: Mapping[str, object], **local_conf: object
) -> KVSessionMiddleware:
    """PasteDeploy's ``paste.filter_app_factory``: wrap ``app`` in
    :class:`~wsgi_kvsession.KVSessionMiddleware` configured by the filter's
    section. ``store_url`` is required; every other key is an option (see
    :func:`parse_settings`). ``[DEFAULT]`` values (``global_conf``) are not
    read, so a ``debug`` or ``here`` there cannot be mistaken for an option."""
    parsed = parse_settings(local_conf, source="kvsession filter setting")
    if parsed.store_url is None:
        raise ValueError(
            "kvsession filter: store_url is required, e.g. store_url = redis://localhost:6379/0 "
            "or sqlite:///%(here)s/sessions.db"
        )
    try:
        store = store_from_url(parsed.store_url)
    except ValueError as exc:
        raise ValueError(f"kvsession filter setting store_url: {exc}") from None
    return KVSessionMiddleware(app, store, **parsed.options)
