"""Turning session data into bytes and back, without pickle.

The default, :class:`TaggedJSONSerializer`, writes JSON and keeps the Python
types that web apps commonly put in a session by wrapping them in a one-key
object whose key starts with a space (the scheme Flask's session serializer
uses): ``{" t": [1, 2]}`` is the tuple ``(1, 2)``. A dictionary whose only key
looks like a tag is itself wrapped, so no user data is ever mistaken for one.

Decoding never runs code: bytes that are not a valid document of the
serializer raise :class:`SerializationError` and the session is treated as
absent (DESIGN.md rule 14).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import uuid
from collections.abc import Callable
from typing import Any, Protocol

try:
    from markupsafe import Markup
except ImportError:  # pragma: no cover - markupsafe is optional
    Markup = None  # type: ignore[assignment,misc]


class SerializationError(ValueError):
    """Data could not be encoded, or stored bytes could not be decoded."""


class Serializer(Protocol):
    """What the middleware needs of a serializer."""

    #: Stored in each record, so bytes written by another serializer are
    #: recognised as foreign rather than misread.
    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


_Encoder = Callable[[Any], Any]


def _tag_datetime(value: datetime.datetime) -> str:
    return value.isoformat()


def _sorted_members(members: set[Any] | frozenset[Any]) -> list[Any]:
    # A set iterates in an order that depends on the hash seed and on its
    # history, so the same set could encode to different bytes and look
    # changed (rule 9). Sort the tagged members by their JSON text instead.
    tagged = [_tag(x) for x in members]
    return sorted(tagged, key=lambda t: json.dumps(t, sort_keys=True))


_TAGS_OUT: dict[type, tuple[str, _Encoder]] = {
    # Checked by exact type first, then by isinstance in this order; datetime
    # before date because datetime is a subclass of date.
    tuple: (" t", lambda v: [_tag(x) for x in v]),
    set: (" s", lambda v: _sorted_members(v)),
    frozenset: (" fs", lambda v: _sorted_members(v)),
    bytes: (" b", lambda v: base64.b64encode(v).decode("ascii")),
    uuid.UUID: (" u", lambda v: v.hex),
    datetime.datetime: (" dt", _tag_datetime),
    datetime.date: (" d", lambda v: v.isoformat()),
    datetime.time: (" tm", lambda v: v.isoformat()),
    decimal.Decimal: (" dec", str),
}
if Markup is not None:
    _TAGS_OUT[Markup] = (" m", str)

_TAGS_IN: dict[str, Callable[[Any], Any]] = {
    " t": tuple,
    " s": set,
    " fs": frozenset,
    " b": lambda v: base64.b64decode(v.encode("ascii"), validate=True),
    " u": uuid.UUID,
    " dt": datetime.datetime.fromisoformat,
    " d": datetime.date.fromisoformat,
    " tm": datetime.time.fromisoformat,
    " dec": decimal.Decimal,
    " di": lambda v: {k[:-2]: x for k, x in v.items()},  # an escaped one-key dict
}
if Markup is not None:
    _TAGS_IN[" m"] = Markup


def _tag(value: Any) -> Any:
    """Return a JSON-compatible tree with the non-JSON types tagged."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        if not all(type(k) is str for k in value):
            bad = next(k for k in value if type(k) is not str)
            raise SerializationError(
                f"session keys must be strings, got {type(bad).__name__} key {bad!r}"
            )
        tagged = {k: _tag(v) for k, v in value.items()}
        if len(tagged) == 1:
            ((key, item),) = tagged.items()
            if key in _TAGS_IN:
                # Decoding runs inside out, so the escaped key must not look
                # like a tag itself: " t" travels as " t__" (as in Flask).
                return {" di": {key + "__": item}}
        return tagged
    if kind is list:
        return [_tag(x) for x in value]
    entry = _TAGS_OUT.get(kind)
    if entry is None:
        for cls, candidate in _TAGS_OUT.items():
            if isinstance(value, cls):
                entry = candidate
                break
        else:
            if isinstance(value, (str, int, float)):  # str/int/float subclasses, e.g. enums
                return value
            if isinstance(value, dict):
                return _tag(dict(value))
            if isinstance(value, list):
                return [_tag(x) for x in value]
            raise SerializationError(
                f"cannot store a {kind.__module__}.{kind.__qualname__} in the session: "
                "use JSON types, or datetime, date, time, UUID, bytes, tuple, set, "
                "Decimal or Markup"
            )
    tag, encode = entry
    return {tag: encode(value)}


#: What a malformed document can raise while it is parsed and its tags rebuilt
#: (a bad base64 string, a non-string where an ISO date belongs, deep nesting).
_DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    RecursionError,
    decimal.InvalidOperation,
)


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which allow_nan=False refuses to write back.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a float")
    return value


def _reject_constant(name: str) -> Any:
    # NaN and Infinity parse, but allow_nan=False refuses to write them back.
    raise ValueError(f"{name} is not valid JSON")


def _untag(obj: dict[str, Any]) -> Any:
    """``object_hook`` for :func:`json.loads`: rebuild tagged values."""
    if len(obj) == 1:
        key, value = next(iter(obj.items()))
        decode = _TAGS_IN.get(key)
        if decode is not None:
            return decode(value)
    return obj


def _untag_tree(value: Any) -> Any:
    """Rebuild tagged values in a tree decoded by something without object hooks."""
    if type(value) is dict:
        if not all(type(k) is str for k in value):
            raise TypeError("session keys must be strings")
        return _untag({k: _untag_tree(v) for k, v in value.items()})
    if type(value) is list:
        return [_untag_tree(x) for x in value]
    return value


class TaggedJSONSerializer:
    """Compact JSON with tagged types (the default serializer)."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        try:
            # ensure_ascii: any str, lone surrogates included, survives the trip.
            return _ENCODER.encode(_tag(value)).encode("ascii")
        except SerializationError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"cannot encode the session as JSON: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            # What this serializer writes is ASCII; UTF-8 is what JSON allows.
            text = data.decode("utf-8")
            if '{" ' not in text:
                # No key starts with a space, so nothing is tagged: skip the
                # per-object hook. (Inside a JSON string that quote is escaped.)
                return _PLAIN_DECODER.decode(text)
            return _TAGGED_DECODER.decode(text)
        except _DECODE_ERRORS as exc:
            raise SerializationError(f"not a tagged-JSON session: {exc}") from exc


# Built once: json.dumps and json.loads build a new encoder or decoder on every
# call that passes options, which costs more than encoding a small session.
# Both are stateless between calls, so threads can share them.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_PLAIN_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_TAGGED_DECODER = json.JSONDecoder(
    object_hook=_untag, parse_constant=_reject_constant, parse_float=_finite_float
)


class MsgpackSerializer:
    """MessagePack through msgspec, with the same tagged types as JSON.

    Smaller and faster to decode than JSON for large sessions; needs
    ``pip install wsgi-kvsession[msgpack]``.
    """

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgspec
        except ImportError as exc:
            raise ImportError(
                "MsgpackSerializer needs msgspec: pip install 'wsgi-kvsession[msgpack]'"
            ) from exc
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ext_hook=self._reject_extension)
        self._errors: tuple[type[Exception], ...] = (msgspec.DecodeError, *_DECODE_ERRORS)

    @staticmethod
    def _reject_extension(code: int, data: memoryview) -> Any:
        raise TypeError(f"msgpack extension type {code} is not session data")

    def dumps(self, value: Any) -> bytes:
        try:
            return self._encoder.encode(_tag(value))
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # OverflowError: msgpack integers are limited to 64 bits.
            raise SerializationError(f"cannot encode the session as msgpack: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            return _untag_tree(self._decoder.decode(data))
        except self._errors as exc:
            raise SerializationError(f"not a msgpack session: {exc}") from exc
