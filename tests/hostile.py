"""Hostile input for the middleware, and the checks that it survives it.

Shared by ``test_hostile_input.py`` (the embedded stores, with a look at the
disk) and ``test_hostile_stores.py`` (the server stores and the simplekv
adapter, with a look at the raw bytes on the server): what a hostile ``Cookie``
header or stored record looks like (hypothesis strategies and hand-made
cases), a WSGI caller that hands the raw header over unsanitised, and one
``check_*`` function per property, parametrised by store and key prefix so
that every backend is held to the same rules (DESIGN.md rules 2, 3, 4, 14).

Records are built with the package's own ``envelope.pack`` (never by hand), so
these checks follow the record layout wherever it goes.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import secrets
import string
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from itsdangerous import Signer
from werkzeug.http import parse_cookie
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from wsgi_kvsession import KVSessionMiddleware, Session
from wsgi_kvsession.envelope import Envelope, pack
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.serializers import MsgpackSerializer, Serializer
from wsgi_kvsession.stores import Store

from .support import CountingStore, session_app

PREFIX = "session:"
B64_ALPHABET = string.ascii_letters + string.digits + "-_"
#: A new ID as the middleware issues it by default: 256 bits, base64url, no padding.
NEW_ID = re.compile(r"[A-Za-z0-9_-]{43}")
#: What rule 2 lets through to the store (without signing).
WELL_FORMED = re.compile(r"[A-Za-z0-9_-]{22,128}")
SECRET = "k" * 32
MAGIC = b"KVS\x01"

HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Writes bytes under a store key (through the store, or straight into its server).
Planter = Callable[[str, bytes], None]
#: Reads back what is under a store key, in the form the planter wrote it.
Peeker = Callable[[str], bytes | None]


# --------------------------------------------------------------------------- calling the app


@dataclass
class Result:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def session_cookies(self) -> list[str]:
        """The values of every ``Set-Cookie`` for ``session``."""
        values = []
        for name, value in self.headers:
            if name.lower() == "set-cookie" and value.startswith("session="):
                values.append(value.split(";", 1)[0].partition("=")[2])
        return values


def call(app: Callable[..., Iterable[bytes]], cookie: str | None, query: str = "") -> Result:
    """Call ``app`` like a WSGI server would, with ``cookie`` as the raw header
    (no test client gets to sanitise it on the way in)."""
    environ = EnvironBuilder(path="/", query_string=query, method="GET").get_environ()
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    captured: dict[str, Any] = {}
    written: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        captured["status"] = status
        captured["headers"] = list(headers)
        return written.append

    app_iter = app(environ, start_response)
    try:
        body = b"".join(app_iter)
    finally:
        close = getattr(app_iter, "close", None)
        if close is not None:
            close()
    return Result(int(captured["status"][:3]), captured["headers"], b"".join(written) + body)


Seen = list[tuple[dict[str, Any], bool]]


def counter_handler(seen: Seen) -> Callable[[Session, Request], Any]:
    """Reads the session (recording what it saw), then increments ``n``."""

    def handler(session: Session, request: Request) -> str:
        seen.append((dict(session), session.new))
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    return handler


def data_handler(seen: Seen) -> Callable[[Session, Request], Any]:
    """Reads the session (recording what it saw); writes ``fresh`` on ``?write=1``."""

    def handler(session: Session, request: Request) -> str:
        seen.append((dict(session), session.new))
        if request.args.get("write"):
            session["fresh"] = 1
        return "ok"

    return handler


def middleware(
    handler: Callable[[Session, Request], Any], store: Store, **options: Any
) -> KVSessionMiddleware:
    options.setdefault("cookie_secure", False)
    return KVSessionMiddleware(session_app(handler), store, **options)


def sent_values(header: str) -> set[str]:
    """What cookie ``session`` in ``header`` could be read as: by Werkzeug's
    parser (unquoting, unescaping) and by a plain split on ``;``."""
    if "session" not in header:
        return set()
    try:
        values = set(parse_cookie(header).getlist("session"))
    except UnicodeError:  # Werkzeug insists on UTF-8; an ID is ASCII anyway
        ascii_header = header.encode("ascii", "replace").decode("ascii")
        values = set(parse_cookie(ascii_header).getlist("session"))
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip() == "session":
            values.add(value.strip())
    return values


def assert_store_keys_hashed(counting: CountingStore, key_prefix: str = PREFIX) -> None:
    """Rule 4: every key the store was given is ``key_prefix`` + 64 hex digits."""
    shape = re.compile(re.escape(key_prefix) + "[0-9a-f]{64}")
    for method, key in counting.calls:
        assert shape.fullmatch(key), f"store.{method} got a key that is not hashed: {key!r}"


def random_id() -> str:
    """A well-formed ID that no store has (distinct from any the middleware issues:
    it starts with ``K`` and is one character longer)."""
    return "K" + "".join(B64_ALPHABET[b % 64] for b in os.urandom(43))


# --------------------------------------------------------------------------- cookie strategies

_b64 = st.text(alphabet=B64_ALPHABET, min_size=1, max_size=8)

cookie_values = st.one_of(
    st.text(max_size=80),
    # What a WSGI server really hands over: UTF-8 bytes decoded as latin-1.
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass").decode("latin-1")),
    st.sampled_from(
        [
            "",
            "../../../../etc/passwd",
            "..%2F..%2F..%2Fetc%2Fpasswd",
            "..\\..\\windows",
            "%2e%2e%2f",
            "/etc/passwd",
            ".",
            "..",
            ".locks",
            ".tmp-0000",
            "\x00",
            "a\x00b",
            '"',
            '""',
            "' OR 1=1 --",
            "; DROP TABLE kvsession; --",
            "*",
            "%00",
            " ",
            "\t",
            "\r\n",
            "session=",
            "\u2028",
            "\ud800",
            "session:" + "0" * 64,  # a store key itself, sent as an ID
        ]
    ),
    # The valid alphabet, but too short or too long.
    st.text(alphabet=B64_ALPHABET, max_size=21),
    st.text(alphabet=B64_ALPHABET, min_size=129, max_size=400),
    # Valid-looking IDs that no store knows.
    st.text(alphabet=B64_ALPHABET, min_size=43, max_size=43),
    st.text(alphabet=B64_ALPHABET, min_size=22, max_size=128),
    # Path traversal dressed in the ID alphabet plus one separator.
    st.tuples(_b64, st.sampled_from(["/", "../", "..%2F", ".", "%", "\\"]), _b64).map("".join),
    # Huge values, up to ~16 KB.
    st.tuples(st.text(min_size=1, max_size=4), st.integers(1000, 16_384)).map(
        lambda t: (t[0] * t[1])[: t[1]]
    ),
)


def quote(value: str, how: int) -> str:
    """``value`` bare (0), in plain quotes (1), or quoted with escapes (2)."""
    if how == 1:
        return f'"{value}"'
    if how == 2:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


cookie_pairs = st.tuples(
    st.sampled_from(["session", "session", "session", "Session", " session", "session ", "other"]),
    st.sampled_from(["=", "=", " = ", "==", ""]),
    cookie_values,
    st.integers(0, 2),
).map(lambda t: f"{t[0]}{t[1]}{quote(t[2], t[3])}")

cookie_headers = st.one_of(
    st.text(max_size=200),
    cookie_values.map(lambda v: f"session={v}"),
    st.lists(cookie_pairs, min_size=1, max_size=6).flatmap(
        lambda pairs: st.sampled_from(["; ", ";", ",", " ;; ", "\x00"]).map(
            lambda sep: sep.join(pairs)
        )
    ),
)

#: Malformed values that still parse as one cookie value each (so that the
#: junk cannot swallow its neighbour in the header).
malformed_values = st.one_of(
    st.text(
        alphabet=string.printable.translate({ord(c): None for c in ';,"\\ \t\n\r\x0b\x0c'}),
        max_size=60,
    ),
    st.sampled_from(["../../etc/passwd", "..%2F..%2F", "%00", "a" * 21, "a" * 129, "*"]),
).filter(lambda v: not WELL_FORMED.fullmatch(v))

#: Well-formed IDs (rule 2 lets them through) that no store holds.
unknown_ids = st.text(alphabet=B64_ALPHABET, min_size=22, max_size=128)


# --------------------------------------------------------------------------- cookie checks


def check_garbage_cookie(store: Store, header: str, key_prefix: str = PREFIX) -> None:
    """A garbage ``Cookie`` header gives a new, working session: never a 5xx,
    never the sent value adopted, never an unhashed or malformed key in the store."""
    counting = CountingStore(store)
    seen: Seen = []
    app = middleware(counter_handler(seen), counting, key_prefix=key_prefix)
    sent = sent_values(header)

    result = call(app, header)

    assert result.status == 200
    assert result.body == b"1"
    assert seen == [({}, True)], "an unknown or malformed cookie must give a new session"
    cookies = result.session_cookies()
    assert len(cookies) == 1
    (new_id,) = cookies
    assert NEW_ID.fullmatch(new_id)
    assert new_id not in sent, "strict mode: the ID the client sent is never adopted"
    # Rule 2: only a well-formed value may reach store.load, and only hashed.
    allowed_loads = {store_key(key_prefix, v) for v in sent if WELL_FORMED.fullmatch(v)}
    loads = {key for method, key in counting.calls if method == "load"}
    assert loads <= allowed_loads, "a malformed cookie value reached store.load"
    # Rule 4: the store sees hashed keys only; the insert is the new ID's.
    assert_store_keys_hashed(counting, key_prefix)
    assert ("insert", store_key(key_prefix, new_id)) in counting.calls

    # The session the middleware issued works.
    again = call(app, f"session={new_id}")
    assert again.status == 200
    assert again.body == b"2"
    assert again.session_cookies() == []
    assert_store_keys_hashed(counting, key_prefix)


def check_unknown_id(store: Store, session_id: str, key_prefix: str = PREFIX) -> None:
    """A well-formed ID the store does not hold is looked up (hashed) and never
    adopted: the write goes under a new ID, nothing is written under the sent one."""
    counting = CountingStore(store)
    seen: Seen = []
    app = middleware(counter_handler(seen), counting, key_prefix=key_prefix)
    old_key = store_key(key_prefix, session_id)

    result = call(app, f"session={session_id}")

    assert result.status == 200
    assert seen == [({}, True)]
    (new_id,) = result.session_cookies()
    assert NEW_ID.fullmatch(new_id)
    assert new_id != session_id, "strict mode: an unknown ID is never adopted"
    assert counting.calls[0] == ("load", old_key)
    assert [c for c in counting.calls if c[1] == old_key] == [("load", old_key)]
    assert ("insert", store_key(key_prefix, new_id)) in counting.calls
    assert_store_keys_hashed(counting, key_prefix)
    assert store.load(old_key) is None


def check_malformed_duplicates(
    store: Store, junk: list[str], junk_first: bool, key_prefix: str = PREFIX
) -> None:
    """Malformed values for the same cookie name do not hide the valid one."""
    counting = CountingStore(store)
    seen: Seen = []
    app = middleware(counter_handler(seen), counting, key_prefix=key_prefix)
    (session_id,) = call(app, None).session_cookies()
    pairs = [f"session={quote(v, 2)}" for v in junk]
    pairs.insert(len(pairs) if junk_first else 0, f"session={session_id}")
    counting.reset()

    result = call(app, "; ".join(pairs))

    assert result.status == 200
    assert result.body == b"2"
    assert result.session_cookies() == []
    assert [m for m, _ in counting.calls] == ["load", "update"]
    assert {k for _, k in counting.calls} == {store_key(key_prefix, session_id)}


def check_signed_garbage(store: Store, header: str, key_prefix: str = PREFIX) -> None:
    """With signing on, garbage never even reaches ``store.load``."""
    counting = CountingStore(store)
    seen: Seen = []
    app = middleware(counter_handler(seen), counting, secret_key=SECRET, key_prefix=key_prefix)

    result = call(app, header)

    assert result.status == 200
    assert seen == [({}, True)]
    assert "load" not in counting.methods(), "an unsigned value reached store.load"
    (cookie,) = result.session_cookies()
    session_id, dot, _ = cookie.partition(".")
    assert dot
    assert NEW_ID.fullmatch(session_id)
    assert cookie not in sent_values(header)
    assert_store_keys_hashed(counting, key_prefix)
    assert call(app, f"session={cookie}").body == b"2"


def signed_by(key: str, session_id: str) -> str:
    return Signer(key, salt="wsgi_kvsession.cookie").sign(session_id).decode("ascii")


def _flip(char: str) -> str:
    return "A" if char != "A" else "B"


def tampered(cookie: str) -> dict[str, str]:
    """Variants of the signed ``cookie`` that must all be refused, by label."""
    session_id, _, sig = cookie.partition(".")
    other_id = ("B" if session_id[0] != "B" else "C") + session_id[1:]
    return {
        "no signature": session_id,
        "empty signature": session_id + ".",
        "first signature char changed": f"{session_id}.{_flip(sig[0])}{sig[1:]}",
        "middle signature char changed": f"{session_id}.{sig[:10]}{_flip(sig[10])}{sig[11:]}",
        "truncated signature": f"{session_id}.{sig[:-4]}",
        "signature of another ID": f"{other_id}.{sig}",
        "extra dot": f"{session_id}.{sig}.{sig}",
        "double dot": f"{session_id}..{sig}",
        "signed by a foreign key": signed_by("x" * 32, session_id),
        "signed without salt": Signer(SECRET).sign(session_id).decode("ascii"),
        "signature only": sig,
        "dot first": "." + cookie,
    }


def check_tampered_signatures(store: Store, key_prefix: str = PREFIX) -> None:
    """No tampered or foreign-signed variant of a live cookie reaches the store,
    and the live session stays as it was."""
    counting = CountingStore(store)
    seen: Seen = []
    app = middleware(counter_handler(seen), counting, secret_key=SECRET, key_prefix=key_prefix)
    (cookie,) = call(app, None).session_cookies()
    session_id = cookie.partition(".")[0]
    assert call(app, f"session={cookie}").body == b"2"  # the genuine cookie works

    for label, value in tampered(cookie).items():
        counting.reset()
        seen.clear()
        result = call(app, f"session={value}")
        assert result.status == 200, label
        assert "load" not in counting.methods(), f"{label}: reached store.load"
        assert seen == [({}, True)], label
        (new_cookie,) = result.session_cookies()
        assert new_cookie.partition(".")[0] != session_id, label
        assert_store_keys_hashed(counting, key_prefix)

    # The genuine cookie still reads the untouched session.
    assert call(app, f"session={cookie}").body == b"3"


# --------------------------------------------------------------------------- stored bytes


class _MarkerPickle:
    """Unpickling this creates the directory at ``path``: the proof that pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


#: Created only if stored bytes are ever unpickled. Unique to this process, in
#: the system's temporary directory (which exists), so that the bomb needs no
#: setup to go off.
MARKER = Path(tempfile.gettempdir()) / f"kvs-pickle-ran-{os.getpid()}-{secrets.token_hex(4)}"
#: Older than the default absolute timeout (30 days), with a margin.
LONG_AGO = 40 * 24 * 3600


def pickle_bomb() -> bytes:
    return pickle.dumps(_MarkerPickle(MARKER))


def assert_pickle_never_ran() -> None:
    if MARKER.exists():
        MARKER.rmdir()  # so that one failure does not fail every later test
        pytest.fail("stored bytes were unpickled: the marker directory appeared")


def record(
    data: bytes,
    *,
    serializer: str = "json",
    created: float | None = None,
    written: float | None = None,
    permanent: bool = False,
    user_id: str | int | None = None,
) -> bytes:
    """A well-formed envelope around ``data``."""
    now = time.time()
    return pack(
        Envelope(
            now if created is None else created,
            now if written is None else written,
            permanent,
            user_id,
            serializer,
            data,
        )
    )


VALID_DATA = b'{"user":"alice","cart":[1,2,3],"when":{" dt":"2024-01-01T00:00:00"}}'
VALID = record(VALID_DATA, user_id="alice")
VALID_HEADER = len(VALID) - len(VALID_DATA)


def old_json_layout(data: bytes) -> bytes:
    """A record of the earlier layout (length-prefixed JSON metadata)."""
    now = time.time()
    meta = json.dumps({"c": now, "w": now, "p": False, "u": None, "s": "json"}).encode()
    return MAGIC + struct.pack(">I", len(meta)) + meta + data


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
tag_names = st.sampled_from(
    [" t", " s", " fs", " b", " u", " dt", " d", " tm", " dec", " di", " m"]
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        # Values that look like the serializer's type tags.
        st.builds(lambda tag, value: {tag: value}, tag_names, children),
    ),
    max_leaves=12,
)
json_mappings = st.dictionaries(st.text(max_size=8), json_values, max_size=5)

#: JSON documents that do not decode to a mapping (" di" would unwrap one).
non_mappings = st.one_of(
    json_scalars,
    st.lists(json_values, max_size=4),
    st.builds(lambda tag, value: {tag: value}, tag_names.filter(lambda t: t != " di"), json_values),
)

user_ids = st.one_of(st.none(), st.text(max_size=30), st.integers(-(2**70), 2**70))

#: Records that cannot be a live session of the default JSON serializer.
garbage_records = st.one_of(
    st.binary(max_size=2048).filter(lambda b: not b.startswith(MAGIC)),
    # Valid records cut short anywhere.
    st.integers(0, len(VALID) - 1).map(lambda n: VALID[:n]),
    # Timestamps that are not finite, or a creation past the absolute timeout.
    st.builds(
        lambda created, written, permanent, user_id: record(
            b'{"a":1}', created=created, written=written, permanent=permanent, user_id=user_id
        ),
        st.one_of(
            st.sampled_from([math.nan, math.inf, -math.inf]),
            st.floats(max_value=time.time() - LONG_AGO),
        ),
        st.floats(),
        st.booleans(),
        user_ids,
    ),
    st.builds(
        lambda written: record(b'{"a":1}', written=written),
        st.sampled_from([math.nan, math.inf, -math.inf]),
    ),
    # Data that is JSON but not a mapping.
    non_mappings.map(lambda v: record(json.dumps(v).encode())),
    # Bytes that are not JSON at all.
    st.binary(max_size=256)
    .filter(lambda b: not b.lstrip().startswith((b"{", b"\xef", b"\xff", b"\xfe", b"\x00")))
    .filter(lambda b: b[1:2] != b"\x00")
    .map(record),
    # Another serializer's name on the envelope.
    st.tuples(
        st.text(alphabet=string.ascii_letters + string.digits + " -_", max_size=20).filter(
            lambda name: name != "json"
        ),
        st.sampled_from([b'{"a":1}', b"{}", pickle_bomb(), pickle.dumps({"a": 1})]),
    ).map(lambda t: record(t[1], serializer=t[0])),
)


def overwrite(value: bytes, edits: list[tuple[int, int]]) -> bytes:
    """``value`` with the byte at each ``position`` (mod its length) set to ``byte``."""
    buffer = bytearray(value)
    for position, byte in edits:
        buffer[position % len(buffer)] = byte
    return bytes(buffer)


#: Records that may or may not still be readable: damaged headers, random
#: bytes behind the magic, a record of an older layout.
damaged_records = st.one_of(
    st.lists(st.tuples(st.integers(0, VALID_HEADER - 1), st.integers(0, 255)), max_size=4).map(
        lambda edits: overwrite(VALID, edits)
    ),
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4).map(
        lambda edits: overwrite(VALID, edits)
    ),
    st.binary(max_size=512).map(lambda b: MAGIC + b),
    st.tuples(st.integers(0, len(VALID)), st.binary(min_size=1, max_size=64)).map(
        lambda t: VALID[: t[0]] + t[1] + VALID[t[0] :]
    ),
    st.sampled_from([old_json_layout(b'{"a":1}'), old_json_layout(pickle_bomb())]),
)


def deep_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HANDCRAFTED: dict[str, bytes] = {
    "raw pickle bomb": pickle_bomb(),
    "pickle bomb as json data": record(pickle_bomb()),
    "pickle bomb under the pickle serializer": record(pickle_bomb(), serializer="pickle"),
    "pickle of a dict under the pickle serializer": record(
        pickle.dumps({"a": 1}), serializer="pickle"
    ),
    "valid data under the pickle serializer": record(b'{"a":1}', serializer="pickle"),
    "valid data under the msgpack serializer": record(b'{"a":1}', serializer="msgpack"),
    "valid data under no serializer name": record(b'{"a":1}', serializer=""),
    "empty value": b"",
    "magic only": MAGIC,
    "magic and zeros": MAGIC + bytes(64),
    "truncated: magic and a few bytes": VALID[:8],
    "truncated: half the header": VALID[: VALID_HEADER // 2],
    "truncated: header without data": VALID[:VALID_HEADER],
    "truncated: one byte short": VALID[:-1],
    "a record of the earlier JSON-metadata layout": old_json_layout(b'{"a":1}'),
    "foreign JSON document": json.dumps({"user": "alice", "_permanent": True}).encode(),
    "data is a list": record(b"[1,2,3]"),
    "data is a string": record(b'"session"'),
    "data is a number": record(b"12345"),
    "data is null": record(b"null"),
    "tuple tag on an int": record(b'{" t":5}'),
    "bytes tag on an int": record(b'{" b":12}'),
    "escaped dict tag on an int": record(b'{" di":5}'),
    "deeply nested lists (100k)": record(deep_list(100_000)),
    "deeply nested lists in the data (5000)": record(b'{"a":' + deep_list(5000) + b"}"),
    "deeply nested dicts in the data (5000)": record(b'{"a":' * 5000 + b"1" + b"}" * 5000),
    "invalid utf-8 data": record(b'{"a":"\xff\xfe"}'),
    "created is NaN": record(b'{"a":1}', created=math.nan),
    "created is infinite": record(b'{"a":1}', created=math.inf),
    "created is minus infinity": record(b'{"a":1}', created=-math.inf),
    "written is NaN": record(b'{"a":1}', written=math.nan),
    "created long ago (absolute timeout passed)": record(b'{"a":1}', created=1.0),
}

#: Foreign data inside a valid envelope that decodes, but not to something the
#: session can hold: reading it must not be fatal (it may be refused as a whole).
FOREIGN_DATA: dict[str, bytes] = {
    "nested bad tags": record(b'{"a":{" b":12}}'),
    "bytes tag with bad base64": record(b'{"a":{" b":"***"}}'),
    "uuid tag on an int": record(b'{"a":{" u":5}}'),
    "decimal tag on garbage": record(b'{"a":{" dec":"one"}}'),
    "set tag with unhashable items": record(b'{"a":{" s":[[1]]}}'),
    "datetime tag on garbage": record(b'{"a":{" dt":"yesterday"}}'),
    "tag after a space": record(b'{"a":{ " t":5}}'),
    "escaped tag key": record(b'{"a":{"\\u0020t":5}}'),
    "huge decimal exponent": record(b'{"a":{" dec":"1e999999999"}}'),
    "signalling NaN decimal": record(b'{"a":{" dec":"sNaN"}}'),
    "user id is a huge int": record(b'{"a":1}', user_id=10**4000),
    "user id is an odd string": record(b'{"a":1}', user_id="\x00\u00e9\u2028" + "x" * 5000),
}

#: Records that decode but that the encoder would refuse to write back: taking
#: them would make every later save of the session fail, so they are refused.
UNENCODABLE: dict[str, bytes] = {
    "nested lists the decoder takes but the encoder does not (600)": record(
        b'{"a":' + deep_list(600) + b"}"
    ),
    "NaN in the data": record(b'{"a":NaN}'),
    "Infinity in the data": record(b'{"a":[1,-Infinity]}'),
}


def msgpack_serializer() -> Serializer:
    pytest.importorskip("msgspec")
    return MsgpackSerializer()


def msgpack_record(data: bytes) -> bytes:
    return record(data, serializer="msgpack")


#: Records the msgpack serializer must refuse (read with ``serializer=msgpack``).
MSGPACK_GARBAGE: dict[str, Callable[[], bytes]] = {
    "pickle bomb": lambda: msgpack_record(pickle_bomb()),
    "json data": lambda: msgpack_record(b'{"a":1}'),
    "json serializer name": lambda: record(b"\x81\xa1a\x01"),
    "array at the top": lambda: msgpack_record(b"\x93\x01\x02\x03"),
    "truncated map": lambda: msgpack_record(b"\x82\xa1a\x01"),
    "bad tag": lambda: msgpack_record(b"\x81\xa1a\x81\xa2 b\x0c"),
    "deeply nested arrays": lambda: msgpack_record(b"\x81\xa1a" + b"\x91" * 5000 + b"\x90"),
}

#: Msgpack records that may be read or refused, but never fatally.
MSGPACK_FOREIGN: dict[str, Callable[[], bytes]] = {
    "integer keys": lambda: msgpack_record(b"\x81\x01\x02"),
    "ext type": lambda: msgpack_record(b"\x81\xa1a\xd5\x05xx"),
    "timestamp ext": lambda: msgpack_record(b"\x81\xa1a\xd6\xff\x00\x00\x00\x01"),
    "NaN": lambda: msgpack_record(b"\x81\xa1a\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"),
}


# --------------------------------------------------------------------------- stored-bytes checks


def store_planter(store: Store) -> Planter:
    """Plants through the store's own insert (its own header, if any, around the value)."""

    def plant(key: str, value: bytes) -> None:
        assert store.insert(key, value, time.time() + 3600)

    return plant


def store_peeker(store: Store) -> Peeker:
    def peek(key: str) -> bytes | None:
        found = store.load(key)
        return None if found is None else found.value

    return peek


def plant(
    store: Store, value: bytes, key_prefix: str = PREFIX, planter: Planter | None = None
) -> str:
    """Put ``value`` under a fresh, known ID; return the ID."""
    session_id = random_id()
    (planter or store_planter(store))(store_key(key_prefix, session_id), value)
    return session_id


def check_unreadable(
    store: Store,
    value: bytes,
    *,
    key_prefix: str = PREFIX,
    planter: Planter | None = None,
    peeker: Peeker | None = None,
    **options: Any,
) -> None:
    """``value`` planted under a known ID reads as no session; a write creates a
    new ID rather than adopting the corrupt one, and the corrupt record is left
    as it was (or removed), never overwritten with the user's data."""
    counting = CountingStore(store)
    seen: Seen = []
    app = middleware(data_handler(seen), counting, key_prefix=key_prefix, **options)
    session_id = plant(store, value, key_prefix, planter)
    old_key = store_key(key_prefix, session_id)

    read = call(app, f"session={session_id}")
    assert read.status == 200
    assert seen[-1] == ({}, True), "a corrupt record must read as no session"
    assert read.session_cookies() == []

    write = call(app, f"session={session_id}", query="write=1")
    assert write.status == 200
    assert seen[-1] == ({}, True)
    (new_id,) = write.session_cookies()
    assert NEW_ID.fullmatch(new_id)
    assert new_id != session_id, "strict mode: a corrupt record's ID is never adopted"
    assert ("update", old_key) not in counting.calls
    assert ("insert", old_key) not in counting.calls
    assert ("touch", old_key) not in counting.calls
    assert_store_keys_hashed(counting, key_prefix)
    assert (peeker or store_peeker(store))(old_key) in (None, value), (
        "the corrupt record was overwritten in place"
    )

    after = call(app, f"session={new_id}")
    assert after.status == 200
    assert seen[-1] == ({"fresh": 1}, False)
    assert_pickle_never_ran()


def check_read_or_refused(
    store: Store,
    value: bytes,
    *,
    key_prefix: str = PREFIX,
    planter: Planter | None = None,
    peeker: Peeker | None = None,
    **options: Any,
) -> None:
    """``value`` planted under a known ID is either read as a session that then
    keeps working under its ID, or refused as a whole (no session, a new ID on
    write, the record left as it was); never a 5xx, never unpickled."""
    seen: Seen = []
    app = middleware(data_handler(seen), store, key_prefix=key_prefix, **options)
    session_id = plant(store, value, key_prefix, planter)

    write = call(app, f"session={session_id}", query="write=1")
    assert write.status == 200
    loaded, new = seen[-1]
    if new:
        assert loaded == {}
        (new_id,) = write.session_cookies()
        assert NEW_ID.fullmatch(new_id)
        assert new_id != session_id
        assert (peeker or store_peeker(store))(store_key(key_prefix, session_id)) in (
            None,
            value,
        ), "a refused record was overwritten in place"
        assert call(app, f"session={new_id}").status == 200
        assert seen[-1] == ({"fresh": 1}, False)
    else:
        # Kept under its ID (a permanent one gets its cookie refreshed).
        assert write.session_cookies() in ([], [session_id])
        again = call(app, f"session={session_id}")
        assert again.status == 200
        assert seen[-1][0].get("fresh") == 1
        assert seen[-1][0].keys() == loaded.keys() | {"fresh"}
    assert_pickle_never_ran()
