"""Hostile input: garbage cookies and corrupt store records never hurt the middleware.

DESIGN.md rules 2, 3, 4 and 14, checked against the three embedded stores
(memory, files, SQLite) by calling the WSGI application directly with a
hand-built ``environ``, so that no test client can sanitise the ``Cookie``
header on the way in.

Hypothesis and function-scoped fixtures do not mix, so every example builds
its own store in a fresh directory under one module-level temporary root
(removed by a module-scoped fixture).

"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import string
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import Signer
from werkzeug.http import parse_cookie
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from wsgi_kvsession import KVSessionMiddleware, Session
from wsgi_kvsession.envelope import Envelope, pack
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.serializers import MsgpackSerializer, Serializer
from wsgi_kvsession.stores import FileStore, MemoryStore, SQLiteStore, Store

from .support import CountingStore, session_app

STORE_KINDS = ["memory", "file", "sqlite"]
PREFIX = "session:"
B64_ALPHABET = string.ascii_letters + string.digits + "-_"
#: A new ID as the middleware issues it by default: 256 bits, base64url, no padding.
NEW_ID = re.compile(r"[A-Za-z0-9_-]{43}")
#: What rule 2 lets through to the store (without signing).
WELL_FORMED = re.compile(r"[A-Za-z0-9_-]{22,128}")
#: What rule 4 lets the store see.
STORE_KEY = re.compile(r"session:[0-9a-f]{64}")
#: What may appear in a FileStore directory.
FILE_ENTRY = re.compile(
    r"session%3A[0-9a-f]{64}|\.locks|\.locks/\d\d"
    # The per-user index: a directory per hashed user ID, a marker per store key.
    r"|\.users|\.users/[0-9a-f]{64}|\.users/[0-9a-f]{64}/session%3A[0-9a-f]{64}"
)
SECRET = "k" * 32
MAGIC = b"KVS\x01"

_TMP_ROOT = Path(tempfile.mkdtemp(prefix="kvs-hostile-"))

HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def _tmp_root() -> Iterator[None]:
    yield
    shutil.rmtree(_TMP_ROOT, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


@dataclass
class Sandbox:
    """A store in its own directory, plus what it may touch on disk."""

    root: Path
    store: Store
    allowed: list[Path] = field(default_factory=list)

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)


def make_sandbox(kind: str) -> Sandbox:
    root = Path(tempfile.mkdtemp(dir=_TMP_ROOT))
    if kind == "memory":
        return Sandbox(root, MemoryStore())
    if kind == "file":
        directory = root / "files"
        return Sandbox(root, FileStore(directory), [directory])
    directory = root / "sqlite"
    directory.mkdir()
    return Sandbox(root, SQLiteStore(directory / "sessions.db"), [directory])


def snapshot(top: Path) -> set[Path]:
    return {Path(dirpath) / name for dirpath, dirs, files in os.walk(top) for name in dirs + files}


def assert_no_stray_files(sandbox: Sandbox, before: set[Path]) -> None:
    """Nothing appeared under the temporary root outside the store's own directory,
    and the FileStore directory holds only hashed record names and its lock files."""
    new = snapshot(_TMP_ROOT) - before
    stray = [p for p in new if not any(p == d or d in p.parents for d in sandbox.allowed)]
    assert stray == [], f"files created outside the store directory: {stray}"
    if isinstance(sandbox.store, FileStore):
        directory = sandbox.allowed[0]
        for path in snapshot(directory):
            name = path.relative_to(directory).as_posix()
            assert FILE_ENTRY.fullmatch(name), f"unexpected entry in the FileStore: {name!r}"


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
    """Call ``app`` like a WSGI server would, with ``cookie`` as the raw header."""
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


def counter_handler(seen: list[tuple[dict[str, Any], bool]]) -> Callable[[Session, Request], Any]:
    """Reads the session (recording what it saw), then increments ``n``."""

    def handler(session: Session, request: Request) -> str:
        seen.append((dict(session), session.new))
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

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


def assert_store_keys_hashed(counting: CountingStore) -> None:
    for method, key in counting.calls:
        assert STORE_KEY.fullmatch(key), f"store.{method} got a key that is not hashed: {key!r}"


# --------------------------------------------------------------------------- strategies

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


def _quote(value: str, how: int) -> str:
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
).map(lambda t: f"{t[0]}{t[1]}{_quote(t[2], t[3])}")

cookie_headers = st.one_of(
    st.text(max_size=200),
    cookie_values.map(lambda v: f"session={v}"),
    st.lists(cookie_pairs, min_size=1, max_size=6).flatmap(
        lambda pairs: st.sampled_from(["; ", ";", ",", " ;; ", "\x00"]).map(
            lambda sep: sep.join(pairs)
        )
    ),
)


# --------------------------------------------------------------------------- cookie headers


@pytest.mark.parametrize("kind", STORE_KINDS)
@HYPOTHESIS
@given(header=cookie_headers)
def test_garbage_cookie_header_is_harmless(kind: str, header: str) -> None:
    sandbox = make_sandbox(kind)
    try:
        before = snapshot(_TMP_ROOT)
        counting = CountingStore(sandbox.store)
        seen: list[tuple[dict[str, Any], bool]] = []
        app = middleware(counter_handler(seen), counting)
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
        allowed_loads = {store_key(PREFIX, v) for v in sent if WELL_FORMED.fullmatch(v)}
        loads = {key for method, key in counting.calls if method == "load"}
        assert loads <= allowed_loads, "a malformed cookie value reached store.load"
        # Rule 4: the store sees hashed keys only; the insert is the new ID's.
        assert_store_keys_hashed(counting)
        assert ("insert", store_key(PREFIX, new_id)) in counting.calls

        # The session the middleware issued works.
        again = call(app, f"session={new_id}")
        assert again.status == 200
        assert again.body == b"2"
        assert again.session_cookies() == []
        assert_store_keys_hashed(counting)
        assert_no_stray_files(sandbox, before)
    finally:
        sandbox.close()


#: Malformed values that still parse as one cookie value each (so that the
#: junk cannot swallow its neighbour in the header).
malformed_values = st.one_of(
    st.text(
        alphabet=string.printable.translate({ord(c): None for c in ';,"\\ \t\n\r\x0b\x0c'}),
        max_size=60,
    ),
    st.sampled_from(["../../etc/passwd", "..%2F..%2F", "%00", "a" * 21, "a" * 129, "*"]),
).filter(lambda v: not WELL_FORMED.fullmatch(v))


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=15)
@given(junk=st.lists(malformed_values, min_size=1, max_size=3), junk_first=st.booleans())
def test_malformed_duplicates_do_not_hide_the_valid_cookie(
    kind: str, junk: list[str], junk_first: bool
) -> None:
    sandbox = make_sandbox(kind)
    try:
        counting = CountingStore(sandbox.store)
        seen: list[tuple[dict[str, Any], bool]] = []
        app = middleware(counter_handler(seen), counting)
        (session_id,) = call(app, None).session_cookies()
        pairs = [f"session={_quote(v, 2)}" for v in junk]
        pairs.insert(len(pairs) if junk_first else 0, f"session={session_id}")
        counting.reset()

        result = call(app, "; ".join(pairs))

        assert result.status == 200
        assert result.body == b"2"
        assert result.session_cookies() == []
        assert [m for m, _ in counting.calls] == ["load", "update"]
        assert {k for _, k in counting.calls} == {store_key(PREFIX, session_id)}
    finally:
        sandbox.close()


# --------------------------------------------------------------------------- signing


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=20)
@given(header=cookie_headers)
def test_signed_garbage_never_reaches_the_store(kind: str, header: str) -> None:
    sandbox = make_sandbox(kind)
    try:
        counting = CountingStore(sandbox.store)
        seen: list[tuple[dict[str, Any], bool]] = []
        app = middleware(counter_handler(seen), counting, secret_key=SECRET)

        result = call(app, header)

        assert result.status == 200
        assert seen == [({}, True)]
        assert "load" not in counting.methods(), "an unsigned value reached store.load"
        (cookie,) = result.session_cookies()
        session_id, dot, _ = cookie.partition(".")
        assert dot
        assert NEW_ID.fullmatch(session_id)
        assert cookie not in sent_values(header)
        assert_store_keys_hashed(counting)
        assert call(app, f"session={cookie}").body == b"2"
    finally:
        sandbox.close()


def _signed_by(key: str, session_id: str) -> str:
    return Signer(key, salt="wsgi_kvsession.cookie").sign(session_id).decode("ascii")


def _flip(char: str) -> str:
    return "A" if char != "A" else "B"


def _tampered(cookie: str) -> dict[str, str]:
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
        "signed by a foreign key": _signed_by("x" * 32, session_id),
        "signed without salt": Signer(SECRET).sign(session_id).decode("ascii"),
        "signature only": sig,
        "dot first": "." + cookie,
    }


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_wrong_or_missing_signature_never_reaches_the_store(kind: str) -> None:
    sandbox = make_sandbox(kind)
    try:
        counting = CountingStore(sandbox.store)
        seen: list[tuple[dict[str, Any], bool]] = []
        app = middleware(counter_handler(seen), counting, secret_key=SECRET)
        (cookie,) = call(app, None).session_cookies()
        session_id = cookie.partition(".")[0]
        assert call(app, f"session={cookie}").body == b"2"  # the genuine cookie works

        for label, value in _tampered(cookie).items():
            counting.reset()
            seen.clear()
            result = call(app, f"session={value}")
            assert result.status == 200, label
            assert "load" not in counting.methods(), f"{label}: reached store.load"
            assert seen == [({}, True)], label
            (new_cookie,) = result.session_cookies()
            assert new_cookie.partition(".")[0] != session_id, label

        # The genuine cookie still reads the untouched session.
        assert call(app, f"session={cookie}").body == b"3"
    finally:
        sandbox.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_cookie_signed_by_an_old_key_in_the_rotation_is_accepted(kind: str) -> None:
    sandbox = make_sandbox(kind)
    old, new = "o" * 32, "n" * 32
    try:
        seen: list[tuple[dict[str, Any], bool]] = []
        before_rotation = middleware(counter_handler(seen), sandbox.store, secret_key=old)
        (cookie,) = call(before_rotation, None).session_cookies()
        assert cookie == _signed_by(old, cookie.partition(".")[0])

        rotated = middleware(counter_handler(seen), sandbox.store, secret_key=[new, old])
        result = call(rotated, f"session={cookie}")
        assert result.status == 200
        assert result.body == b"2"
        assert seen[-1] == ({"n": 1}, False)

        # A new session is signed with the first key of the list.
        (fresh,) = call(rotated, None).session_cookies()
        assert fresh == _signed_by(new, fresh.partition(".")[0])
    finally:
        sandbox.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_cookie_signed_by_a_key_not_in_the_rotation_is_rejected(kind: str) -> None:
    sandbox = make_sandbox(kind)
    retired, old, new = "r" * 32, "o" * 32, "n" * 32
    try:
        seen: list[tuple[dict[str, Any], bool]] = []
        retired_app = middleware(counter_handler(seen), sandbox.store, secret_key=retired)
        (cookie,) = call(retired_app, None).session_cookies()

        counting = CountingStore(sandbox.store)
        app = middleware(counter_handler(seen), counting, secret_key=[new, old])
        result = call(app, f"session={cookie}")
        assert result.status == 200
        assert result.body == b"1"
        assert seen[-1] == ({}, True)
        assert "load" not in counting.methods()
        (new_cookie,) = result.session_cookies()
        assert new_cookie.partition(".")[0] != cookie.partition(".")[0]
    finally:
        sandbox.close()


def test_signature_part_must_be_canonical() -> None:
    sandbox = make_sandbox("memory")
    try:
        counting = CountingStore(sandbox.store)
        seen: list[tuple[dict[str, Any], bool]] = []
        app = middleware(counter_handler(seen), counting, secret_key=SECRET)
        (cookie,) = call(app, None).session_cookies()
        session_id, _, sig = cookie.partition(".")
        variants = [
            f"{session_id}.!!!!{sig}",
            f"{session_id}.{sig}====",
            f"{session_id}.{sig[:5]}\u00e9{sig[5:]}",
        ]
        for value in variants:
            counting.reset()
            result = call(app, f"session={_quote(value, 2)}")
            assert result.status == 200
            assert "load" not in counting.methods(), f"{value!r} reached store.load"
    finally:
        sandbox.close()


# --------------------------------------------------------------------------- stored bytes
#
# Records are built with the package's own ``envelope.pack`` (never by hand), so
# these tests follow the record layout wherever it goes.


class _MarkerPickle:
    """Unpickling this creates the file at ``path``: the proof that pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


MARKER_DIR = _TMP_ROOT / "markers"
MARKER = MARKER_DIR / "pickle-was-executed"
#: Older than the default absolute timeout (30 days), with a margin.
LONG_AGO = 40 * 24 * 3600


def pickle_bomb() -> bytes:
    return pickle.dumps(_MarkerPickle(MARKER))


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


def _old_json_layout(data: bytes) -> bytes:
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


def _overwrite(value: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(value)
    for position, byte in edits:
        buffer[position % len(buffer)] = byte
    return bytes(buffer)


#: Records that may or may not still be readable: damaged headers, random
#: bytes behind the magic, a record of an older layout.
damaged_records = st.one_of(
    st.lists(st.tuples(st.integers(0, VALID_HEADER - 1), st.integers(0, 255)), max_size=4).map(
        lambda edits: _overwrite(VALID, edits)
    ),
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4).map(
        lambda edits: _overwrite(VALID, edits)
    ),
    st.binary(max_size=512).map(lambda b: MAGIC + b),
    st.tuples(st.integers(0, len(VALID)), st.binary(min_size=1, max_size=64)).map(
        lambda t: VALID[: t[0]] + t[1] + VALID[t[0] :]
    ),
    st.sampled_from([_old_json_layout(b'{"a":1}'), _old_json_layout(pickle_bomb())]),
)


def data_handler(
    seen: list[tuple[dict[str, Any], bool]],
) -> Callable[[Session, Request], Any]:
    def handler(session: Session, request: Request) -> str:
        seen.append((dict(session), session.new))
        if request.args.get("write"):
            session["fresh"] = 1
        return "ok"

    return handler


def plant(store: Store, value: bytes) -> str:
    """Put ``value`` in the store under a fresh, known ID; return the ID."""
    session_id = "K" + "".join(B64_ALPHABET[b % 64] for b in os.urandom(42))
    assert store.insert(store_key(PREFIX, session_id), value, time.time() + 3600)
    return session_id


def check_unreadable(sandbox: Sandbox, value: bytes, **options: Any) -> None:
    """``value`` planted under a known ID reads as no session, and a write
    creates a new ID rather than adopting the corrupt one."""
    MARKER_DIR.mkdir(exist_ok=True)
    before = snapshot(_TMP_ROOT)
    counting = CountingStore(sandbox.store)
    seen: list[tuple[dict[str, Any], bool]] = []
    app = middleware(data_handler(seen), counting, **options)
    session_id = plant(sandbox.store, value)
    old_key = store_key(PREFIX, session_id)

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
    assert_store_keys_hashed(counting)

    after = call(app, f"session={new_id}")
    assert after.status == 200
    assert seen[-1] == ({"fresh": 1}, False)
    assert not MARKER.exists(), "stored bytes were unpickled"
    assert_no_stray_files(sandbox, before)


def check_read_or_refused(sandbox: Sandbox, value: bytes, **options: Any) -> None:
    """``value`` planted under a known ID is either read as a session that then
    keeps working under its ID, or refused as a whole (no session, a new ID on
    write); never a 5xx, never unpickled."""
    MARKER_DIR.mkdir(exist_ok=True)
    before = snapshot(_TMP_ROOT)
    seen: list[tuple[dict[str, Any], bool]] = []
    app = middleware(data_handler(seen), sandbox.store, **options)
    session_id = plant(sandbox.store, value)

    write = call(app, f"session={session_id}", query="write=1")
    assert write.status == 200
    loaded, new = seen[-1]
    if new:
        assert loaded == {}
        (new_id,) = write.session_cookies()
        assert NEW_ID.fullmatch(new_id)
        assert new_id != session_id
        assert call(app, f"session={new_id}").status == 200
        assert seen[-1] == ({"fresh": 1}, False)
    else:
        # Kept under its ID (a permanent one gets its cookie refreshed).
        assert write.session_cookies() in ([], [session_id])
        again = call(app, f"session={session_id}")
        assert again.status == 200
        assert seen[-1][0].get("fresh") == 1
        assert seen[-1][0].keys() == loaded.keys() | {"fresh"}
    assert not MARKER.exists(), "stored bytes were unpickled"
    assert_no_stray_files(sandbox, before)


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=50)
@given(value=garbage_records)
def test_corrupt_stored_bytes_read_as_no_session(kind: str, value: bytes) -> None:
    sandbox = make_sandbox(kind)
    try:
        check_unreadable(sandbox, value)
    finally:
        sandbox.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=40)
@given(value=damaged_records)
def test_damaged_record_is_read_or_refused_never_fatal(kind: str, value: bytes) -> None:
    sandbox = make_sandbox(kind)
    try:
        check_read_or_refused(sandbox, value)
    finally:
        sandbox.close()


def _deep_list(depth: int) -> bytes:
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
    "a record of the earlier JSON-metadata layout": _old_json_layout(b'{"a":1}'),
    "data is a list": record(b"[1,2,3]"),
    "data is a string": record(b'"session"'),
    "data is null": record(b"null"),
    "tuple tag on an int": record(b'{" t":5}'),
    "bytes tag on an int": record(b'{" b":12}'),
    "escaped dict tag on an int": record(b'{" di":5}'),
    "deeply nested lists (100k)": record(_deep_list(100_000)),
    "deeply nested lists in the data (5000)": record(b'{"a":' + _deep_list(5000) + b"}"),
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
        b'{"a":' + _deep_list(600) + b"}"
    ),
    "NaN in the data": record(b'{"a":NaN}'),
    "Infinity in the data": record(b'{"a":[1,-Infinity]}'),
}


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize("case", list(HANDCRAFTED))
def test_handcrafted_corrupt_record_reads_as_no_session(kind: str, case: str) -> None:
    sandbox = make_sandbox(kind)
    try:
        check_unreadable(sandbox, HANDCRAFTED[case])
    finally:
        sandbox.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize("case", list(FOREIGN_DATA))
def test_foreign_data_is_read_or_refused_never_fatal(kind: str, case: str) -> None:
    sandbox = make_sandbox(kind)
    try:
        check_read_or_refused(sandbox, FOREIGN_DATA[case])
    finally:
        sandbox.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize(
    "case",
    [pytest.param(name, id=name) for name in UNENCODABLE],
)
def test_decodable_but_unencodable_record_is_refused(kind: str, case: str) -> None:
    sandbox = make_sandbox(kind)
    try:
        check_read_or_refused(sandbox, UNENCODABLE[case])
    finally:
        sandbox.close()


def test_created_far_in_the_future_is_not_fatal() -> None:
    sandbox = make_sandbox("memory")
    try:
        session_id = plant(sandbox.store, record(b'{"a":1}', created=1e300))

        def handler(session: Session, request: Request) -> str:
            return session.created.isoformat()

        result = call(middleware(handler, sandbox.store), f"session={session_id}")
        assert result.status == 200
    finally:
        sandbox.close()


def _msgpack() -> Serializer:
    pytest.importorskip("msgspec")
    return MsgpackSerializer()


def _msgpack_record(data: bytes) -> bytes:
    return record(data, serializer="msgpack")


@pytest.mark.parametrize(
    ("case", "value"),
    [
        ("pickle bomb", lambda: _msgpack_record(pickle_bomb())),
        ("json data", lambda: _msgpack_record(b'{"a":1}')),
        ("json serializer name", lambda: record(b"\x81\xa1a\x01")),
        ("array at the top", lambda: _msgpack_record(b"\x93\x01\x02\x03")),
        ("truncated map", lambda: _msgpack_record(b"\x82\xa1a\x01")),
        ("bad tag", lambda: _msgpack_record(b"\x81\xa1a\x81\xa2 b\x0c")),
        ("deeply nested arrays", lambda: _msgpack_record(b"\x81\xa1a" + b"\x91" * 5000 + b"\x90")),
    ],
)
def test_msgpack_corrupt_record_reads_as_no_session(case: str, value: Callable[[], bytes]) -> None:
    serializer = _msgpack()
    sandbox = make_sandbox("memory")
    try:
        check_unreadable(sandbox, value(), serializer=serializer)
    finally:
        sandbox.close()


@pytest.mark.parametrize(
    ("case", "value"),
    [
        ("integer keys", lambda: _msgpack_record(b"\x81\x01\x02")),
        ("ext type", lambda: _msgpack_record(b"\x81\xa1a\xd5\x05xx")),
        ("timestamp ext", lambda: _msgpack_record(b"\x81\xa1a\xd6\xff\x00\x00\x00\x01")),
        ("NaN", lambda: _msgpack_record(b"\x81\xa1a\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00")),
    ],
)
def test_msgpack_foreign_data_is_read_or_refused_never_fatal(
    case: str, value: Callable[[], bytes]
) -> None:
    serializer = _msgpack()
    sandbox = make_sandbox("memory")
    try:
        check_read_or_refused(sandbox, value(), serializer=serializer)
    finally:
        sandbox.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=40)
@given(data=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_foreign_json_mapping_is_read_or_refused_never_fatal(
    kind: str, data: dict[str, Any]
) -> None:
    """A valid envelope around any JSON mapping (tag look-alikes included)."""
    sandbox = make_sandbox(kind)
    try:
        check_read_or_refused(sandbox, record(json.dumps(data).encode()))
    finally:
        sandbox.close()
