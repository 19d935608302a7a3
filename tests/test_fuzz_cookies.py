"""The cookie fuzz target (``fuzz/fuzz_cookies.py``) keeps working without atheris.

The target's one-input function runs here over its seed corpus, over random
bytes (hypothesis) and over genuine cookies of every codec it knows, so that
a change to cookie parsing or ID decoding that breaks one of its properties
fails the normal test run; and a decoder made to accept too much is caught,
which shows the oracle can fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgi_kvsession.ids import IdCodec

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
CORPUS = sorted((FUZZ_DIR / "corpus" / "cookies").iterdir())


def _load_target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_cookies", FUZZ_DIR / "fuzz_cookies.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


target = _load_target()


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 5


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_input(path: Path) -> None:
    target.fuzz_one_input(path.read_bytes())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_random_input(data: bytes) -> None:
    target.fuzz_one_input(data)


def _selectors(codec_index: int) -> list[int]:
    """Selector bytes that pick cookie name "session" and the given codec."""
    names = len(target.COOKIE_NAMES)
    base = codec_index * names + target.COOKIE_NAMES.index("session")
    return [base, base | 0x80]


@pytest.mark.parametrize("codec_index", [0, 1, 2], ids=["unsigned", "signed", "rotation"])
def test_genuine_cookies_of_every_key_pass(codec_index: int) -> None:
    """Cookies the codecs make (by each key of a rotation) satisfy the target,
    so its signed branch runs on every test run, not only when fuzzing."""
    codec, per_key = target.CODECS[codec_index]
    for maker in per_key or [codec]:
        session_id = codec.new_id()
        value = maker.encode(session_id)
        assert codec.decode(value) == session_id
        for selector in _selectors(codec_index):
            header = f"other=1; session={value}; session=junk"
            target.fuzz_one_input(bytes([selector]) + header.encode())


def test_the_oracle_catches_a_decoder_that_accepts_too_much(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(IdCodec, "decode", lambda self, value: value or None)
    with pytest.raises(AssertionError):
        target.fuzz_one_input(bytes(_selectors(0)[:1]) + b"session=../../etc/passwd")
