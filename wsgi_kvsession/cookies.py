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
"""

from __future__ import annotations

from werkzeug.http import dump_cookie, dump_header, parse_cookie, parse_set_header

from .options import Options

Headers = list[tuple[str, str]]


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
