"""Reading the session cookie and writing the response headers that go with it.

Cookie syntax is Werkzeug's (:func:`werkzeug.http.parse_cookie`,
:func:`werkzeug.http.dump_cookie`); this module decides *which* headers a
response gets (DESIGN.md rule 5):

* at most one ``Set-Cookie`` for the session cookie: one the app set under the
  same name is dropped when the middleware sets its own;
* ``Vary: Cookie`` on every response whose session was accessed, so a shared
  cache never serves one user's page to another (CVE-2023-30861);
* ``Cache-Control: no-store`` replacing whatever the app chose on a response
  that sets or clears the cookie, so no cache stores a ``Set-Cookie``.

Its size is checked once, when the options are built
(:func:`largest_set_cookie`, used by :mod:`wsgi_kvsession.options`), not on
every response: every ``Set-Cookie`` it writes is at most
:data:`MAX_SET_COOKIE_BYTES` long (ASVS 5 3.3.5).
"""

from __future__ import annotations

from base64 import urlsafe_b64encode
from typing import TYPE_CHECKING, Literal

from werkzeug.http import dump_cookie, dump_header, parse_cookie, parse_set_header

if TYPE_CHECKING:  # options.py imports this module to check the cookie's size
    from .options import Options

Headers = list[tuple[str, str]]

#: The longest ``Set-Cookie`` value the options may produce. Browsers drop a
#: cookie whose name and value exceed 4096 bytes (RFC 6265bis 5.7, ASVS 5
#: 3.3.5); the whole header, attributes included, is held to the same bound.
MAX_SET_COOKIE_BYTES = 4096
#: Browsers ignore (not shorten) an attribute whose value exceeds 1024 bytes,
#: so a longer ``Path`` or ``Domain`` would silently scope the cookie anew.
MAX_ATTRIBUTE_BYTES = 1024


def request_cookie_values(environ: dict[str, object], name: str) -> list[str]:
    """Every value the request sent for cookie ``name``, in header order.

    Browsers send the cookie with the most specific path first, so when
    several share the name the first valid one is the one to use.
    """
    header = environ.get("HTTP_COOKIE")
    if not isinstance(header, str) or name not in header:
        return []
    if '"' not in header and "\\" not in header:
        # No quoting or escapes: plain "name=value; ..." pairs, which is what
        # browsers send, so a split finds the values Werkzeug would (and
        # saves it parsing every other cookie on every request).
        values = []
        for pair in header.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                values.append(value.strip())
        return values
    try:
        return parse_cookie(header).getlist(name)
    except UnicodeError:
        # Werkzeug decodes the header as UTF-8 and raises on anything else. A
        # session ID is ASCII, so "?" (outside its alphabet) can stand in for
        # every other character: the value then fails the format check.
        return parse_cookie(header.encode("ascii", "replace").decode("ascii")).getlist(name)


def session_cookie(options: Options, value: str, max_age: int | None) -> str:
    """The ``Set-Cookie`` value that stores ``value`` (a browser-session cookie
    when ``max_age`` is None)."""
    return _dump_cookie(options, value, max_age, None)


def expired_cookie(options: Options) -> str:
    """The ``Set-Cookie`` value that removes the cookie: same name, path,
    domain and flags as when it was set (else the browser keeps the old one),
    an empty value, ``Max-Age=0`` and an ``Expires`` in the past."""
    return _dump_cookie(options, "", 0, 0)


def largest_set_cookie(options: Options, max_age: int) -> str:
    """The longest ``Set-Cookie`` value ``options`` can produce, for a session
    whose permanent cookie lives at most ``max_age`` seconds: the longest
    cookie value (an ID of ``id_bits``, signed when signing is on) with every
    attribute, or the expiring cookie of a logout if that is longer.

    Raises what Werkzeug raises for attributes it cannot write (a domain that
    IDNA cannot encode, an ``Expires`` date after the year 9999).
    """
    # An ID of the configured size, shaped as secrets.token_urlsafe() makes
    # them (every ID has the same length), without drawing a real one.
    session_id = urlsafe_b64encode(bytes(options.ids.id_bytes)).rstrip(b"=").decode("ascii")
    value = options.ids.encode(session_id)
    return max(session_cookie(options, value, max_age), expired_cookie(options), key=len)


def attribute_value(attribute: Literal["Domain", "Path"], value: str) -> str:
    """``value`` as Werkzeug writes it into the ``attribute`` of a
    ``Set-Cookie`` (IDNA for a domain, percent-encoding for a path); "" when
    it writes no such attribute."""
    if attribute == "Domain":
        header = dump_cookie("n", domain=value, path=None)
    else:
        header = dump_cookie("n", path=value)
    return header.partition(f"; {attribute}=")[2]


def _dump_cookie(options: Options, value: str, max_age: int | None, expires: int | None) -> str:
    return dump_cookie(
        options.cookie_name,
        value,
        max_age=max_age,
        expires=expires,
        path=options.cookie_path,
        domain=options.cookie_domain,
        secure=options.cookie_secure,
        httponly=options.cookie_httponly,
        samesite=options.cookie_samesite,
        partitioned=options.cookie_partitioned,
        # No per-response size warning: the options were refused at
        # construction if this header could exceed MAX_SET_COOKIE_BYTES.
        max_size=0,
    )


def _sets_cookie_named(header_value: str, name: str) -> bool:
    cookie_name, sep, _ = header_value.partition("=")
    return bool(sep) and cookie_name.strip() == name


def finish_headers(
    headers: Headers, options: Options, *, set_cookie: str | None, vary: bool
) -> Headers:
    """Return ``headers`` with the session's ``Set-Cookie``, ``Vary`` and
    ``Cache-Control`` applied."""
    if set_cookie is None and not vary:
        return headers
    result: Headers = []
    vary_values: list[str] = []
    for key, value in headers:
        lower = key.lower()
        if set_cookie is not None:
            if lower == "cache-control":
                continue
            if lower == "set-cookie" and _sets_cookie_named(value, options.cookie_name):
                continue
        if vary and lower == "vary":
            vary_values.append(value)
            continue
        result.append((key, value))
    if vary and not vary_values:
        result.append(("Vary", "Cookie"))
    elif vary:
        merged = parse_set_header(", ".join(vary_values))
        if "*" not in merged and "cookie" not in merged:
            merged.add("Cookie")
        result.append(("Vary", dump_header(merged)))
    if set_cookie is not None:
        result.append(("Set-Cookie", set_cookie))
        result.append(("Cache-Control", "no-store"))
    return result
