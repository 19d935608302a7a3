"""Hostile input: garbage cookies and corrupt store records never hurt the middleware.

DESIGN.md rules 2, 3, 4 and 14, checked against the three embedded stores
(memory, files, SQLite) by calling the WSGI application directly with a
hand-built ``environ``, so that no test client can sanitise the ``Cookie``
header on the way in. What hostile input looks like and the checks of each
property live in :mod:`tests.hostile` (``test_hostile_stores.py`` holds the
server stores to the same checks); this module adds the look at the disk: no
file appears outside the store's directory, whatever the cookie.

Hypothesis and function-scoped fixtures do not mix, so every example builds
its own store in a fresh directory under one module-level temporary root
(removed by a module-scoped fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.wrappers import Request

from wsgi_kvsession import Session
from wsgi_kvsession.ids import store_key
from wsgi_kvsession.stores import FileStore, MemoryStore, SQLiteStore, Store

from .hostile import (
    FOREIGN_DATA,
    HANDCRAFTED,
    HYPOTHESIS,
    MARKER,
    MSGPACK_FOREIGN,
    MSGPACK_GARBAGE,
    PREFIX,
    SECRET,
    UNENCODABLE,
    Seen,
    assert_pickle_never_ran,
    call,
    check_garbage_cookie,
    check_malformed_duplicates,
    check_read_or_refused,
    check_signed_garbage,
    check_tampered_signatures,
    check_unreadable,
    cookie_headers,
    cookie_values,
    counter_handler,
    damaged_records,
    garbage_records,
    json_mappings,
    malformed_values,
    middleware,
    msgpack_serializer,
    pickle_bomb,
    plant,
    quote,
    record,
    signed_by,
)
from .support import CountingStore

STORE_KINDS = ["memory", "file", "sqlite"]
#: What may appear in a FileStore directory.
FILE_ENTRY = re.compile(
    r"session%3A[0-9a-f]{64}|\.locks|\.locks/\d\d"
    # The per-user index: a directory per hashed user ID, a marker per store key.
    r"|\.users|\.users/[0-9a-f]{64}|\.users/[0-9a-f]{64}/session%3A[0-9a-f]{64}"
)

#: Where every sandbox of this module lives; made when the module's first test
#: runs (not on import: collecting the module must leave nothing behind).
_TMP_ROOT = Path(tempfile.gettempdir()) / f"kvs-hostile-{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module", autouse=True)
def _tmp_root() -> Iterator[None]:
    _TMP_ROOT.mkdir(mode=0o700)
    try:
        yield
    finally:
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


def assert_no_stray_files(
    sandbox: Sandbox, before: set[Path], entry: re.Pattern[str] = FILE_ENTRY
) -> None:
    """Nothing appeared under the temporary root outside the store's own directory,
    and the FileStore directory holds only hashed record names and its lock files."""
    new = snapshot(_TMP_ROOT) - before
    stray = [p for p in new if not any(p == d or d in p.parents for d in sandbox.allowed)]
    assert stray == [], f"files created outside the store directory: {stray}"
    if isinstance(sandbox.store, FileStore):
        directory = sandbox.allowed[0]
        for path in snapshot(directory):
            name = path.relative_to(directory).as_posix()
            assert entry.fullmatch(name), f"unexpected entry in the FileStore: {name!r}"


@contextlib.contextmanager
def watching(sandbox: Sandbox) -> Iterator[None]:
    """Check, after the block, that no file appeared outside the store's directory."""
    before = snapshot(_TMP_ROOT)
    yield
    assert_no_stray_files(sandbox, before)


def run_in(kind: str, check: Callable[[Store], None]) -> None:
    """Run ``check`` against a fresh sandboxed store of ``kind``, watching the disk."""
    sandbox = make_sandbox(kind)
    try:
        with watching(sandbox):
            check(sandbox.store)
    finally:
        sandbox.close()


# --------------------------------------------------------------------------- cookie headers


@pytest.mark.parametrize("kind", STORE_KINDS)
@HYPOTHESIS
@given(header=cookie_headers)
def test_garbage_cookie_header_is_harmless(kind: str, header: str) -> None:
    run_in(kind, lambda store: check_garbage_cookie(store, header))


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=15)
@given(junk=st.lists(malformed_values, min_size=1, max_size=3), junk_first=st.booleans())
def test_malformed_duplicates_do_not_hide_the_valid_cookie(
    kind: str, junk: list[str], junk_first: bool
) -> None:
    run_in(kind, lambda store: check_malformed_duplicates(store, junk, junk_first))


#: Where a traversal could land: the store directory sits five levels down in
#: the sandbox and the process runs in a sibling directory, so that "../" up
#: to five times, from either, and the absolute paths below all point inside
#: the sandbox, whose whole tree is compared before and after.
_NESTING = ("d1", "d2", "d3", "d4")
_CANARY = "kvs-canary"


def _traversal(sandbox: Path) -> st.SearchStrategy[str]:
    up = st.sampled_from(["../", "..\\", "..%2F", "%2e%2e%2f", "..%252F", "....//", "/"])
    return st.one_of(
        st.tuples(st.lists(up, min_size=1, max_size=5), st.sampled_from(["", ".", _CANARY])).map(
            lambda t: "".join(t[0]) + t[1]
        ),
        st.sampled_from(
            [
                str(sandbox / _CANARY),
                str(sandbox / "cwd" / _CANARY),
                str(sandbox / "d1" / "d2" / "d3" / "d4" / "files" / ".." / _CANARY),
                "file://" + str(sandbox / _CANARY),
                _CANARY + "\x00.txt",
                ".locks/../" + _CANARY,
                ".users/../../" + _CANARY,
            ]
        ),
        cookie_values,
    )


@settings(HYPOTHESIS, max_examples=30)
@given(data=st.data())
def test_file_store_creates_nothing_outside_its_directory(data: st.DataObject) -> None:
    """Whatever the cookie, the key prefix or the user ID the app sets from the
    request: every file the FileStore creates is in its directory, with a
    hashed name (traversal from the store directory, from the working
    directory, and absolute paths are all aimed inside the watched sandbox)."""
    root = Path(tempfile.mkdtemp(dir=_TMP_ROOT))
    directory = root.joinpath(*_NESTING, "files")
    directory.parent.mkdir(parents=True)  # the store creates only its own directory
    workdir = root / "cwd"
    workdir.mkdir()
    store = FileStore(directory)
    sandbox = Sandbox(root, store, [directory])
    traversal = _traversal(root)
    values = data.draw(st.lists(traversal, min_size=1, max_size=3), label="cookie values")
    header = "; ".join(f"session={quote(v, data.draw(st.integers(0, 2)))}" for v in values)
    user = data.draw(traversal.map(lambda v: v.encode("utf-8", "replace").decode()), label="user")
    key_prefix = data.draw(
        st.sampled_from([PREFIX, "../", "../../" + _CANARY + "/", "/tmp/", ".", "a/b:", "\x00"]),
        label="key_prefix",
    )
    entry = re.compile(
        "|".join(
            [
                re.escape(_file_name(key_prefix)) + "[0-9a-f]{64}",
                r"\.locks|\.locks/\d\d|\.users|\.users/[0-9a-f]{64}",
                r"\.users/[0-9a-f]{64}/" + re.escape(_file_name(key_prefix)) + "[0-9a-f]{64}",
            ]
        )
    )

    def handler(session: Session, request: Request) -> str:
        session["n"] = session.get("n", 0) + 1
        session.user_id = user
        return "ok"

    try:
        before = snapshot(_TMP_ROOT)
        app = middleware(handler, store, key_prefix=key_prefix)
        with _working_directory(workdir):
            first = call(app, header)
            assert first.status == 200
            (new_id,) = first.session_cookies()
            assert call(app, f"session={new_id}; " + header).status == 200
        assert store.load(store_key(key_prefix, new_id)) is not None
        assert_no_stray_files(sandbox, before, entry)
    finally:
        sandbox.close()


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """``contextlib.chdir``, which Python 3.10 does not have."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _file_name(key_prefix: str) -> str:
    """The FileStore's file name for ``key_prefix`` (letters, digits, ``_``, ``-``
    kept; everything else percent-encoded per UTF-8 byte)."""
    safe = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    return "".join(c if c in safe else "".join(f"%{b:02X}" for b in c.encode()) for c in key_prefix)


# --------------------------------------------------------------------------- signing


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=20)
@given(header=cookie_headers)
def test_signed_garbage_never_reaches_the_store(kind: str, header: str) -> None:
    run_in(kind, lambda store: check_signed_garbage(store, header))


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_wrong_or_missing_signature_never_reaches_the_store(kind: str) -> None:
    run_in(kind, check_tampered_signatures)


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_cookie_signed_by_an_old_key_in_the_rotation_is_accepted(kind: str) -> None:
    sandbox = make_sandbox(kind)
    old, new = "o" * 32, "n" * 32
    try:
        seen: Seen = []
        before_rotation = middleware(counter_handler(seen), sandbox.store, secret_key=old)
        (cookie,) = call(before_rotation, None).session_cookies()
        assert cookie == signed_by(old, cookie.partition(".")[0])

        rotated = middleware(counter_handler(seen), sandbox.store, secret_key=[new, old])
        result = call(rotated, f"session={cookie}")
        assert result.status == 200
        assert result.body == b"2"
        assert seen[-1] == ({"n": 1}, False)

        # A new session is signed with the first key of the list.
        (fresh,) = call(rotated, None).session_cookies()
        assert fresh == signed_by(new, fresh.partition(".")[0])
    finally:
        sandbox.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_cookie_signed_by_a_key_not_in_the_rotation_is_rejected(kind: str) -> None:
    sandbox = make_sandbox(kind)
    retired, old, new = "r" * 32, "o" * 32, "n" * 32
    try:
        seen: Seen = []
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
        seen: Seen = []
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
            result = call(app, f"session={quote(value, 2)}")
            assert result.status == 200
            assert "load" not in counting.methods(), f"{value!r} reached store.load"
    finally:
        sandbox.close()


# --------------------------------------------------------------------------- stored bytes


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=50)
@given(value=garbage_records)
def test_corrupt_stored_bytes_read_as_no_session(kind: str, value: bytes) -> None:
    run_in(kind, lambda store: check_unreadable(store, value))


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=40)
@given(value=damaged_records)
def test_damaged_record_is_read_or_refused_never_fatal(kind: str, value: bytes) -> None:
    run_in(kind, lambda store: check_read_or_refused(store, value))


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize("case", list(HANDCRAFTED))
def test_handcrafted_corrupt_record_reads_as_no_session(kind: str, case: str) -> None:
    run_in(kind, lambda store: check_unreadable(store, HANDCRAFTED[case]))


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize("case", list(FOREIGN_DATA))
def test_foreign_data_is_read_or_refused_never_fatal(kind: str, case: str) -> None:
    run_in(kind, lambda store: check_read_or_refused(store, FOREIGN_DATA[case]))


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize("case", [pytest.param(name, id=name) for name in UNENCODABLE])
def test_decodable_but_unencodable_record_is_refused(kind: str, case: str) -> None:
    run_in(kind, lambda store: check_read_or_refused(store, UNENCODABLE[case]))


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


@pytest.mark.parametrize("case", list(MSGPACK_GARBAGE))
def test_msgpack_corrupt_record_reads_as_no_session(case: str) -> None:
    serializer = msgpack_serializer()
    value = MSGPACK_GARBAGE[case]()
    run_in("memory", lambda store: check_unreadable(store, value, serializer=serializer))


@pytest.mark.parametrize("case", list(MSGPACK_FOREIGN))
def test_msgpack_foreign_data_is_read_or_refused_never_fatal(case: str) -> None:
    serializer = msgpack_serializer()
    value = MSGPACK_FOREIGN[case]()
    run_in("memory", lambda store: check_read_or_refused(store, value, serializer=serializer))


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(HYPOTHESIS, max_examples=40)
@given(data=json_mappings)
def test_foreign_json_mapping_is_read_or_refused_never_fatal(
    kind: str, data: dict[str, Any]
) -> None:
    """A valid envelope around any JSON mapping (tag look-alikes included)."""
    run_in(kind, lambda store: check_read_or_refused(store, record(json.dumps(data).encode())))


def test_the_pickle_marker_goes_off_when_unpickled() -> None:
    """The proof the stored-bytes checks rely on: unpickling the bomb creates
    the marker, and the check then fails (so "no marker" means "not unpickled")."""
    assert not MARKER.exists()
    pickle.loads(pickle_bomb())  # noqa: S301 - the point: it must go off here
    assert MARKER.is_dir()
    with pytest.raises(pytest.fail.Exception, match="unpickled"):
        assert_pickle_never_ran()
    assert not MARKER.exists()
