"""Atheris fuzz target: the path a ``Cookie`` header takes before any store call.

``request_cookie_values`` (which cookie values a request sent) and
``IdCodec.decode`` / ``decode_cookie`` (which of them is a well-formed,
correctly signed ID, and whether signed with the current key) are
the whole of what an attacker's header reaches before the store (DESIGN.md
rule 2). For any bytes, :func:`fuzz_one_input` checks that:

* nothing raises;
* every value found is a ``str``; without quoting or escapes in the header
  (the fast path, a split on ``;``), every value that decodes is one that
  Werkzeug's ``parse_cookie`` finds too;
* a value that decodes is an ID of the accepted shape (22 to 128 characters of
  base64url); signed, it is exactly what one of the keys makes of that ID (no
  second spelling of a signature is accepted), and only the first key's
  counts as current; its store key is the key prefix and 64 hex digits.

Run it (atheris is not a dependency of the project; install it by hand)::

    pip install atheris
    python fuzz/fuzz_cookies.py fuzz/corpus/cookies -max_total_time=60

``tests/test_fuzz_cookies.py`` runs :func:`fuzz_one_input` over the corpus and
random bytes in the normal test run, so the target keeps working without atheris.
"""

from __future__ import annotations

import re
import sys

from werkzeug.http import parse_cookie

from wsgi_kvsession.cookies import request_cookie_values
from wsgi_kvsession.ids import IdCodec, store_key

#: What IdCodec.decode may let through (DESIGN.md rule 2).
ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{22,128}")
STORE_KEY = re.compile(r"session:[0-9a-f]{64}")
COOKIE_NAMES = ("session", "__Host-session", "s", "a b", "")
#: (the codec, one codec per key it accepts): unsigned, one key, a rotation.
_KEYS: tuple[list[str], ...] = ([], ["k" * 32], ["n" * 32, "o" * 32])
CODECS = tuple(
    (IdCodec(secret_key=keys or None), [IdCodec(secret_key=key) for key in keys]) for keys in _KEYS
)


def check(condition: bool, detail: object) -> None:
    """``assert`` that ``python -O`` does not remove: the fuzzer's oracle."""
    if not condition:
        raise AssertionError(detail)


def fuzz_one_input(data: bytes) -> None:
    """One fuzz input: a selector byte, then the raw header."""
    if not data:
        return
    selector, raw = data[0], data[1:]
    name = COOKIE_NAMES[selector % len(COOKIE_NAMES)]
    codec, per_key = CODECS[(selector // len(COOKIE_NAMES)) % len(CODECS)]
    # A WSGI server hands the header over as latin-1 text (PEP 3333); the
    # high bit of the selector tries arbitrary text as well.
    header = raw.decode("utf-8", "surrogateescape") if selector & 0x80 else raw.decode("latin-1")

    values = request_cookie_values({"HTTP_COOKIE": header}, name)

    check(isinstance(values, list) and all(isinstance(v, str) for v in values), values)
    ids = [(value, codec.decode(value)) for value in values]
    if name and '"' not in header and "\\" not in header:
        # The fast path (no quoting in the header) is stricter than Werkzeug
        # (which also reads a bare "session" as an empty value, and skips a
        # value with a space inside where the fast path keeps it, to be
        # refused by decode): it may find fewer IDs, never one Werkzeug
        # would not find.
        try:
            lenient = set(parse_cookie(header).getlist(name))
        except UnicodeError:
            pass  # Werkzeug refuses text that is not UTF-8; the fast path does not
        else:
            accepted = {value for value, session_id in ids if session_id is not None}
            check(accepted <= lenient, (header, accepted, lenient))
    for value, session_id in ids:
        # decode_cookie (where the codec has it: what the session calls) is
        # decode plus signed_with_current_key in one pass; it must agree.
        decode_cookie = getattr(codec, "decode_cookie", None)
        if decode_cookie is not None:
            both = decode_cookie(value)
            check(both[0] == session_id, (value, both, session_id))
            if session_id is not None:
                current = codec.signed_with_current_key(value, session_id)
                check(both[1] == current, (value, both, current))
        if session_id is None:
            continue
        check(ID_SHAPE.fullmatch(session_id) is not None, (value, session_id))
        if codec.signing:
            # Only the canonical spelling under one of the keys is accepted.
            spellings = [one.encode(session_id) for one in per_key]
            check(value in spellings, (value, spellings))
            current = codec.signed_with_current_key(value, session_id)
            check(current == (value == spellings[0]), (value, current))
        else:
            check(value == session_id, (value, session_id))
        key = store_key("session:", session_id)
        check(STORE_KEY.fullmatch(key) is not None, key)


def main() -> None:
    import atheris

    # The code under test is imported above (so that tests can import this
    # module without atheris): instrument what is loaded, in place.
    atheris.instrument_all()
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
