"""The cookie reader's fast path and the stored record format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.http import parse_cookie
from werkzeug.wrappers import Request

from wsgi_kvsession import Session, envelope
from wsgi_kvsession.cookies import request_cookie_values
from wsgi_kvsession.serializers import SerializationError
from wsgi_kvsession.stores import MemoryStore

from .support import CountingStore, client_for

_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=1)
_value = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.=/+%", max_size=60
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["session", "other"]) | _token, _value), max_size=6))
def test_fast_cookie_path_agrees_with_werkzeug(pairs: list[tuple[str, str]]) -> None:
    header = "; ".join(f"{k}={v}" for k, v in pairs)
    environ = {"HTTP_COOKIE": header}
    assert request_cookie_values(environ, "session") == parse_cookie(header).getlist("session")


def test_quoted_cookie_values_go_through_werkzeug() -> None:
    environ = {"HTTP_COOKIE": 'a="x;y"; session="abc"'}
    assert request_cookie_values(environ, "session") == ["abc"]


def test_cookie_name_inside_another_value_is_not_a_match() -> None:
    environ = {"HTTP_COOKIE": "other=session=abc; xsession=def"}
    assert request_cookie_values(environ, "session") == []


@pytest.mark.parametrize("user_id", [None, "alice", "ünï", 0, -5, 2**80])
def test_envelope_round_trip(user_id: str | int | None) -> None:
    original = envelope.Envelope(1.5, 2.5, True, user_id, "json", b'{"a":1}')
    assert envelope.unpack(envelope.pack(original)) == original


def test_envelope_rejects_truncation_at_every_point() -> None:
    packed = envelope.pack(envelope.Envelope(1.0, 2.0, False, "bob", "json", b""))
    for end in range(len(packed)):
        with pytest.raises(SerializationError):
            envelope.unpack(packed[:end])


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"KVS\x02" + bytes(40),
        b"KVS\x01" + b"\x7f\xf8" + bytes(30),  # NaN created
        envelope.pack(envelope.Envelope(1.0, 2.0, False, None, "json", b""))[:-1] + b"\x07",
    ],
    ids=["empty", "other-version", "nan", "bad-user-kind"],
)
def test_envelope_rejects_malformed_values(value: bytes) -> None:
    with pytest.raises(SerializationError):
        envelope.unpack(value)


def test_user_id_too_long_is_refused() -> None:
    with pytest.raises(SerializationError, match="user_id"):
        envelope.pack(envelope.Envelope(1.0, 2.0, False, "u" * 70_000, "json", b""))


def test_user_id_is_stored_and_a_change_is_a_write() -> None:
    counting = CountingStore(MemoryStore())
    seen: list[object] = []

    def handler(session: Session, request: Request) -> None:
        if request.path == "/login":
            session["x"] = 1
            session.user_id = 42
        elif request.path == "/same":
            session.user_id = 42
        elif request.path == "/switch":
            session.user_id = "alice"
        seen.append(session.user_id)

    client = client_for(handler, counting)
    client.get("/login")
    counting.reset()
    client.get("/same")
    assert counting.methods() == ["load"]
    client.get("/switch")
    assert counting.methods()[-1] == "update"
    client.get("/read")
    assert seen == [42, 42, "alice", "alice"]


def test_user_id_must_be_str_int_or_none() -> None:
    def handler(session: Session, request: Request) -> None:
        session.user_id = 1.5  # type: ignore[assignment]

    with pytest.raises(TypeError, match="user_id"):
        client_for(handler, MemoryStore()).get("/")


def test_scalar_session_reassigned_equal_writes_nothing() -> None:
    counting = CountingStore(MemoryStore())

    def handler(session: Session, request: Request) -> None:
        session["n"] = 1
        session["s"] = "text"

    client = client_for(handler, counting)
    client.get("/")
    counting.reset()
    client.get("/")
    assert counting.methods() == ["load"]
