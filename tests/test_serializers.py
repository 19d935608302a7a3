"""The tagged JSON and msgpack serializers: round trips, tag escaping, no code execution."""

from __future__ import annotations

import contextlib
import datetime
import enum
import pickle
import uuid
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from wsgi_kvsession.serializers import (
    MsgpackSerializer,
    SerializationError,
    Serializer,
    TaggedJSONSerializer,
)

SERIALIZERS = [TaggedJSONSerializer(), MsgpackSerializer()]

SAMPLE: dict[str, Any] = {
    "str": "héllo \u2603",
    "int": 2**62,
    "float": 1.5,
    "bool": True,
    "none": None,
    "list": [1, "a", None],
    "tuple": (1, (2, 3)),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a"}),
    "bytes": bytes(range(256)),
    "uuid": uuid.uuid4(),
    "datetime_utc": datetime.datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc),
    "datetime_offset": datetime.datetime(
        2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    ),
    "datetime_naive": datetime.datetime(2026, 1, 1, 1, 2, 3),
    "date": datetime.date(2026, 2, 28),
    "time": datetime.time(23, 59, 59, 1),
    "decimal": Decimal("3.14159265358979323846"),
    "markup": Markup("<em>flash</em>"),
    "escaped": {" t": "not a tuple"},
    "escaped_di": {" di": {" t__": 1}},
    "nested": {"a": [{"b": (b"c", {Decimal("1")})}]},
}


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
def test_round_trip_keeps_values_and_types(serializer: Serializer) -> None:
    loaded = serializer.loads(serializer.dumps(SAMPLE))
    assert loaded == SAMPLE
    for key, value in SAMPLE.items():
        assert type(loaded[key]) is type(value), key


def test_json_output_is_compact_ascii_json() -> None:
    data = TaggedJSONSerializer().dumps({"a": (1,), "é": "ü"})
    assert data == b'{"a":{" t":[1]},"\\u00e9":"\\u00fc"}'
    lone_surrogate = {"s": "\udcff"}
    assert (
        TaggedJSONSerializer().loads(TaggedJSONSerializer().dumps(lone_surrogate)) == lone_surrogate
    )


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
def test_unsupported_values_are_a_clear_error(serializer: Serializer) -> None:
    with pytest.raises(SerializationError, match=r"cannot store a builtins\.object"):
        serializer.dumps({"x": object()})
    with pytest.raises(SerializationError, match="keys must be strings"):
        serializer.dumps({"x": {1: "int key"}})


def test_integers_beyond_64_bits_are_json_only() -> None:
    assert TaggedJSONSerializer().loads(TaggedJSONSerializer().dumps({"i": 2**70})) == {"i": 2**70}
    with pytest.raises(SerializationError, match="64"):
        MsgpackSerializer().dumps({"i": 2**70})


def test_nan_is_refused_by_json() -> None:
    with pytest.raises(SerializationError):
        TaggedJSONSerializer().dumps({"x": float("nan")})


def test_subclasses_of_json_types_are_stored_as_their_base() -> None:
    class Color(enum.IntEnum):
        RED = 1

    serializer = TaggedJSONSerializer()
    loaded = serializer.loads(serializer.dumps({"c": Color.RED, "o": OrderedDict(a=1)}))
    assert loaded == {"c": 1, "o": {"a": 1}}


class _Exploit:
    def __reduce__(self) -> Any:
        return (exec, ("raise SystemExit('executed')",))


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(_Exploit()),
        b"",
        b"\xff\xfe",
        b'{" b": 12}',
        b'{" u": "not-a-uuid"}',
        b'{" dt": []}',
        b'{" dec": "x"}',
        b'{" di": 5}',
        b"[" * 100_000,
    ],
    ids=[
        "pickle",
        "empty",
        "not-utf8",
        "bad-bytes",
        "bad-uuid",
        "bad-dt",
        "bad-dec",
        "bad-di",
        "deep",
    ],
)
def test_garbage_raises_serialization_error_and_runs_nothing(
    serializer: Serializer, data: bytes
) -> None:
    with contextlib.suppress(SerializationError):
        serializer.loads(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text()
    | st.binary()
    | st.uuids()
    | st.datetimes()
    | st.dates()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children) | st.tuples(children, children) | st.dictionaries(st.text(), children)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), json_values))
def test_any_supported_tree_round_trips(value: dict[str, Any]) -> None:
    for serializer in SERIALIZERS:
        assert serializer.loads(serializer.dumps(value)) == value
