"""Lifecycle events: each one logged and handed to ``on_event`` with a keyed
hash of the session ID, never the ID itself."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest
from werkzeug.wrappers import Request

from wsgi_kvsession import Session
from wsgi_kvsession.events import SessionEvent, SessionEventInfo
from wsgi_kvsession.ids import IdCodec
from wsgi_kvsession.stores import MemoryStore

from .support import Clock, client_for

SECRET = "events-secret-0123456789abcdef"


def _routes(session: Session, request: Request) -> Any:
    if request.path == "/set":
        session["a"] = 1
    elif request.path == "/read":
        return repr(dict(session))
    elif request.path == "/regenerate":
        session.regenerate()
    elif request.path == "/destroy":
        session.destroy()
    elif request.path == "/clear":
        session.clear()
    return None


def _cookie_id(client: Any) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return str(cookie.value).partition(".")[0]


def test_every_lifecycle_event_reaches_the_hook_with_a_keyed_hash(
    memory_store: MemoryStore, clock: Clock
) -> None:
    seen: list[SessionEventInfo] = []
    client = client_for(
        _routes, memory_store, on_event=seen.append, secret_key=SECRET, idle_timeout=60
    )
    codec = IdCodec(secret_key=SECRET)
    client.get("/set")
    first = _cookie_id(client)
    client.get("/regenerate")
    second = _cookie_id(client)
    client.get("/clear")
    client.get("/set")
    third = _cookie_id(client)
    clock.advance(120)
    client.get("/read")  # idle timeout passed: unknown (the store dropped it)
    client.set_cookie("session", "garbage")
    client.get("/read")
    assert [(e.event, e.session_hash) for e in seen] == [
        (SessionEvent.CREATED, codec.log_hash(first)),
        (SessionEvent.REGENERATED, codec.log_hash(first)),
        (SessionEvent.CREATED, codec.log_hash(second)),
        (SessionEvent.EMPTIED, codec.log_hash(second)),
        (SessionEvent.CREATED, codec.log_hash(third)),
        (SessionEvent.UNKNOWN, codec.log_hash(third)),
        (SessionEvent.REJECTED, None),
    ]


def test_destroy_is_an_event(memory_store: MemoryStore) -> None:
    seen: list[SessionEventInfo] = []
    client = client_for(_routes, memory_store, on_event=seen.append)
    client.get("/set")
    client.get("/destroy")
    assert [e.event for e in seen] == [SessionEvent.CREATED, SessionEvent.DESTROYED]


def test_the_hash_is_keyed_and_never_the_id_or_the_store_key() -> None:
    session_id = IdCodec().new_id()
    one, same = IdCodec(secret_key=SECRET), IdCodec(secret_key=[SECRET, "x" * 32])
    other = IdCodec(secret_key="another-secret-0123456789")
    # Worker processes sharing the signing key correlate; another key does not.
    assert one.log_hash(session_id) == same.log_hash(session_id)
    assert one.log_hash(session_id) != other.log_hash(session_id)
    hashed = one.log_hash(session_id)
    assert len(hashed) == 16
    assert session_id not in hashed
    assert not hashlib.sha256(session_id.encode()).hexdigest().startswith(hashed)


def test_log_records_carry_the_event_and_hash(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(_routes, memory_store, secret_key=SECRET)
    with caplog.at_level(logging.INFO, logger="wsgi_kvsession"):
        client.get("/set")
    (record,) = [r for r in caplog.records if getattr(r, "session_event", None)]
    assert record.session_event == "created"  # type: ignore[attr-defined]
    session_id = _cookie_id(client)
    assert record.session_hash == IdCodec(secret_key=SECRET).log_hash(session_id)  # type: ignore[attr-defined]
    assert session_id not in record.getMessage()


def test_a_failing_hook_is_logged_and_never_breaks_the_request(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(info: SessionEventInfo) -> None:
        raise RuntimeError("audit service down")

    client = client_for(_routes, memory_store, on_event=hook)
    with caplog.at_level(logging.ERROR, logger="wsgi_kvsession"):
        assert client.get("/set").status_code == 200
    assert client.get("/read").text == "{'a': 1}"
    assert any("on_event hook failed" in r.getMessage() for r in caplog.records)


def test_on_event_must_be_callable(memory_store: MemoryStore) -> None:
    with pytest.raises(TypeError, match="on_event"):
        client_for(_routes, memory_store, on_event="myapp.audit")
